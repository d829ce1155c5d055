"""Opening the ledger: one SQLite file, migrated on open, written under a short-held lock."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError

from pisweep.errors import LedgerError
from pisweep.ledger.lock import file_lock
from pisweep.ledger.migrations import LATEST, current_version, migrate


class Ledger:
    """A handle on one ledger file. Writes happen inside :meth:`writing` (the lock); reads need no lock.

    ``readonly``: open an existing ledger without writing anything (no folder, lock file or migration is made),
    e.g. on a read-only output root; :meth:`writing` then refuses."""

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None = None, readonly: bool = False):
        self.path = Path(path)
        self.on_wait = on_wait
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise LedgerError(f"{self.path}: no such ledger")
            self.engine: Engine = create_engine(f"sqlite:///file:{self.path}?mode=ro&uri=true", future=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _pragmas)
        try:
            if readonly:
                with self.engine.connect() as conn:
                    version = current_version(conn)
                if version != LATEST:
                    raise LedgerError(f"{self.path}: ledger schema v{version}, this pisweep reads v{LATEST}; it is "
                                      "read-only here, so it cannot be migrated (open it once with write access)")
            else:
                with self.writing():
                    migrate(self.engine, str(self.path))
        except DatabaseError as e:
            raise LedgerError(f"{self.path}: not a readable pisweep ledger ({e.orig})") from None

    @classmethod
    def for_reading(cls, path: Path, on_wait: Callable[[str], None] | None = None) -> "Ledger":
        """An existing ledger, writable when this process may write it (to apply new events), else read-only."""
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"{path}: no such ledger")
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        return cls(path, on_wait=on_wait, readonly=not writable)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def writing(self, purpose: str = "updating the ledger") -> Iterator[None]:
        if self.readonly:
            raise LedgerError(f"{self.path} is read-only here: cannot {purpose}")
        with file_lock(self.lock_path, purpose, self.on_wait):
            yield

    def close(self) -> None:
        self.engine.dispose()


def _pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")  # readers and the locked writer never fail on a busy file
    cur.close()
