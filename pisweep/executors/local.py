"""The local executor: runs the study's job graph on this machine, the embedded default.

Each job is a child process (``python -m pisweep.runner JOB.json``) in its own session, so a terminal's signals
reach only pisweep. SIGINT, SIGTERM, SIGHUP and a closed stdout all end the scheduler the same way: it asks every
child to stop (SIGTERM: save and exit), waits (bounded, then SIGKILL), records the attempts as stopped, writes one
line saying so (stderr when open, always the scheduler's log) and exits non-zero; ``pisweep resume`` goes on from
the saved states. Should the scheduler die anyway (kill -9), its jobs see it and stop the same way.

A child holds its folder's liveness lock (job/liveness.py), taken here before it starts: a job whose lock is held
(an earlier controller's job still saving) is never started twice; the scheduler waits until it has ended. Evals
are queued as soon as a checkpoint event appears, and all due evals of one run go to one warm process.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pisweep.atomic import remove_stale_temps
from pisweep.executors.base import eval_job_file, init_job_file, cell_job_file
from pisweep.executors.controller import live_controller
from pisweep.executors.stopping import StopRequest
from pisweep.job.contract import JobFile, job_file_path
from pisweep.job.events import attempt_ended, write_event
from pisweep.job.liveness import ENV_CONTROLLER_PID, holder, job_lock_path, take_cancel_marker, try_hold
from pisweep.job.paths import JobPaths
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, set_eval_states, set_job_state
from pisweep.ledger.queries import jobs_of, open_local_attempts, snapshot
from pisweep.states import EVAL_SETTLED, IN_FLIGHT
from pisweep.study.datapaths import DataPaths
from pisweep.study.layout import Layout
from pisweep.study.plan import Plan
from pisweep.study.spec import Study
from pisweep.study.work import next_work

STOP_GRACE_S = 60.0  # how long stopped children get to save before they are killed


class Reporter(Protocol):
    def started(self, kind: str, label: str, log: Path) -> None: ...
    def finished(self, kind: str, label: str, outcome: str, detail: str | None) -> None: ...
    def tick(self, state: dict[str, Any]) -> None: ...


def role_of(kind: str) -> str:
    """Which liveness lock of a job folder a job of this kind holds: a run's eval job runs beside its training."""
    return "eval" if kind == "eval" else "job"


@dataclass
class Child:
    kind: str
    uid: str
    label: str
    proc: subprocess.Popen
    log: Path
    job_id: str
    folder: Path
    evals: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Outcome:
    completed: int = 0
    failed: int = 0
    stopped: int = 0
    evals: int = 0
    evals_jobs: int = 0  # eval processes that ended well
    interrupted: bool = False
    stop_reason: str | None = None  # SIGINT, SIGTERM, SIGHUP, "stdout closed"
    exit_code: int = 0  # when interrupted: 128 + the signal's number
    message: str | None = None  # the one line that says what the stop did and what continues


class LocalExecutor:
    name = "local"

    def __init__(self, ledger: Ledger, study: Study, study_json: dict[str, Any], plan: Plan, paths: DataPaths,
                 layout: Layout, suite_version: str, reporter: Reporter, poll_s: float = 0.5,
                 threads_per_job: int | None = None, stop: StopRequest | None = None, log: Any = None,
                 grace_s: float = STOP_GRACE_S):
        self.ledger, self.study, self.study_json, self.plan = ledger, study, study_json, plan
        self.paths, self.layout, self.suite_version, self.reporter = paths, layout, suite_version, reporter
        self.poll_s = poll_s
        self.max_parallel = study.executor.max_parallel
        self.threads = threads_per_job or max(1, (os.cpu_count() or 1) // self.max_parallel)
        self.children: dict[str, Child] = {}
        self.tried_evals: set[tuple[str, int, str]] = set()
        self.cache_dir = study.eval.cache_dir
        self.stop = stop or StopRequest(watch_stdout=False)
        self.log = log
        self.grace_s = grace_s
        self.stopping = False
        self.foreign: dict[str, dict[str, Any]] = {}  # key -> holder note of a live job this scheduler did not start
        self.t0 = time.time()

    # -- reporting: the terminal may be gone (SIGHUP, closed pipe); the scheduler's log is always written --------
    def _say(self, method: str, *args: Any) -> None:
        for sink in (self.log, self.reporter):
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except (OSError, ValueError):  # a hung-up terminal (EIO) or a closed stream: go on without it
                if sink is self.reporter:
                    self.reporter = None

    # -- main loop ---------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        with self.stop:
            return self._run()

    def _run(self) -> Outcome:
        out = Outcome()
        tasks = set(self.plan.tasks)
        try:
            while True:
                if self.stop.requested():
                    return self._stop(out, self.stop.reason or "a stop request", self.stop.exit_code)
                self._reap(out)  # before ingesting: a job that just exited has written all its events
                ingest(self.ledger, self.plan.study)
                snap = snapshot(self.ledger, self.plan.study, self.suite_version)
                work = self._drop_cancelled(next_work(self.plan, snap, self.study.executor.max_failures), snap)
                for uid, reason in work.blocked.items():
                    if snap.jobs[uid].state != "blocked":
                        set_job_state(self.ledger, uid, "blocked", reason)
                self._launch(work)
                self._say("tick", {
                    "running": [c.label for c in self.children.values()],
                    "jobs_done": sum(j.state == "completed" for j in snap.jobs.values()),
                    "evals_done": sum(v in EVAL_SETTLED for k, v in snap.evals.items() if k[2] in tasks)})
                if not self.children and not self._runnable(work):
                    return out
                time.sleep(self.poll_s)
        except KeyboardInterrupt:  # SIGINT outside the handler's reach (e.g. while it was being installed)
            return self._stop(out, "SIGINT", 130)
        except BaseException as e:  # the scheduler itself failed (e.g. a folder turned read-only): jobs save first
            if self.log is not None:
                self.log.line(f"scheduler failed ({type(e).__name__}: {e}); asking its jobs to save and stop")
            self.stopping = True
            self.stop_all(self.grace_s)
            raise

    def _stop(self, out: Outcome, reason: str, code: int) -> Outcome:
        """Ask every child to save and stop, wait for them, record what happened, and say it in one line."""
        self.stopping = True
        asked = len(self.children)
        before = (out.completed + out.evals_jobs + out.stopped, out.failed)
        killed = self.stop_all(self.grace_s)
        self._reap(out)
        ingest(self.ledger, self.plan.study)
        out.interrupted, out.stop_reason, out.exit_code = True, reason, code
        saved = out.completed + out.evals_jobs + out.stopped - before[0] - killed  # stopped counts the killed too
        failed = out.failed - before[1]
        what = (f"asked {asked} job{'s' * (asked != 1)} to save and stop"
                + (f"; {saved} saved" if asked else "")
                + (f"; {killed} did not within {self.grace_s:.0f}s and were killed" if killed else "")
                + (f"; {failed} failed while stopping (see their logs)" if failed > 0 else ""))
        out.message = f"stopped by {reason}: {what}; continue with `pisweep resume {self.plan.study}`"
        if self.log is not None:
            self.log.line(out.message)
        return out

    def _drop_cancelled(self, work, snap):
        """Cells cancelled (``pisweep cancel STUDY JOB``) while this scheduler runs are not run again by it, nor
        are the runs that wait for a cancelled init; a later submit or resume runs them."""
        gone = {u for u, row in snap.jobs.items() if row.state == "cancelled" and (row.updated_at or 0) >= self.t0}
        if gone:
            work.inits = [i for i in work.inits if i.uid not in gone]
            work.inits_waiting = [i for i in work.inits_waiting if i.uid not in gone and i.after not in gone]
            work.runs = [r for r in work.runs if r.uid not in gone and r.depends_on not in gone]
            work.waiting = [r for r in work.waiting if r.uid not in gone and r.depends_on not in gone]
        return work

    def _runnable(self, work) -> bool:
        fresh_evals = any((uid, e, t) not in self.tried_evals for uid, items in work.evals.items() for e, t in items)
        return bool(work.inits or work.runs or fresh_evals)

    def _launch(self, work) -> None:
        busy = {c.uid + ":" + c.kind for c in self.children.values()}
        # Evals first: they are short, and their results are what people wait for.
        for run_uid, items in work.evals.items():
            items = [(e, t) for e, t in items if (run_uid, e, t) not in self.tried_evals]
            if not items or f"{run_uid}:eval" in busy or not self._slot():
                continue
            run = self.plan.run_by_uid()[run_uid]
            if self._spawn(eval_job_file(run_uid, items, self.study_json, self.paths, self.layout, self.cache_dir),
                           f"eval {run.label}", items):
                set_eval_states(self.ledger, [(run_uid, e, t) for e, t in items], "queued", self.suite_version)
                self.tried_evals.update((run_uid, e, t) for e, t in items)
        for init in work.inits:
            if f"{init.uid}:init" not in busy and self._slot():
                self._spawn(init_job_file(init, self.study_json, self.paths, self.layout), init.label)
        for run in work.runs:
            if f"{run.uid}:{run.kind}" not in busy and self._slot():
                self._spawn(cell_job_file(run, self.study_json, self.paths, self.layout), run.label)

    def _slot(self) -> bool:
        return len(self.children) < self.max_parallel

    def _spawn(self, job: JobFile, label: str, evals: list[tuple[int, str]] | None = None) -> bool:
        """Start the job with its liveness lock taken first and passed on; False if a live process holds it."""
        folder = Path(job.folder)
        key = f"{job.uid}:{job.kind}"
        held = try_hold(job_lock_path(folder, role_of(job.kind)), uid=job.uid, kind=job.kind, controller=os.getpid())
        if held is None:
            if key not in self.foreign:
                self.foreign[key] = holder(job_lock_path(folder, role_of(job.kind))) or {}
                self._say("waiting", job.kind, label, self.foreign[key])
            return False
        self.foreign.pop(key, None)
        job_id = f"local-{uuid.uuid4().hex[:8]}"
        try:
            path = job.write(job_file_path(folder, job.kind, job_id))
            log = JobPaths(folder).log(job.kind, job_id)
            log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, PISWEEP_JOB_ID=job_id, PISWEEP_EXECUTOR="local",
                       PISWEEP_THREADS=str(self.threads), OMP_NUM_THREADS=str(self.threads), WANDB_SILENT="true")
            env[ENV_CONTROLLER_PID] = str(os.getpid())
            env.setdefault("WANDB_MODE", self.study.wandb.mode)
            with open(log, "ab") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "pisweep.runner", str(path)], stdout=fh,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        cwd=folder.parent, pass_fds=(held.fd,))
            held.note(pid=proc.pid, uid=job.uid, kind=job.kind, job_id=job_id, controller=os.getpid())
        finally:
            held.release()  # the child holds the lock now (or, had the start failed, nobody does)
        if job.kind != "eval":
            set_job_state(self.ledger, job.uid, "queued", None, executor="local", scheduler_id=job_id,
                          log_path=str(log))
        self.children[key] = Child(job.kind, job.uid, label, proc, log, job_id, folder, evals or [])
        self._say("started", job.kind, label, log)
        return True

    def _reap(self, out: Outcome) -> None:
        for key, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[key]
            if code == 0:
                outcome = "completed"
                out.completed += child.kind != "eval"
                out.evals_jobs += child.kind == "eval"
                out.evals += len(child.evals) if child.kind == "eval" else 0
            elif code == 3:
                outcome = "stopped"
                out.stopped += 1
            else:
                outcome = self._record_crash(child, code)
                out.failed += outcome == "failed"
                out.stopped += outcome != "failed"
            self._say("finished", child.kind, child.label, outcome, None if code == 0 else f"see {child.log}")

    def _record_crash(self, child: Child, code: int) -> str:
        """A child that died without reporting (killed, out of memory) gets its end recorded for it; returns the
        outcome: ``failed``, or ``vanished`` (killed by our own escalation) or ``cancelled`` (a `pisweep cancel`
        whose signal came before the job could take it: its cancel marker is there), neither the job's failure."""
        escalated = self.stopping and code == -signal.SIGKILL  # our own escalation: not the job's failure
        if child.kind == "eval":  # an eval job records no attempt; its evals stay queued for the next scheduler
            return "vanished" if escalated else "failed"
        if attempt_ended(child.folder, {"job_id": child.job_id, "restart": 0}):  # by the job, or one of its ranks
            return "failed"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if escalated:
            outcome, reason = "vanished", (f"did not save within {self.grace_s:.0f}s of the stop request and was "
                                          f"killed; it resumes from its last saved state")
        elif code < 0 and take_cancel_marker(child.folder):
            outcome, reason = "cancelled", f"cancelled by `pisweep cancel` before it had started ({how})"
        else:
            outcome, reason = "failed", f"process {how} without reporting; see {child.log}"
        write_event(child.folder, child.uid, "attempt_ended", {"job_id": child.job_id, "restart": 0},
                    outcome=outcome, reason=reason)
        return outcome

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> int:
        """Ask every child to save and stop, wait for them, then kill what is left; return how many were killed."""
        for child in self.children.values():
            try:
                os.killpg(child.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        killed = 0
        for child in self.children.values():
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                killed += 1
                try:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.proc.wait()
        return killed


# -- after a controller that did not stop cleanly (kill -9 of it and its jobs, a power cut) ----------------------
def close_lost_attempts(ledger: Ledger, study: str) -> int:
    """Close the attempts of local jobs whose process is gone without recording its end, as ``vanished`` with the
    reason "controller lost" (work since their last save is redone; it does not count against the retry budget);
    local jobs left ``queued``/``running`` with no live process become ``stopped``.

    A live job holds its folder's lock, so only dead ones are touched, and only attempts of this host (a lock seen
    over a network file system from another host proves nothing); the end is written as an event in the job's
    folder (a rebuilt ledger finds it too). Returns how many attempts were closed."""
    here = socket.gethostname()
    dead = [a for a in open_local_attempts(ledger, study)
            if a.host in (None, here) and holder(job_lock_path(a.folder, "job")) is None]
    closed = 0
    if dead:
        ingest(ledger, study)  # an attempt that ended on its own just before its lock was seen free: apply its end
        still = {(a.uid, a.job_id, a.restart) for a in open_local_attempts(ledger, study)}
        for a in dead:
            if (a.uid, a.job_id, a.restart) in still:
                write_event(Path(a.folder), a.uid, "attempt_ended", {"job_id": a.job_id, "restart": a.restart},
                            outcome="vanished", step=a.step, reason="controller lost: the attempt's process ended "
                            "without recording its end (it and its controller were killed); it resumes from its "
                            "last saved state")
                closed += 1
        ingest(ledger, study)
    attempted = {a.uid for a in open_local_attempts(ledger, study)}
    rows = [r for r in jobs_of(ledger, study).values()
            if r.executor == "local" and r.state in IN_FLIGHT and r.uid not in attempted]
    if rows and live_controller(Path(rows[0].folder).parent.parent) is None:  # <root>/runs/<uid>: no scheduler
        for row in rows:
            if holder(job_lock_path(row.folder, "job")) is None:
                set_job_state(ledger, row.uid, "stopped", "controller lost before the job recorded its start")
    return closed


def remove_interrupted_writes(ledger: Ledger, study: str) -> int:
    """Remove temp files of interrupted writes in the study's job folders that no live process uses."""
    n = 0
    for row in jobs_of(ledger, study).values():
        if row.executor in (None, "local") and all(holder(job_lock_path(row.folder, r)) is None
                                                   for r in ("job", "eval")):
            n += len(remove_stale_temps(Path(row.folder)))
    return n
