"""Reading the ledger: what the scheduler and the status/report commands need, aggregated in SQL."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, select, text
from sqlalchemy.dialects.sqlite import insert

from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger


@dataclass
class JobRow:
    uid: str
    kind: str
    label: str
    init: str | None
    init_uid: str | None
    scale: str | None
    epochs: int | None
    seed: int | None
    folder: str
    state: str
    reason: str | None
    epoch_reached: int
    step_reached: int
    failures: int
    timeouts: int
    log_path: str | None
    scheduler_id: str | None
    executor: str | None
    no_retry: int
    updated_at: float | None
    attempts: int = 0

    def failed_for_good(self, max_failures: int) -> bool:
        """Failed past its retry budget, or in a way that repeats (no retry would help)."""
        return self.state == "failed" and (self.failures > max_failures or bool(self.no_retry))


@dataclass
class Snapshot:
    """The ledger's view of one study, enough to decide what to run next."""

    jobs: dict[str, JobRow]
    weights: dict[str, set[int]]  # run uid -> epochs with a weights file
    evals: dict[tuple[str, int, str], str]  # (run uid, epoch, task) -> state, for the current suite version


def study_spec(ledger: Ledger, name: str) -> dict[str, Any] | None:
    with ledger.engine.connect() as conn:
        raw = conn.execute(select(t.studies.c.spec_json).where(t.studies.c.name == name)).scalar()
    return json.loads(raw) if raw else None


def study_identity_version(ledger: Ledger, name: str) -> int | None:
    """The identity version a recorded study's uids were made under; None when the study is not recorded."""
    with ledger.engine.connect() as conn:
        return conn.execute(select(t.studies.c.identity_version).where(t.studies.c.name == name)).scalar()


def study_names(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(t.studies.c.name).order_by(t.studies.c.name)).scalars())


_JOB_COLUMNS = [k for k in JobRow.__dataclass_fields__ if k != "attempts"]  # not identity_json: 1 KB a job


def _jobs(conn, study: str) -> dict[str, JobRow]:
    """Every job of the study with its attempt count; plain DB-API tuples (10 000 jobs in milliseconds)."""
    cur = conn.connection.driver_connection.cursor()
    try:
        rows = cur.execute(
            f"SELECT {', '.join('j.' + c for c in _JOB_COLUMNS)}, COALESCE(a.n, 0) FROM jobs j LEFT JOIN "
            "(SELECT job_uid, COUNT(*) AS n FROM attempts GROUP BY job_uid) a ON a.job_uid = j.uid "
            "WHERE j.study = ?", (study,)).fetchall()
    finally:
        cur.close()
    return {r[0]: JobRow(*r) for r in rows}


def jobs_of(ledger: Ledger, study: str) -> dict[str, JobRow]:
    """Every job of the study with its attempt count."""
    with ledger.engine.connect() as conn:
        return _jobs(conn, study)


def snapshot(ledger: Ledger, study: str, suite_version: str) -> Snapshot:
    with ledger.engine.connect() as conn:
        jobs = _jobs(conn, study)
        weights: dict[str, set[int]] = {}
        for uid, epoch in conn.execute(select(t.checkpoints.c.job_uid, t.checkpoints.c.epoch)
                                       .join(t.jobs, t.jobs.c.uid == t.checkpoints.c.job_uid)
                                       .where(t.jobs.c.study == study, t.checkpoints.c.kind == "weights")):
            weights.setdefault(uid, set()).add(epoch)
        evals = {}
        for uid, epoch, task, state in conn.execute(
                select(t.evals.c.job_uid, t.evals.c.epoch, t.evals.c.task, t.evals.c.state)
                .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                .where(t.jobs.c.study == study, t.evals.c.suite_version == suite_version)):
            evals[(uid, epoch, task)] = state
    return Snapshot(jobs, weights, evals)


def open_snapshot(ledger: Ledger, study: str, suite_version: str) -> Snapshot:
    """A snapshot holding only the (run, epoch) pairs with an eval still queued or running (and all their evals).

    Given that every weights file already has an eval row per task (app.reconcile queues the missing ones first),
    work.next_work finds the same due evals in it as in the full :func:`snapshot`, without reading every eval row
    of the study (10 M at 10 000 runs); the evals_open index makes it a few rows.
    """
    with ledger.engine.connect() as conn:
        jobs = _jobs(conn, study)
        pairs = {(uid, epoch) for uid, epoch in conn.execute(text(
            "SELECT job_uid, epoch FROM evals WHERE state IN ('queued', 'running') AND suite_version = :v"),
            {"v": suite_version}) if uid in jobs}
        weights: dict[str, set[int]] = {}
        evals = {}
        for uid, epoch in sorted(pairs):
            has_weights = conn.execute(select(t.checkpoints.c.epoch).where(
                t.checkpoints.c.job_uid == uid, t.checkpoints.c.epoch == epoch,
                t.checkpoints.c.kind == "weights")).first()
            if has_weights:
                weights.setdefault(uid, set()).add(epoch)
            for task, state in conn.execute(select(t.evals.c.task, t.evals.c.state).where(
                    t.evals.c.job_uid == uid, t.evals.c.epoch == epoch, t.evals.c.suite_version == suite_version)):
                evals[(uid, epoch, task)] = state
    return Snapshot(jobs, weights, evals)


# -- incremental eval bookkeeping (app.reconcile) --------------------------------------------------------------------
def job_folders(ledger: Ledger, study: str) -> dict[str, str]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(t.jobs.c.uid, t.jobs.c.folder).where(t.jobs.c.study == study)).all())


def events_seen_counts(ledger: Ledger, study: str) -> dict[str, int]:
    """Per job of the study: how many event files have been applied (one query, not one per job)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.events_seen.c.job_uid, func.count())
                            .join(t.jobs, t.jobs.c.uid == t.events_seen.c.job_uid)
                            .where(t.jobs.c.study == study).group_by(t.events_seen.c.job_uid)).all()
    return {uid: n for uid, n in rows}


def weights_after(ledger: Ledger, study: str, after_rowid: int) -> tuple[list[tuple[str, int]], int]:
    """Weights checkpoints recorded after checkpoint row ``after_rowid`` (0: all): [(run uid, epoch)], last rowid.

    Checkpoint rows are only ever added or updated in place, so their rowid orders them by first recording.
    """
    with ledger.engine.connect() as conn:
        last = conn.execute(text("SELECT COALESCE(MAX(rowid), 0) FROM checkpoints")).scalar()
        rows = conn.execute(text(
            "SELECT c.job_uid, c.epoch FROM checkpoints c CROSS JOIN jobs j ON j.uid = c.job_uid "
            "WHERE c.rowid > :after AND c.rowid <= :last AND c.kind = 'weights' AND j.study = :study"),
            {"after": after_rowid, "last": last, "study": study}).all()
    return [(uid, int(epoch)) for uid, epoch in rows], int(last)


def eval_tasks_present(ledger: Ledger, pairs: list[tuple[str, int]], suite_version: str,
                       tasks: tuple[str, ...] | list[str]) -> dict[tuple[str, int], int]:
    """How many of ``tasks`` have an eval row (any state) at each (run, epoch); few pairs: one index lookup each,
    many: one grouped pass over the study's evals."""
    out: dict[tuple[str, int], int] = {}
    if not pairs:
        return out
    wanted = set(pairs)
    task_list = list(tasks)
    with ledger.engine.connect() as conn:
        if len(wanted) <= 2000:
            stmt = (select(func.count()).select_from(t.evals).where(
                t.evals.c.job_uid == bindparam("u"), t.evals.c.epoch == bindparam("e"),
                t.evals.c.suite_version == suite_version, t.evals.c.task.in_(task_list)))
            for uid, epoch in sorted(wanted):
                out[(uid, epoch)] = conn.execute(stmt, {"u": uid, "e": epoch}).scalar() or 0
            return out
        rows = conn.execute(select(t.evals.c.job_uid, t.evals.c.epoch, func.count())
                            .where(t.evals.c.suite_version == suite_version, t.evals.c.task.in_(task_list))
                            .group_by(t.evals.c.job_uid, t.evals.c.epoch)).all()
    for uid, epoch, n in rows:
        if (uid, epoch) in wanted:
            out[(uid, epoch)] = n
    return {p: out.get(p, 0) for p in wanted}


def eval_tasks_at(ledger: Ledger, uid: str, epoch: int, suite_version: str) -> set[str]:
    with ledger.engine.connect() as conn:
        return set(conn.execute(select(t.evals.c.task).where(
            t.evals.c.job_uid == uid, t.evals.c.epoch == epoch, t.evals.c.suite_version == suite_version)).scalars())


def get_meta(ledger: Ledger, key: str) -> str | None:
    with ledger.engine.connect() as conn:
        return conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar()


def set_meta(ledger: Ledger, key: str, value: str) -> None:
    """The one write here: a bookkeeping value (e.g. how far reconcile has looked), under the ledger lock."""
    with ledger.writing("recording reconcile progress"), ledger.engine.begin() as conn:
        conn.execute(insert(t.meta).values(key=key, value=value)
                     .on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def eval_counts(ledger: Ledger, study: str, suite_version: str,
                uids: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per run: how many evals are in each state (only ``uids`` when given: an index range per run)."""
    stmt = (select(t.evals.c.job_uid, t.evals.c.state, func.count())
            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
            .where(t.jobs.c.study == study, t.evals.c.suite_version == suite_version)
            .group_by(t.evals.c.job_uid, t.evals.c.state))
    if uids is not None:
        stmt = stmt.where(t.evals.c.job_uid.in_(list(uids)))
    with ledger.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out: dict[str, dict[str, int]] = {}
    for uid, state, n in rows:
        out.setdefault(uid, {})[state] = n
    return out


def init_val_2afc(ledger: Ledger, uids: list[str]) -> dict[str, tuple[int, float | None]]:
    """Per stage-1 init job: (epoch, NIGHTS val 2AFC) of the epoch it handed on (the lowest validation loss), or of
    its latest epoch while it is still training."""
    if not uids:
        return {}
    params = {f"u{i}": u for i, u in enumerate(uids)}
    marks = ", ".join(f":u{i}" for i in range(len(uids)))
    with ledger.engine.connect() as conn:
        values = conn.execute(text(
            f"SELECT job_uid, epoch, value FROM metrics WHERE job_uid IN ({marks}) AND task = 'train' "
            "AND metric = 'nights_val_2afc'"), params).all()
        chosen = dict(conn.execute(text(
            f"SELECT job_uid, epoch FROM checkpoints WHERE job_uid IN ({marks}) AND kind = 'init'"), params).all())
    out: dict[str, tuple[int, float | None]] = {}
    for uid, epoch, value in values:
        if uid in chosen:
            if epoch == chosen[uid]:
                out[uid] = (epoch, value)
        elif uid not in out or epoch > out[uid][0]:
            out[uid] = (epoch, value)
    return out


def last_main_metric(ledger: Ledger, study: str, task: str,
                     uids: list[str] | None = None) -> dict[str, tuple[int, float | None]]:
    """Per run: (epoch, main value) of ``task`` at the latest evaluated epoch (only ``uids`` when given)."""
    if uids is not None:  # a few runs: their own rows through the primary key ('+' keeps SQLite off other indexes)
        out: dict[str, tuple[int, float | None]] = {}
        if not uids:
            return out
        with ledger.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT job_uid, epoch, main_value FROM evals WHERE job_uid IN ("
                + ", ".join(f":u{i}" for i in range(len(uids))) + ") AND +task = :task AND +state = 'done'"),
                {"task": task, **{f"u{i}": u for i, u in enumerate(uids)}}).all()
        for uid, epoch, value in rows:
            if uid not in out or epoch > out[uid][0]:
                out[uid] = (epoch, value)
        return out
    latest = (select(t.evals.c.job_uid, func.max(t.evals.c.epoch).label("epoch"))
              .where(t.evals.c.task == task, t.evals.c.state == "done").group_by(t.evals.c.job_uid).subquery())
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.evals.c.job_uid, t.evals.c.epoch, t.evals.c.main_value)
                            .join(latest, and_(latest.c.job_uid == t.evals.c.job_uid, latest.c.epoch == t.evals.c.epoch))
                            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                            .where(t.jobs.c.study == study, t.evals.c.task == task, t.evals.c.state == "done")).all()
    return {uid: (epoch, value) for uid, epoch, value in rows}


def disk_use(ledger: Ledger, study: str, uids: list[str] | None = None) -> dict[str, int]:
    """Bytes of checkpoint files on disk per job (weights, resume state, init); only ``uids`` when given.

    A file is counted once, at its latest recorded size: the resume state is rewritten in place at every save
    (one row per epoch points at it) and shrinks to a small marker when its run ends (keep_resume "until_done"),
    so summing every row would count overwritten states. One query over the checkpoints table, no file system.
    """
    where = "j.study = :study" + (" AND c.job_uid IN :uids" if uids is not None else "")
    stmt = text(
        "SELECT job_uid, SUM(bytes) FROM ("
        " SELECT c.job_uid AS job_uid, c.bytes AS bytes, ROW_NUMBER() OVER ("
        "  PARTITION BY c.job_uid, c.path ORDER BY c.created_at DESC, c.rowid DESC) AS newest"
        f" FROM checkpoints c JOIN jobs j ON j.uid = c.job_uid WHERE {where}"
        ") WHERE newest = 1 GROUP BY job_uid")
    params: dict[str, Any] = {"study": study}
    if uids is not None:
        stmt = stmt.bindparams(bindparam("uids", expanding=True))
        params["uids"] = list(uids)
    with ledger.engine.connect() as conn:
        rows = conn.execute(stmt, params).all()
    return {uid: int(b or 0) for uid, b in rows}


def disk_total(ledger: Ledger, study: str) -> int:
    """Bytes of the study's checkpoint files on disk (each file once, at its latest size; see disk_use)."""
    return sum(disk_use(ledger, study).values())


def eval_state_counts_by_job(ledger: Ledger, study: str, suite_version: str) -> dict[str, dict[str, int]]:
    """Per job: evals queued, running, failed or missing data (the done ones are not counted: partial indexes keep
    this a few rows however large the study)."""
    out: dict[str, dict[str, int]] = {}
    with ledger.engine.connect() as conn:
        for sql in ("SELECT e.job_uid, e.state, COUNT(*) FROM evals e CROSS JOIN jobs j ON j.uid = e.job_uid "
                    "WHERE e.state IN ('queued', 'running') AND e.suite_version = :v AND j.study = :s "
                    "GROUP BY e.job_uid, e.state",
                    "SELECT e.job_uid, e.state, COUNT(*) FROM evals e CROSS JOIN jobs j ON j.uid = e.job_uid "
                    "WHERE e.state IN ('failed', 'missing_data') AND e.suite_version = :v AND j.study = :s "
                    "GROUP BY e.job_uid, e.state"):
            for uid, state, n in conn.execute(text(sql), {"v": suite_version, "s": study}):
                out.setdefault(uid, {})[state] = n
    return out


def queued_evals(ledger: Ledger, study: str, suite_version: str) -> dict[tuple[str, int, str], str | None]:
    """Queued evals of the study: (run, epoch, task) -> the SLURM job submitted to run it (None: none yet)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.evals.c.job_uid, t.evals.c.epoch, t.evals.c.task, t.evals.c.scheduler_id)
                            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                            .where(t.jobs.c.study == study, t.evals.c.state == "queued",
                                   t.evals.c.suite_version == suite_version)).all()
    return {(uid, epoch, task): jid for uid, epoch, task, jid in rows}


def attempts_of(ledger: Ledger, uid: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.attempts).where(t.attempts.c.job_uid == uid)
                            .order_by(t.attempts.c.started_at, t.attempts.c.id)).mappings().all()
    return [dict(r) for r in rows]


@dataclass
class OpenAttempt:
    """An attempt of a local job that has started and not ended, as the ledger knows it."""

    uid: str
    folder: str
    job_id: str
    restart: int
    step: int
    host: str | None


def open_local_attempts(ledger: Ledger, study: str) -> list[OpenAttempt]:
    """Attempts of the study's local jobs with no end recorded (live ones, or ones whose process died unseen)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(t.jobs.c.uid, t.jobs.c.folder, t.attempts.c.job_id, t.attempts.c.restart, t.jobs.c.step_reached,
                   t.attempts.c.host)
            .join(t.attempts, t.attempts.c.job_uid == t.jobs.c.uid)
            .where(t.jobs.c.study == study, t.attempts.c.outcome.is_(None),
                   func.coalesce(t.attempts.c.executor, t.jobs.c.executor) == "local")).all()
    return [OpenAttempt(*r) for r in rows]
