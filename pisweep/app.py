"""The commands' work, without printing: open the study, plan, reconcile, run, and gather status.

The CLI turns these results into rich tables or JSON; tests call them directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .datapaths import DataPaths, Preflight, preflight, resolve
from .ledger.db import Ledger
from .ledger.ingest import ingest, record_study, set_eval_states, set_job_state
from .ledger.lock import file_lock
from .ledger.queries import disk_use, eval_counts, last_main_metric, snapshot
from .plan import Layout, Plan, make_plan
from .studyref import StudyRef, remember
from .work import Work, next_work

Progress = Callable[[str, int, int], None]


@dataclass
class Session:
    ref: StudyRef
    ledger: Ledger
    plan: Plan
    layout: Layout
    suite_version: str

    @property
    def name(self) -> str:
        return self.plan.study

    def close(self) -> None:
        self.ledger.close()


def suite_version() -> str:
    from .eval.registry import SUITE_VERSION

    return str(SUITE_VERSION)


def open_session(ref: StudyRef, on_wait: Callable[[str], None] | None = None) -> Session:
    plan = make_plan(ref.study)
    ledger = Ledger(ref.ledger_path, on_wait=on_wait)
    return Session(ref, ledger, plan, Layout(Path(ref.study.output_root)), suite_version())


def reconcile(s: Session) -> Work:
    """Ingest new events, mark blocked runs, queue every due eval that has no row yet (a lost submission heals)."""
    ingest(s.ledger, s.name)
    snap = snapshot(s.ledger, s.name, s.suite_version)
    work = next_work(s.plan, snap, s.ref.study.executor.max_failures)
    for uid, reason in work.blocked.items():
        if snap.jobs[uid].state != "blocked" or snap.jobs[uid].reason != reason:
            set_job_state(s.ledger, uid, "blocked", reason)
    missing = [(uid, e, t) for uid, items in work.evals.items() for e, t in items if (uid, e, t) not in snap.evals]
    if missing:
        set_eval_states(s.ledger, missing, "queued", s.suite_version)
    return work


@dataclass
class Prepared:
    paths: DataPaths
    preflight: Preflight


def prepare(s: Session, progress: Progress | None = None, force: bool = False) -> Prepared:
    """Make synthetic data if needed, run the preflight check, record the study and its plan."""
    paths = resolve(s.ref.study, generate=True, progress=progress)
    ranks = s.ref.study.executor.train.nodes * max(1, s.ref.study.executor.train.gpus_per_node)
    pf = preflight(s.ref.study, paths, ranks=ranks)
    pf.raise_if_problems(s.name)
    record_study(s.ledger, s.ref.study_json, s.ref.spec_path, s.plan, s.layout, force=force)
    remember(s.name, s.ledger.path, s.ref.spec_path)
    return Prepared(paths, pf)


@dataclass
class RunResult:
    nothing_to_do: bool
    outcome: Any = None
    work_before: Work | None = None
    wall_s: float = 0.0


def run_local(s: Session, prepared: Prepared, reporter, on_wait: Callable[[str], None] | None = None) -> RunResult:
    """Run what is left of the study on this machine (one scheduler per study at a time: a lock)."""
    from .executors.local import LocalExecutor

    with file_lock(s.ledger.path.with_name(s.ledger.path.name + ".run.lock"), f"running study {s.name}", on_wait):
        work = reconcile(s)
        if work.empty():
            return RunResult(True, work_before=work)
        t0 = time.time()
        ex = LocalExecutor(s.ledger, s.ref.study, s.ref.study_json, s.plan, prepared.paths, s.layout, s.suite_version,
                           reporter)
        outcome = ex.run()
        reconcile(s)
        return RunResult(False, outcome, work, time.time() - t0)


# -- status ---------------------------------------------------------------------------------------------------------
@dataclass
class StatusData:
    study: str
    ledger: str
    tasks_total: int
    tasks_present: list[str]
    tasks_missing: dict[str, str]
    cells: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study, "ledger": self.ledger,
                "coverage": {"present": len(self.tasks_present), "total": self.tasks_total,
                             "tasks_present": self.tasks_present, "tasks_missing": self.tasks_missing},
                "summary": self.summary, "cells": self.cells}


def status(s: Session) -> StatusData:
    reconcile(s)
    snap = snapshot(s.ledger, s.name, s.suite_version)
    paths = resolve(s.ref.study, generate=False)
    from .eval.registry import coverage

    present, missing = (coverage(Path(paths.eval_root), list(s.plan.tasks), dict(s.ref.study.eval.folders))
                        if paths.eval_root else ([], {t: "(no eval_root)" for t in s.plan.tasks}))
    main_task = s.ref.study.eval.main_task
    last = last_main_metric(s.ledger, s.name, main_task)
    counts = eval_counts(s.ledger, s.name, s.suite_version)
    disk = disk_use(s.ledger, s.name)
    data = StatusData(s.name, str(s.ledger.path), len(s.plan.tasks), list(present), {k: str(v) for k, v in missing.items()})
    planned = {**{i.uid: ("init", i) for i in s.plan.inits}, **{r.uid: ("train", r) for r in s.plan.runs}}
    for uid, (kind, job) in planned.items():
        row = snap.jobs.get(uid)
        state = row.state if row else "planned"
        cell = {"uid": uid, "kind": kind, "label": job.label, "state": state,
                "init": getattr(job, "init", getattr(job, "method", None)), "scale": getattr(job, "scale", None),
                "seed": job.seed, "epoch": row.epoch_reached if row else 0,
                "epochs": job.epochs if kind == "train" else s.ref.study.stage1.epochs,
                "attempts": row.attempts if row else 0, "reason": row.reason if row else None,
                "log": row.log_path if row else None, "disk_bytes": disk.get(uid, 0)}
        if kind == "train":
            epoch_value = last.get(uid)
            cell["main_metric"] = {"task": main_task, "epoch": epoch_value[0], "value": epoch_value[1]} if epoch_value else None
            cell["evals"] = counts.get(uid, {})
            cell["evals_planned"] = len(job.eval_epochs) * len(s.plan.tasks)
        data.cells.append(cell)
        data.summary[state] = data.summary.get(state, 0) + 1
    return data


def find_job(s: Session, key: str) -> dict[str, Any] | None:
    """A job by uid (or prefix) or label."""
    snap = snapshot(s.ledger, s.name, s.suite_version)
    for row in snap.jobs.values():
        if row.uid.startswith(key) or row.label == key:
            return row.__dict__
    return None
