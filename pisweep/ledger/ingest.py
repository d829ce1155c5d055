"""Writing the ledger: the study and its plan, then the jobs' events, idempotently.

Every write is an upsert on a natural key (job, attempt, epoch, task, metric), so ingesting the same events twice,
or rebuilding the ledger from the job folders, gives the same rows.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert

from pisweep.errors import LedgerError, SpecError
from pisweep.job.events import read_events
from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger
from pisweep.study.identity import canonical_json, drift, result_view
from pisweep.study.layout import Layout
from pisweep.study.load import study_from_json
from pisweep.study.plan import Plan
from pisweep.study.spec import Study


def spec_hash(study: Study, version: int) -> str:
    """A hash of what the study's results depend on (study/identity.py)."""
    return hashlib.sha256(canonical_json(result_view(study, version, full=True)).encode()).hexdigest()[:16]


def _drift(old_spec: dict[str, Any], new: Study, version: int) -> list[str]:
    try:
        old = study_from_json(old_spec, version)
    except SpecError as e:
        return [f"the recorded spec no longer loads with this pisweep ({str(e).splitlines()[0]})"]
    return drift(old, new, version)


def record_study(ledger: Ledger, spec: dict[str, Any], spec_path: str | None, plan: Plan, layout: Layout,
                 force: bool = False) -> None:
    """Store the study and add the plan's jobs that are new (existing jobs keep their state)."""
    now = time.time()
    version = plan.identity_version
    study = study_from_json(spec, version)
    with ledger.writing("recording the study"), ledger.engine.begin() as conn:
        old = conn.execute(select(t.studies.c.spec_json, t.studies.c.identity_version)
                           .where(t.studies.c.name == plan.study)).first()
        if old is not None and old.identity_version != version:
            raise LedgerError(f"study {plan.study!r} is recorded under identity v{old.identity_version} in "
                              f"{ledger.path}; its plan was made under v{version}")
        if old is not None and not force:
            diff = _drift(json.loads(old.spec_json), study, version)
            if diff:
                raise LedgerError(
                    f"study {plan.study!r} already exists in {ledger.path} with different result-affecting fields:\n  "
                    + "\n  ".join(diff) + "\nuse a new study name, or --force to replace the recorded spec")
        if old is not None:
            _renew_changed_folders(conn, plan.study, json.loads(old.spec_json), spec, now)
        digest = spec_hash(study, version)
        conn.execute(insert(t.studies).values(
            name=plan.study, spec_json=json.dumps(spec, sort_keys=True), spec_hash=digest, spec_path=spec_path,
            identity_version=version, created_at=now, updated_at=now).on_conflict_do_update(
            index_elements=["name"], set_={"spec_json": json.dumps(spec, sort_keys=True), "spec_hash": digest,
                                           "spec_path": spec_path, "updated_at": now}))
        rows = [dict(uid=i.uid, study=plan.study, kind="init", label=i.label, init=i.method, init_uid=None, scale=None,
                     epochs=None, seed=i.seed, folder=str(layout.init_dir(i.uid)), identity_json=canonical_json(i.identity),
                     state="planned", updated_at=now) for i in plan.inits]
        rows += [dict(uid=r.uid, study=plan.study, kind=r.kind, label=r.label, init=r.init, init_uid=r.depends_on,
                      scale=r.scale, epochs=r.epochs, seed=r.seed, folder=str(layout.run_dir(r.uid)),
                      identity_json=canonical_json(r.identity), state="planned", updated_at=now) for r in plan.runs]
        for row in rows:
            conn.execute(insert(t.jobs).values(**row).on_conflict_do_nothing(index_elements=["uid"]))


def _renew_changed_folders(conn: Connection, study: str, old: dict[str, Any], new: dict[str, Any], now: float) -> None:
    """A task whose ``eval.folders`` entry changed reads other data: its evals become new results (queued again, their
    metrics dropped; the eval job recomputes them, see runner/evals.py)."""
    before, after = (dict((s.get("eval") or {}).get("folders") or {}) for s in (old, new))
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if not changed:
        return
    runs = select(t.jobs.c.uid).where(t.jobs.c.study == study).scalar_subquery()
    for task in changed:
        reason = f"eval.folders.{task} changed: {before.get(task)!r} -> {after.get(task)!r}"
        conn.execute(update(t.evals).where(t.evals.c.task == task, t.evals.c.job_uid.in_(runs)).values(
            state="queued", reason=reason, path=None, main_value=None, scheduler_id=None, updated_at=now))
        conn.execute(delete(t.metrics).where(t.metrics.c.task == task, t.metrics.c.job_uid.in_(runs)))


def set_job_state(ledger: Ledger, uid: str, state: str, reason: str | None = None, **extra: Any) -> None:
    with ledger.writing("updating a job's state"), ledger.engine.begin() as conn:
        conn.execute(update(t.jobs).where(t.jobs.c.uid == uid).values(state=state, reason=reason, updated_at=time.time(),
                                                                        **extra))


def set_eval_states(ledger: Ledger, items: Iterable[tuple[str, int, str]], state: str, suite_version: str,
                    only_new: bool = True, reason: str | None = None, scheduler_id: str | None = None) -> int:
    """Mark (job, epoch, task) evals with ``state`` (and the SLURM job submitted to run them); with ``only_new``,
    rows that already exist are left alone."""
    now = time.time()
    n = 0
    with ledger.writing("queueing evals"), ledger.engine.begin() as conn:
        for job_uid, epoch, task in items:
            values = {"state": state, "reason": reason, "updated_at": now, "scheduler_id": scheduler_id}
            stmt = insert(t.evals).values(job_uid=job_uid, epoch=epoch, task=task, suite_version=suite_version,
                                          **values)
            stmt = (stmt.on_conflict_do_nothing() if only_new else
                    stmt.on_conflict_do_update(index_elements=["job_uid", "epoch", "task", "suite_version"],
                                               set_=values))
            n += conn.execute(stmt).rowcount
    return n


def ingest(ledger: Ledger, study: str) -> int:
    """Apply every job's new events to the ledger; return how many were applied."""
    applied = 0
    with ledger.writing("ingesting events"), ledger.engine.begin() as conn:
        for uid, folder in conn.execute(select(t.jobs.c.uid, t.jobs.c.folder).where(t.jobs.c.study == study)).all():
            seen = set(conn.execute(select(t.events_seen.c.name).where(t.events_seen.c.job_uid == uid)).scalars())
            for name, ev in read_events(Path(folder), seen):
                apply_event(conn, uid, ev)
                conn.execute(insert(t.events_seen).values(job_uid=uid, name=name).on_conflict_do_nothing())
                applied += 1
    return applied


def apply_event(conn: Connection, uid: str, ev: dict[str, Any]) -> None:
    kind, data, when = ev["kind"], ev.get("data", {}), ev.get("time")
    att = ev.get("attempt") or {}
    if kind == "attempt_started":
        conn.execute(insert(t.attempts).values(
            job_uid=uid, job_id=att["job_id"], restart=att["restart"], executor=data.get("executor"),
            host=data.get("host"), world_size=data.get("world_size"), started_at=when).on_conflict_do_update(
            index_elements=["job_uid", "job_id", "restart"],
            set_={"host": data.get("host"), "executor": data.get("executor"), "started_at": when}))
        _job(conn, uid, when, state="running", reason=None, scheduler_id=att["job_id"], no_retry=0)
    elif kind == "attempt_ended":
        outcome = data["outcome"]
        conn.execute(insert(t.attempts).values(
            job_uid=uid, job_id=att["job_id"], restart=att["restart"], ended_at=when, outcome=outcome,
            reason=data.get("reason"), step=data.get("step"), epoch=data.get("epoch")).on_conflict_do_update(
            index_elements=["job_uid", "job_id", "restart"],
            set_={"ended_at": when, "outcome": outcome, "reason": data.get("reason"), "step": data.get("step"),
                  "epoch": data.get("epoch")}))
        counts = dict(conn.execute(select(t.attempts.c.outcome, func.count()).where(t.attempts.c.job_uid == uid)
                                   .group_by(t.attempts.c.outcome)).all())
        _job(conn, uid, when, state=outcome, reason=data.get("reason"), failures=counts.get("failed", 0),
             timeouts=counts.get("timeout", 0), no_retry=int(outcome == "failed" and data.get("retry") is False))
        if data.get("step") is not None:
            _raise_reached(conn, uid, step=data["step"])
    elif kind == "epoch_done":
        epoch = int(data["epoch"])
        _metrics(conn, uid, epoch, data.get("task", "train"), data.get("metrics", {}), "-")  # posthoc: "finetune"
        _raise_reached(conn, uid, epoch=epoch, step=data.get("step"))
    elif kind in ("checkpoint", "init_selected"):
        ckind = data.get("kind", "init")
        conn.execute(insert(t.checkpoints).values(
            job_uid=uid, epoch=int(data["epoch"]), kind=ckind, path=data["path"], sha256=data.get("sha256"),
            bytes=data.get("bytes"), step=data.get("step"), created_at=when).on_conflict_do_update(
            index_elements=["job_uid", "epoch", "kind"],
            set_={"path": data["path"], "sha256": data.get("sha256"), "bytes": data.get("bytes"),
                  "step": data.get("step"), "created_at": when}))
    elif kind == "eval_state":
        version = str(data.get("suite_version", "-"))
        metrics = data.get("metrics") or {}
        main = data.get("main_metric")
        values = dict(state=data["state"], reason=data.get("reason"), path=data.get("path"), main_metric=main,
                      main_value=metrics.get(main) if main else None, updated_at=when)
        if data.get("scheduler_id"):  # a train job submitted its eval job (the eval's own events do not say)
            values["scheduler_id"] = str(data["scheduler_id"])
        conn.execute(insert(t.evals).values(job_uid=uid, epoch=int(data["epoch"]), task=data["task"],
                                            suite_version=version, **values)
                     .on_conflict_do_update(index_elements=["job_uid", "epoch", "task", "suite_version"], set_=values))
        if data["state"] == "done":
            _metrics(conn, uid, int(data["epoch"]), data["task"], metrics, version)
    else:
        raise LedgerError(f"job {uid}: unknown event kind {kind!r}")


def _job(conn: Connection, uid: str, when: float | None, **values: Any) -> None:
    conn.execute(update(t.jobs).where(t.jobs.c.uid == uid).values(updated_at=when or time.time(), **values))


def _raise_reached(conn: Connection, uid: str, epoch: int | None = None, step: int | None = None) -> None:
    if epoch is not None:
        conn.execute(update(t.jobs).where(t.jobs.c.uid == uid, t.jobs.c.epoch_reached < epoch).values(epoch_reached=epoch))
    if step is not None:
        conn.execute(update(t.jobs).where(t.jobs.c.uid == uid, t.jobs.c.step_reached < step).values(step_reached=step))


def _metrics(conn: Connection, uid: str, epoch: int, task: str, values: dict[str, Any], version: str) -> None:
    for metric, value in values.items():
        if value is not None and not isinstance(value, (int, float)):
            continue
        conn.execute(insert(t.metrics).values(job_uid=uid, epoch=epoch, task=task, metric=metric,
                                              suite_version=version, value=value)
                     .on_conflict_do_update(index_elements=["job_uid", "epoch", "task", "metric", "suite_version"],
                                            set_={"value": value}))
