"""The local executor: runs the study's job graph on this machine, the embedded default.

Each job is a child process (``python -m pisweep.jobs JOB.json``) in its own session, so Ctrl-C reaches only
pisweep, which then asks every child to stop (SIGTERM: save and exit), waits, and ingests: the ledger stays
consistent and ``pisweep resume`` goes on from the saved state. Evals are queued as soon as a checkpoint event
appears, and all due evals of one run go to one warm process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..datapaths import DataPaths
from ..events import write_event
from ..jobs import JobFile
from ..ledger.db import Ledger
from ..ledger.ingest import ingest, set_eval_states, set_job_state
from ..ledger.queries import snapshot
from ..plan import Layout, Plan
from ..spec import Study
from ..work import eval_job_file, init_job_file, job_file_path, next_work, train_job_file


class Reporter(Protocol):
    def started(self, kind: str, label: str, log: Path) -> None: ...
    def finished(self, kind: str, label: str, outcome: str, detail: str | None) -> None: ...
    def tick(self, state: dict[str, Any]) -> None: ...


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
    interrupted: bool = False


class LocalExecutor:
    name = "local"

    def __init__(self, ledger: Ledger, study: Study, study_json: dict[str, Any], plan: Plan, paths: DataPaths,
                 layout: Layout, suite_version: str, reporter: Reporter, poll_s: float = 0.5,
                 threads_per_job: int | None = None):
        self.ledger, self.study, self.study_json, self.plan = ledger, study, study_json, plan
        self.paths, self.layout, self.suite_version, self.reporter = paths, layout, suite_version, reporter
        self.poll_s = poll_s
        self.max_parallel = study.executor.max_parallel
        self.threads = threads_per_job or max(1, (os.cpu_count() or 1) // self.max_parallel)
        self.children: dict[str, Child] = {}
        self.tried_evals: set[tuple[str, int, str]] = set()
        self.cache_dir = study.eval.cache_dir

    # -- main loop ---------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        out = Outcome()
        tasks = set(self.plan.tasks)
        try:
            while True:
                self._reap(out)  # before ingesting: a job that just exited has written all its events
                ingest(self.ledger, self.plan.study)
                snap = snapshot(self.ledger, self.plan.study, self.suite_version)
                work = next_work(self.plan, snap, self.study.executor.max_failures)
                for uid, reason in work.blocked.items():
                    if snap.jobs[uid].state != "blocked":
                        set_job_state(self.ledger, uid, "blocked", reason)
                self._launch(work)
                self.reporter.tick({
                    "running": [c.label for c in self.children.values()],
                    "jobs_done": sum(j.state == "completed" for j in snap.jobs.values()),
                    "evals_done": sum(v in ("done", "missing_data") for k, v in snap.evals.items() if k[2] in tasks)})
                if not self.children and not self._runnable(work):
                    return out
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            out.interrupted = True
            self.stop_all()
            self._reap(out)
            ingest(self.ledger, self.plan.study)
            return out

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
            set_eval_states(self.ledger, [(run_uid, e, t) for e, t in items], "queued", self.suite_version)
            self.tried_evals.update((run_uid, e, t) for e, t in items)
            run = self.plan.run_by_uid()[run_uid]
            self._spawn(eval_job_file(run_uid, items, self.study_json, self.paths, self.layout, self.cache_dir),
                        f"eval {run.label}", items)
        for init in work.inits:
            if f"{init.uid}:init" not in busy and self._slot():
                self._spawn(init_job_file(init, self.study_json, self.paths, self.layout), init.label)
        for run in work.runs:
            if f"{run.uid}:train" not in busy and self._slot():
                self._spawn(train_job_file(run, self.study_json, self.paths, self.layout), run.label)

    def _slot(self) -> bool:
        return len(self.children) < self.max_parallel

    def _spawn(self, job: JobFile, label: str, evals: list[tuple[int, str]] | None = None) -> None:
        job_id = f"local-{uuid.uuid4().hex[:8]}"
        folder = Path(job.folder)
        path = job.write(job_file_path(folder, job.kind, job_id))
        log = folder / "logs" / f"{job.kind}-{job_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PISWEEP_JOB_ID=job_id, PISWEEP_EXECUTOR="local", PISWEEP_THREADS=str(self.threads),
                   OMP_NUM_THREADS=str(self.threads), WANDB_SILENT="true")
        env.setdefault("WANDB_MODE", self.study.wandb.mode)
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pisweep.jobs", str(path)], stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=folder.parent)
        if job.kind != "eval":
            set_job_state(self.ledger, job.uid, "queued", None, executor="local", scheduler_id=job_id,
                          log_path=str(log))
        key = f"{job.uid}:{job.kind}"
        self.children[key] = Child(job.kind, job.uid, label, proc, log, job_id, folder, evals or [])
        self.reporter.started(job.kind, label, log)

    def _reap(self, out: Outcome) -> None:
        for key, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[key]
            if code == 0:
                outcome = "completed"
                out.completed += child.kind != "eval"
                out.evals += len(child.evals) if child.kind == "eval" else 0
            elif code == 3:
                outcome = "stopped"
                out.stopped += 1
            else:
                outcome = "failed"
                out.failed += 1
                self._record_crash(child, code)
            self.reporter.finished(child.kind, child.label, outcome, None if code == 0 else f"see {child.log}")

    def _record_crash(self, child: Child, code: int) -> None:
        """A child that died without reporting (killed, out of memory) gets its end recorded for it."""
        if child.kind == "eval":
            return
        ended = any(p.name.endswith("attempt_ended.json") and f"-{child.proc.pid}-" in p.name
                    for p in (child.folder / "events").glob("*.json"))
        if not ended:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            write_event(child.folder, child.uid, "attempt_ended", {"job_id": child.job_id, "restart": 0},
                        outcome="failed", reason=f"process {how} without reporting; see {child.log}")

    def stop_all(self, grace_s: float = 60.0) -> None:
        """Ask every child to save and stop, wait for them, then kill what is left."""
        for child in self.children.values():
            try:
                os.killpg(child.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        for child in self.children.values():
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
