"""Schema versions. The ledger records its version in ``meta``; opening it applies the missing migrations in
order, each in its own transaction, so an old ledger is upgraded in place and a newer one is refused."""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, text

from ..errors import LedgerError
from . import schema


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1]
LATEST = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    has_meta = conn.execute(text("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'")).first()
    if not has_meta:
        return 0
    row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
    return int(row[0]) if row else 0


def migrate(engine, path: str) -> int:
    with engine.begin() as conn:
        version = current_version(conn)
    if version > LATEST:
        raise LedgerError(f"{path}: ledger schema v{version} is newer than this pisweep (v{LATEST}); upgrade pisweep")
    for v in range(version, LATEST):
        with engine.begin() as conn:
            MIGRATIONS[v](conn)
            conn.execute(text("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', :v)"), {"v": str(v + 1)})
    return LATEST
