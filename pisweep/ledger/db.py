"""Opening the ledger: one SQLite file, migrated on open, written under a short-held lock."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError

from ..errors import LedgerError
from .lock import file_lock
from .migrations import migrate


class Ledger:
    """A handle on one ledger file. Writes happen inside :meth:`writing` (the lock); reads need no lock."""

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.on_wait = on_wait
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _pragmas)
        try:
            with self.writing():
                migrate(self.engine, str(self.path))
        except DatabaseError as e:
            raise LedgerError(f"{self.path}: not a readable pisweep ledger ({e.orig})") from None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def writing(self, purpose: str = "updating the ledger") -> Iterator[None]:
        with file_lock(self.lock_path, purpose, self.on_wait):
            yield

    def close(self) -> None:
        self.engine.dispose()


def _pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")  # readers and the locked writer never fail on a busy file
    cur.close()
