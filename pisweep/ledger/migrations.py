"""Schema versions. The ledger records its version in ``meta``; opening it applies the missing migrations in
order, each in its own transaction, so an old ledger is upgraded in place and a newer one is refused."""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, text

from pisweep.errors import LedgerError
from pisweep.ledger import schema


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn)


def _v2(conn: Connection) -> None:
    """Indexes for status and report at 10 000 runs (benchmarks/report_scale.py): every query they make reads an
    index range instead of scanning the evals table (about 10 M rows at that size).

    - evals_done_by_task: a covering partial index, so "task T's main value of every run (at epoch E)" reads only
      those rows (the report's per-epoch and last-epoch tables, status's latest main metric);
    - evals_open: the few evals still queued or running (what reconcile and status count as pending);
    - evals_problems: failed and missing-data evals, by task (coverage: missing datasets, failures);
    - checkpoints_bytes: the disk use of a study without reading every checkpoint row (640 000 at that size).
    Partial indexes are used only by queries that repeat their WHERE term (state = 'done', state IN (...)).
    """
    for sql in (
        "CREATE INDEX IF NOT EXISTS evals_done_by_task ON evals (task, suite_version, epoch, job_uid, main_value) "
        "WHERE state = 'done'",
        "CREATE INDEX IF NOT EXISTS evals_open ON evals (job_uid, epoch) WHERE state IN ('queued', 'running')",
        "CREATE INDEX IF NOT EXISTS evals_problems ON evals (task, state) WHERE state IN ('failed', 'missing_data')",
        "CREATE INDEX IF NOT EXISTS checkpoints_bytes ON checkpoints (job_uid, bytes)",
    ):
        conn.execute(text(sql))


def _v3(conn: Connection) -> None:
    """jobs.no_retry: the last attempt failed in a way that repeats (bad data, a non-finite loss, a full disk), so
    the cell is failed at once instead of spending its retry budget. (A ledger made at v1 by this version's
    schema has the column already.)"""
    columns = {row[1] for row in conn.execute(text("PRAGMA table_info(jobs)"))}
    if "no_retry" not in columns:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN no_retry INTEGER NOT NULL DEFAULT 0"))


def _v4(conn: Connection) -> None:
    """studies.identity_version: the identity version a study's uids were made under (study/identity.py). Studies
    recorded before it existed were planned under version 1, and keep it."""
    columns = {row[1] for row in conn.execute(text("PRAGMA table_info(studies)"))}
    if "identity_version" not in columns:
        conn.execute(text("ALTER TABLE studies ADD COLUMN identity_version INTEGER NOT NULL DEFAULT 1"))


def _v5(conn: Connection) -> None:
    """evals.scheduler_id: the SLURM job submitted to run an eval, which earlier versions wrote only into the reason
    ("slurm job <id>"); recovered from there once."""
    columns = {row[1] for row in conn.execute(text("PRAGMA table_info(evals)"))}
    if "scheduler_id" not in columns:
        conn.execute(text("ALTER TABLE evals ADD COLUMN scheduler_id TEXT"))
    conn.execute(text("UPDATE evals SET scheduler_id = trim(substr(reason, length('slurm job ') + 1)) "
                      "WHERE scheduler_id IS NULL AND reason LIKE 'slurm job %' AND instr(trim(substr(reason, "
                      "length('slurm job ') + 1)), ' ') = 0"))


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
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
