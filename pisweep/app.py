"""The commands' work, without printing: open the study, plan, reconcile, run, and gather status.

The CLI turns these results into rich tables or JSON; tests call them directly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .datapaths import DataPaths, Preflight, preflight, resolve
from .ledger.db import Ledger
from .ledger.ingest import ingest, record_study, set_eval_states, set_job_state
from .ledger.queries import (Snapshot, disk_total, disk_use, eval_counts, eval_state_counts_by_job, eval_tasks_at,
                             eval_tasks_present, events_seen_counts, get_meta, init_val_2afc, job_folders,
                             last_main_metric, open_snapshot, set_meta, snapshot, weights_after)
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

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def suite_version() -> str:
    from .eval.registry import SUITE_VERSION

    return str(SUITE_VERSION)


def open_session(ref: StudyRef, on_wait: Callable[[str], None] | None = None, read: bool = False) -> Session:
    """The study's plan and ledger. ``read``: for the read-only commands; the ledger must exist, and is opened
    read-only when this process cannot write it (then nothing is ingested: the ledger is shown as it is)."""
    plan = make_plan(ref.study)
    ledger = Ledger.for_reading(ref.ledger_path, on_wait=on_wait) if read else Ledger(ref.ledger_path, on_wait=on_wait)
    return Session(ref, ledger, plan, Layout(Path(ref.study.output_root)), suite_version())


def reconcile(s: Session) -> Work:
    """Ingest new events, queue every due eval that has no row yet (a lost submission heals), mark blocked runs.

    Kept cheap for status at 10 000 runs: events are ingested only when some job folder holds event files the
    ledger has not applied; missing evals are looked for only at the weights files recorded since the last
    reconcile (a mark in the ledger's meta table; a change of the plan's runs, tasks, eval epochs or suite version
    looks at every weights file again); and what is due is read from the evals still open (open_snapshot), not
    from every (run, epoch, task).
    """
    return _reconcile(s)[0]


def _reconcile(s: Session) -> tuple[Work, Snapshot]:
    from .executors.local import close_lost_attempts

    if s.ledger.readonly:  # a read-only ledger is shown as it is
        snap = open_snapshot(s.ledger, s.name, s.suite_version)
        return next_work(s.plan, snap, s.ref.study.executor.max_failures), snap
    if _events_pending(s):
        ingest(s.ledger, s.name)
    close_lost_attempts(s.ledger, s.name)
    _queue_missing_evals(s)
    snap = open_snapshot(s.ledger, s.name, s.suite_version)
    work = next_work(s.plan, snap, s.ref.study.executor.max_failures)
    for uid, reason in work.blocked.items():
        row = snap.jobs[uid]
        if row.state != "blocked" or row.reason != reason:
            set_job_state(s.ledger, uid, "blocked", reason)
            row.state, row.reason = "blocked", reason
    return work, snap


def _events_pending(s: Session) -> bool:
    """Whether any job folder holds more event files than the ledger has applied (ingest's own file filter)."""
    from .events import EVENT_DIR

    seen = events_seen_counts(s.ledger, s.name)
    for uid, folder in job_folders(s.ledger, s.name).items():
        try:
            names = os.listdir(os.path.join(folder, EVENT_DIR))  # not pathlib: 10 000 folders
        except OSError:
            names = []
        if sum(1 for n in names if n.endswith(".json") and not n.startswith(".")) != seen.get(uid, 0):
            return True
    return False


_EVAL_MARK = "reconcile.evals:"


def _queue_missing_evals(s: Session) -> None:
    """Queue (run, evaluated epoch with a weights file, task) evals that have no row, as next_work would find them."""
    runs = {r.uid: r for r in s.plan.runs}
    tasks = tuple(s.plan.tasks)
    key = hashlib.sha256("\n".join([s.suite_version, ",".join(tasks)] + sorted(
        f"{u}:{','.join(map(str, r.eval_epochs))}" for u, r in runs.items())).encode()).hexdigest()[:16]
    raw = get_meta(s.ledger, _EVAL_MARK + s.name)
    mark = json.loads(raw) if raw else {}
    after = int(mark.get("checkpoint_rowid", 0)) if mark.get("plan") == key else 0
    weights, last = weights_after(s.ledger, s.name, after)
    pairs = [(u, e) for u, e in weights if u in runs and e in runs[u].eval_epochs]
    missing: list[tuple[str, int, str]] = []
    for (uid, epoch), n in sorted(eval_tasks_present(s.ledger, pairs, s.suite_version, tasks).items()):
        if n < len(tasks):
            have = eval_tasks_at(s.ledger, uid, epoch, s.suite_version)
            missing += [(uid, epoch, task) for task in tasks if task not in have]
    if missing:
        set_eval_states(s.ledger, missing, "queued", s.suite_version)
    if mark.get("plan") != key or last != after:
        set_meta(s.ledger, _EVAL_MARK + s.name, json.dumps({"plan": key, "checkpoint_rowid": last}))


@dataclass
class Prepared:
    paths: DataPaths
    preflight: Preflight


def check(ref: StudyRef, progress: Progress | None = None) -> Prepared:
    """Make synthetic data if needed and run the preflight check; nothing else is written before it passes."""
    paths = resolve(ref.study, generate=True, progress=progress)
    ranks = ref.study.executor.train.nodes * max(1, ref.study.executor.train.gpus_per_node)
    pf = preflight(ref.study, paths, ranks=ranks)
    pf.raise_if_problems(ref.study.name)
    return Prepared(paths, pf)


def record(s: Session, force: bool = False) -> None:
    """Record the study and its plan in the ledger and the study index."""
    record_study(s.ledger, s.ref.study_json, s.ref.spec_path, s.plan, s.layout, force=force)
    remember(s.name, s.ledger.path, s.ref.spec_path)


def check_disk(ref: StudyRef) -> None:
    """Refuse (PreflightError) when the output root has less free space than what is left of the plan will write;
    before anything is written there."""
    from .diskplan import disk_needed, free_bytes
    from .errors import PreflightError
    from .ledger.queries import jobs_of

    plan = make_plan(ref.study)
    done: list[str] = []
    if ref.ledger_path.is_file():
        led = Ledger.for_reading(ref.ledger_path)
        try:
            done = [u for u, row in jobs_of(led, plan.study).items() if row.state == "completed"]
        finally:
            led.close()
    need = disk_needed(ref.study, plan, done)
    root = Path(ref.study.output_root)
    free = free_bytes(root)
    if need is not None and need.bytes > free:
        raise PreflightError(f"study {plan.study!r}: {root} has {free / 1e9:.3g} GB free and what is left of the "
                             f"plan writes {need.describe()}; free space, keep fewer weights "
                             f"(stage2.keep_weights: evaluated), or pass --ignore-disk")


@dataclass
class RunResult:
    nothing_to_do: bool
    outcome: Any = None
    work_before: Work | None = None
    wall_s: float = 0.0


@contextlib.contextmanager
def controlling(ref: StudyRef, purpose: str) -> Iterator[None]:
    """Be the study's one controller for the block: hold its controller lock (a live one refuses at once, naming
    itself: StudyBusy) and claim its output root for this ledger (another ledger's root is refused)."""
    from .executors.controller import hold_controller
    from .ledger.owner import claim_output_root

    with hold_controller(ref.study.output_root, ref.study.name, purpose):
        claim_output_root(ref.study.output_root, ref.ledger_path)
        yield


def run_local(s: Session, prepared: Prepared, reporter, stop=None) -> RunResult:
    """Run what is left of the study on this machine; call inside :func:`controlling`.

    ``stop`` (executors.stopping.StopRequest) says which signals and streams end the run; by default SIGINT,
    SIGTERM and SIGHUP."""
    from .executors.local import LocalExecutor, remove_interrupted_writes
    from .executors.schedlog import SchedulerLog, scheduler_log_path

    log = SchedulerLog(scheduler_log_path(s.layout.root))
    work = reconcile(s)  # closes the attempts a killed controller left open
    removed = remove_interrupted_writes(s.ledger, s.name)
    if work.empty():
        return RunResult(True, work_before=work)
    log.line(f"scheduler started for study {s.name} (ledger {s.ledger.path}): {len(work.inits)} inits and "
             f"{len(work.runs)} runs to run, {sum(map(len, work.evals.values()))} evals due"
             + (f"; removed {removed} temp files of interrupted writes" if removed else ""))
    t0 = time.time()
    ex = LocalExecutor(s.ledger, s.ref.study, s.ref.study_json, s.plan, prepared.paths, s.layout, s.suite_version,
                       reporter, stop=stop, log=log)
    outcome = ex.run()
    reconcile(s)
    if not outcome.interrupted:
        log.line(f"scheduler finished: {outcome.completed} jobs completed, {outcome.failed} failed, "
                 f"{outcome.stopped} stopped, {outcome.evals} evals run")
    return RunResult(False, outcome, work, time.time() - t0)


def slurm_executor(s: Session, paths: DataPaths):
    from .errors import SpecError
    from .executors.profile import load_profile
    from .executors.slurm import SlurmExecutor

    if not s.ref.study.executor.profile:
        raise SpecError(f"study {s.name!r}: executor 'slurm' needs executor.profile (a site profile in "
                        f"slurm_templates/, e.g. slurm_templates/dev-cluster.yaml)")
    return SlurmExecutor(s.ledger, s.ref.study, s.ref.study_json, s.plan, paths, s.layout, s.suite_version,
                         load_profile(s.ref.study.executor.profile))


def reconcile_slurm(s: Session, paths: DataPaths | None = None) -> dict[str, str]:
    """Ingest, then ask SLURM (one sacct + one squeue) about the jobs it may still hold."""
    if s.ref.study.executor.name != "slurm":
        return {}
    ingest(s.ledger, s.name)
    return slurm_executor(s, paths or resolve(s.ref.study, generate=False)).reconcile()


def submit_slurm(s: Session, prepared: Prepared):
    """Submit what the study still needs to SLURM and return at once (call inside :func:`controlling`); jobs
    report through events."""
    ex = slurm_executor(s, prepared.paths)
    ingest(s.ledger, s.name)
    ex.reconcile()
    work = reconcile(s)
    snap = snapshot(s.ledger, s.name, s.suite_version)
    if work.empty():
        return RunResult(True, work_before=work)
    return RunResult(False, ex.submit(work, snap), work)


@dataclass
class Cancelled:
    slurm: list[str] = field(default_factory=list)  # SLURM job ids cancelled
    local: Any = None  # executors.local_control.LocalCancel

    @property
    def anything(self) -> bool:
        return bool(self.slurm or (self.local and (self.local.scheduler or self.local.jobs)))


def cancel(s: Session, key: str | None) -> Cancelled:
    """Cancel the study's jobs (or one job, by uid prefix or label) that may still run: SLURM jobs with scancel;
    local ones (the study's live scheduler, or the one job's live processes) by asking them to save and stop."""
    from .errors import StudyNotFound
    from .executors.local_control import cancel_local

    snap = snapshot(s.ledger, s.name, s.suite_version)
    uids = [u for u, row in snap.jobs.items() if key is None or u.startswith(key) or row.label == key]
    if key is not None and not uids:
        raise StudyNotFound(f"study {s.name!r} has no job {key!r}")
    out = Cancelled()
    local_rows = [snap.jobs[u] for u in uids if snap.jobs[u].executor in (None, "local")]
    out.local = cancel_local(s.layout.root, local_rows, whole_study=key is None)
    if out.local.jobs or out.local.scheduler:
        ingest(s.ledger, s.name)
    if s.ref.study.executor.name == "slurm":
        out.slurm = slurm_executor(s, resolve(s.ref.study, generate=False)).cancel_jobs(snap, uids)
    return out


# -- status ---------------------------------------------------------------------------------------------------------
STATUS_LIMIT = 40  # cells listed one by one; beyond that, a summary per group and the most relevant cells
_RELEVANCE = {"failed": 0, "blocked": 1, "vanished": 2, "running": 3, "preempted": 4, "stopped": 4, "timeout": 5, "queued": 6,
              "cancelled": 7, "planned": 8, "completed": 9}


@dataclass
class StatusData:
    study: str
    ledger: str
    tasks_total: int
    tasks_present: list[str]
    tasks_missing: dict[str, str]
    cells: list[dict[str, Any]] = field(default_factory=list)  # the cells shown (all of them up to the limit)
    summary: dict[str, int] = field(default_factory=dict)  # every cell, by state
    groups: list[dict[str, Any]] = field(default_factory=list)  # per (kind, init, scale, epochs): states, evals
    cells_total: int = 0
    cells_matching: int = 0  # after the state filter
    state_filter: str | None = None
    limit: int | None = None
    evals: dict[str, int] = field(default_factory=dict)  # open/failed/missing_data evals of the study
    disk_bytes: int = 0
    controller: dict[str, Any] | None = None  # the live scheduler or submission (pid, host, since, command)

    @property
    def hidden(self) -> int:
        return self.cells_matching - len(self.cells)

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study, "ledger": self.ledger,
                "coverage": {"present": len(self.tasks_present), "total": self.tasks_total,
                             "tasks_present": self.tasks_present, "tasks_missing": self.tasks_missing},
                "summary": self.summary, "cells": self.cells, "groups": self.groups,
                "cells_total": self.cells_total, "cells_matching": self.cells_matching, "cells_hidden": self.hidden,
                "filter": {"state": self.state_filter, "limit": self.limit}, "evals": self.evals,
                "disk_bytes": self.disk_bytes, "controller": self.controller}


def status(s: Session, state: str | None = None, limit: int | None = STATUS_LIMIT) -> StatusData:
    """The grid's state: every cell when there are at most ``limit`` (None: no limit) matching ``state``;
    otherwise counts per group and the ``limit`` most relevant cells (failed, blocked, running first).

    Only the cells shown are looked up one by one (evals, main metric, disk); the rest is counted from the jobs
    table and the small partial indexes of open and failed evals, so it stays fast at 10 000 runs.
    """
    paths = resolve(s.ref.study, generate=False)
    if s.ref.study.executor.name == "slurm" and not s.ledger.readonly:  # one sacct + one squeue; lost eval
        # submissions are resubmitted
        ex = slurm_executor(s, paths)
        ex.reconcile()
        _reconcile(s)
        ex.heal_evals()
    jobs = _reconcile(s)[1].jobs
    from .eval.registry import coverage

    present, missing = (coverage(Path(paths.eval_root), list(s.plan.tasks), dict(s.ref.study.eval.folders))
                        if paths.eval_root else ([], {t: "(no eval_root)" for t in s.plan.tasks}))
    main_task = s.ref.study.eval.main_task
    data = StatusData(s.name, str(s.ledger.path), len(s.plan.tasks), list(present),
                      {k: str(v) for k, v in missing.items()}, state_filter=state, limit=limit)
    cells = []
    for kind, job in [("init", i) for i in s.plan.inits] + [("train", r) for r in s.plan.runs]:
        row = jobs.get(job.uid)
        cell = {"uid": job.uid, "kind": kind, "label": job.label, "state": row.state if row else "planned",
                "init": getattr(job, "init", getattr(job, "method", None)), "scale": getattr(job, "scale", None),
                "seed": job.seed, "epoch": row.epoch_reached if row else 0,
                "epochs": job.epochs if kind == "train" else s.ref.study.stage1.epochs,
                "attempts": row.attempts if row else 0, "reason": row.reason if row else None,
                "log": row.log_path if row else None}
        if kind == "train":
            cell["evals_planned"] = len(job.eval_epochs) * len(s.plan.tasks)
        cells.append(cell)
        data.summary[cell["state"]] = data.summary.get(cell["state"], 0) + 1
    data.cells_total = len(cells)
    matching = [c for c in cells if state is None or c["state"] == state]
    data.cells_matching = len(matching)
    shown = matching if limit is None or len(matching) <= limit else sorted(
        matching, key=lambda c: (_RELEVANCE.get(c["state"], 5), c["kind"] != "init", c["label"]))[:limit]
    uids = [c["uid"] for c in shown]
    last = last_main_metric(s.ledger, s.name, main_task, uids)
    init_2afc = init_val_2afc(s.ledger, [c["uid"] for c in shown if c["kind"] == "init"])
    counts = eval_counts(s.ledger, s.name, s.suite_version, uids)
    disk = disk_use(s.ledger, s.name, uids)
    from .executors.controller import live_controller
    from .executors.local_control import live_jobs

    data.controller = live_controller(s.layout.root)
    live = {}
    for row, role, note in live_jobs([jobs[c["uid"]] for c in shown if c["uid"] in jobs]):
        live.setdefault(row.uid, {})[role] = note.get("pid")
    for cell in shown:
        cell["disk_bytes"] = disk.get(cell["uid"], 0)
        cell["live"] = live.get(cell["uid"])  # {"job": pid, "eval": pid} of its live local processes
        if cell["kind"] == "train":
            epoch_value = last.get(cell["uid"])
            cell["main_metric"] = ({"task": main_task, "epoch": epoch_value[0], "value": epoch_value[1]}
                                   if epoch_value else None)
            cell["evals"] = counts.get(cell["uid"], {})
        elif cell["kind"] == "init":
            epoch_value = init_2afc.get(cell["uid"])
            cell["main_metric"] = ({"task": "nights", "metric": "val_2afc", "epoch": epoch_value[0],
                                    "value": epoch_value[1]} if epoch_value else None)
    data.cells = shown
    open_counts = eval_state_counts_by_job(s.ledger, s.name, s.suite_version)
    data.groups = _status_groups(cells, open_counts)
    for per in open_counts.values():
        for k, n in per.items():
            data.evals[k] = data.evals.get(k, 0) + n
    data.disk_bytes = disk_total(s.ledger, s.name)
    return data


def _status_groups(cells: list[dict[str, Any]], open_counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Cells counted per (kind, init, scale, epochs): states, range of epochs reached, open and failed evals."""
    groups: dict[tuple, dict[str, Any]] = {}
    for c in cells:
        key = (c["kind"], c["init"], c["scale"] or "", c["epochs"])
        g = groups.setdefault(key, {"kind": c["kind"], "init": c["init"], "scale": c["scale"], "epochs": c["epochs"],
                                    "cells": 0, "states": {}, "epoch_min": None, "epoch_max": None,
                                    "evals": {}})
        g["cells"] += 1
        g["states"][c["state"]] = g["states"].get(c["state"], 0) + 1
        g["epoch_min"] = c["epoch"] if g["epoch_min"] is None else min(g["epoch_min"], c["epoch"])
        g["epoch_max"] = c["epoch"] if g["epoch_max"] is None else max(g["epoch_max"], c["epoch"])
        for k, n in open_counts.get(c["uid"], {}).items():
            g["evals"][k] = g["evals"].get(k, 0) + n
    arms = ("random", "perceptual", "shuffled")
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "init", str(k[2]), k[3] or 0,
                                                             arms.index(k[1]) if k[1] in arms else 9, str(k[1])))]


def find_job(s: Session, key: str) -> dict[str, Any] | None:
    """A job by uid (or prefix) or label."""
    snap = snapshot(s.ledger, s.name, s.suite_version)
    for row in snap.jobs.values():
        if row.uid.startswith(key) or row.label == key:
            return row.__dict__
    return None
