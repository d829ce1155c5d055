"""Reading the ledger: what the scheduler and the status/report commands need, aggregated in SQL."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, select

from . import schema as t
from .db import Ledger


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
    attempts: int = 0


@dataclass
class Snapshot:
    """The ledger's view of one study, enough to decide what to run next."""

    jobs: dict[str, JobRow]
    weights: dict[str, set[int]]  # run uid -> epochs with a weights file
    evals: dict[tuple[str, int, str], str]  # (run uid, epoch, task) -> state, for the current suite version
    eval_reasons: dict[tuple[str, int, str], str] = field(default_factory=dict)


def study_spec(ledger: Ledger, name: str) -> dict[str, Any] | None:
    with ledger.engine.connect() as conn:
        raw = conn.execute(select(t.studies.c.spec_json).where(t.studies.c.name == name)).scalar()
    return json.loads(raw) if raw else None


def study_names(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(t.studies.c.name).order_by(t.studies.c.name)).scalars())


def snapshot(ledger: Ledger, study: str, suite_version: str) -> Snapshot:
    with ledger.engine.connect() as conn:
        n_att = (select(t.attempts.c.job_uid, func.count().label("n")).group_by(t.attempts.c.job_uid).subquery())
        rows = conn.execute(select(t.jobs, func.coalesce(n_att.c.n, 0).label("attempts"))
                            .select_from(t.jobs.outerjoin(n_att, n_att.c.job_uid == t.jobs.c.uid))
                            .where(t.jobs.c.study == study)).mappings().all()
        jobs = {r["uid"]: JobRow(**{k: r[k] for k in JobRow.__dataclass_fields__}) for r in rows}
        weights: dict[str, set[int]] = {}
        for uid, epoch in conn.execute(select(t.checkpoints.c.job_uid, t.checkpoints.c.epoch)
                                       .join(t.jobs, t.jobs.c.uid == t.checkpoints.c.job_uid)
                                       .where(t.jobs.c.study == study, t.checkpoints.c.kind == "weights")):
            weights.setdefault(uid, set()).add(epoch)
        evals, reasons = {}, {}
        for uid, epoch, task, state, reason in conn.execute(
                select(t.evals.c.job_uid, t.evals.c.epoch, t.evals.c.task, t.evals.c.state, t.evals.c.reason)
                .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                .where(t.jobs.c.study == study, t.evals.c.suite_version == suite_version)):
            evals[(uid, epoch, task)] = state
            if reason:
                reasons[(uid, epoch, task)] = reason
    return Snapshot(jobs, weights, evals, reasons)


def eval_counts(ledger: Ledger, study: str, suite_version: str) -> dict[str, dict[str, int]]:
    """Per run: how many evals are in each state."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.evals.c.job_uid, t.evals.c.state, func.count())
                            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                            .where(t.jobs.c.study == study, t.evals.c.suite_version == suite_version)
                            .group_by(t.evals.c.job_uid, t.evals.c.state)).all()
    out: dict[str, dict[str, int]] = {}
    for uid, state, n in rows:
        out.setdefault(uid, {})[state] = n
    return out


def last_main_metric(ledger: Ledger, study: str, task: str) -> dict[str, tuple[int, float | None]]:
    """Per run: (epoch, main value) of ``task`` at the latest evaluated epoch."""
    with ledger.engine.connect() as conn:
        latest = (select(t.evals.c.job_uid, func.max(t.evals.c.epoch).label("epoch"))
                  .where(t.evals.c.task == task, t.evals.c.state == "done").group_by(t.evals.c.job_uid).subquery())
        rows = conn.execute(select(t.evals.c.job_uid, t.evals.c.epoch, t.evals.c.main_value)
                            .join(latest, and_(latest.c.job_uid == t.evals.c.job_uid, latest.c.epoch == t.evals.c.epoch))
                            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                            .where(t.jobs.c.study == study, t.evals.c.task == task, t.evals.c.state == "done")).all()
    return {uid: (epoch, value) for uid, epoch, value in rows}


def disk_use(ledger: Ledger, study: str) -> dict[str, int]:
    """Bytes of checkpoints recorded per job (weights, resume states, inits)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.checkpoints.c.job_uid, func.sum(t.checkpoints.c.bytes))
                            .join(t.jobs, t.jobs.c.uid == t.checkpoints.c.job_uid)
                            .where(t.jobs.c.study == study).group_by(t.checkpoints.c.job_uid)).all()
    return {uid: int(b or 0) for uid, b in rows}


def main_metric_curves(ledger: Ledger, study: str, suite_version: str | tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows (init, scale, epochs, seed, epoch, task, metric, value) of every done eval's main metric."""
    versions = (suite_version,) if isinstance(suite_version, str) else tuple(suite_version)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.jobs.c.init, t.jobs.c.scale, t.jobs.c.epochs, t.jobs.c.seed, t.evals.c.epoch,
                                   t.evals.c.task, t.evals.c.main_metric, t.evals.c.main_value)
                            .join(t.jobs, t.jobs.c.uid == t.evals.c.job_uid)
                            .where(t.jobs.c.study == study, t.evals.c.state == "done",
                                   t.evals.c.suite_version.in_(versions))).mappings().all()
    return [dict(r) for r in rows]


def attempts_of(ledger: Ledger, uid: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.attempts).where(t.attempts.c.job_uid == uid)
                            .order_by(t.attempts.c.started_at, t.attempts.c.id)).mappings().all()
    return [dict(r) for r in rows]
