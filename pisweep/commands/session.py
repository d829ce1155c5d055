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

from pisweep.commands.studyref import StudyRef, remember
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, record_study, set_eval_states, set_job_state
from pisweep.ledger.queries import (
    Snapshot,
    eval_tasks_at,
    eval_tasks_present,
    events_seen_counts,
    get_meta,
    job_folders,
    open_snapshot,
    set_meta,
    snapshot,
    weights_after,
)
from pisweep.study.datapaths import DataPaths, Preflight, preflight, resolve
from pisweep.study.layout import Layout
from pisweep.study.plan import Plan, make_plan
from pisweep.study.work import Work, next_work

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
    from pisweep.eval.registry import SUITE_VERSION

    return str(SUITE_VERSION)


def open_session(ref: StudyRef, on_wait: Callable[[str], None] | None = None, read: bool = False,
                 plan: Plan | None = None) -> Session:
    """The study's plan (``plan`` if made already) and ledger. ``read``: for the read-only commands; the ledger must
    exist, and is opened read-only when this process cannot write it (then nothing is ingested: the ledger is shown
    as it is)."""
    plan = plan or make_plan(ref.study, ref.identity_version)
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
    return reconcile_with_snapshot(s)[0]


def reconcile_with_snapshot(s: Session) -> tuple[Work, Snapshot]:
    """:func:`reconcile`, and the snapshot it decided from (status shows it)."""
    from pisweep.executors.local import close_lost_attempts

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
    from pisweep.job.paths import EVENTS

    seen = events_seen_counts(s.ledger, s.name)
    for uid, folder in job_folders(s.ledger, s.name).items():
        try:
            names = os.listdir(os.path.join(folder, EVENTS))  # not pathlib: 10 000 folders
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
    pf = preflight(ref.study, paths)
    pf.raise_if_problems(ref.study.name)
    return Prepared(paths, pf)


def record(s: Session, force: bool = False) -> None:
    """Record the study and its plan in the ledger and the study index."""
    record_study(s.ledger, s.ref.study_json, s.ref.spec_path, s.plan, s.layout, force=force)
    remember(s.name, s.ledger.path, s.ref.spec_path)


def check_disk(ref: StudyRef, plan: Plan) -> None:
    """Refuse (PreflightError) when the output root has less free space than what is left of the plan will write;
    before anything is written there."""
    from pisweep.errors import PreflightError
    from pisweep.ledger.queries import jobs_of
    from pisweep.study.diskplan import disk_needed, free_bytes

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
    from pisweep.executors.controller import hold_controller
    from pisweep.ledger.owner import claim_output_root

    with hold_controller(ref.study.output_root, ref.study.name, purpose):
        claim_output_root(ref.study.output_root, ref.ledger_path)
        yield


def run_local(s: Session, prepared: Prepared, reporter, stop=None) -> RunResult:
    """Run what is left of the study on this machine; call inside :func:`controlling`.

    ``stop`` (executors.stopping.StopRequest) says which signals and streams end the run; by default SIGINT,
    SIGTERM and SIGHUP."""
    from pisweep.executors.local import LocalExecutor, remove_interrupted_writes
    from pisweep.executors.schedlog import SchedulerLog, scheduler_log_path

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
    from pisweep.errors import SpecError
    from pisweep.executors.profile import load_profile
    from pisweep.executors.slurm import SlurmExecutor

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
    from pisweep.errors import StudyNotFound
    from pisweep.executors.local_control import cancel_local

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


def find_job(s: Session, key: str) -> dict[str, Any] | None:
    """A job by uid (or prefix) or label."""
    snap = snapshot(s.ledger, s.name, s.suite_version)
    for row in snap.jobs.values():
        if row.uid.startswith(key) or row.label == key:
            return row.__dict__
    return None
