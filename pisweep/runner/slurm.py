"""What runs inside a SLURM job that pisweep submitted (through submitit).

One owner for signals: submitit installs handlers that checkpoint and requeue inside the handler; we replace them
first thing, so SIGUSR2/SIGTERM only set the stop flag, the training loop saves at a step boundary, and this
module is the one place that requeues: preemptions always, time limits up to a cap, failures within the study's
retry budget. A train job also submits the eval job of each epoch checkpoint it writes, so evals are queued with
no pisweep command running.

A train job of several ranks (nodes x max(1, GPUs per node) > 1) runs one SLURM task per node; each task runs the
node launcher (runner/launch.py), which starts the node's ranks with torchrun semantics (rendezvous on the first
host, port derived from the job id). The ranks get this task as JSON (PISWEEP_SLURM_TASK) for the stop outcome
and the eval submissions of rank 0; the requeue decision stays here, on node 0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisweep.atomic import atomic_write_json
from pisweep.eval.registry import SUITE_VERSION
from pisweep.job.contract import ENV_SLURM_TASK, EXIT_FAILED, EXIT_STOPPED, JobFile, job_file_path
from pisweep.job.events import write_event
from pisweep.job.paths import JobPaths
from pisweep.runner.launch import launch_job, slurm_spec
from pisweep.runner.run import run_job_file

log = logging.getLogger("pisweep.slurm")


class JobFailed(RuntimeError):
    """Raised at the end of a failed job that is not requeued: submitit then exits non-zero."""


@dataclass
class SlurmTask:
    """The picklable callable submitit runs. It carries only plain data (paths, numbers, dicts)."""

    job_file: str
    max_failures: int
    max_timeouts: int
    signal_delay_s: int
    eval_submit: dict[str, Any] | None = None  # how to submit per-epoch eval jobs (train and posthoc jobs)
    started: float = field(default=0.0, repr=False)

    def __call__(self) -> int:
        self.started = time.time()
        early: list[int] = []  # signals before the job's own handlers: replayed by run_job_file / the launcher
        for sig in (signal.SIGUSR2, signal.SIGTERM):  # replace submitit's handlers before anything else
            signal.signal(sig, lambda s, f: early.append(s))

        job = JobFile.read(Path(self.job_file))
        per_node = ranks_per_node(job)
        if job.kind == "train" and _tasks() * per_node > 1:
            code = self._launch(job, per_node, early)
        else:
            hooks = [self._eval_hook(job)] if self.eval_submit and job.kind in ("train", "posthoc") else []
            code = run_job_file(Path(self.job_file), stop_outcome=self.stop_outcome, hooks=hooks,
                                early_signals=early)
        requeued = False
        if job.kind != "eval" and code in (EXIT_STOPPED, EXIT_FAILED) and _rank() == 0:
            requeued = self._maybe_requeue(job, code == EXIT_STOPPED)
        if code == EXIT_FAILED and not requeued:
            # a non-zero exit, so SLURM records FAILED and afterok dependents are never started
            raise JobFailed(f"job {job.uid} ({job.kind}) failed; see the traceback above and its events")
        return code

    def _launch(self, job, per_node: int, early: list[int]) -> int:
        """This node's launcher; its ranks act for this task (stop outcome, eval submissions of rank 0)."""

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stdout, force=True)
        spec = slurm_spec(per_node)
        tag = f"{os.environ.get('SLURM_JOB_ID', 'x')}-{os.environ.get('SLURM_RESTART_COUNT', '0')}-{spec.node_rank}"
        task_file = JobPaths(job.folder).slurm_task_file(tag)
        atomic_write_json(task_file, dataclasses.asdict(self))
        result = launch_job(Path(self.job_file), spec, {ENV_SLURM_TASK: str(task_file)}, early=early)
        return result.code

    # -- decisions ------------------------------------------------------------------------------------------------
    def stop_outcome(self) -> str:
        """A stop near the time limit is a timeout; any other is a preemption (SLURM sends USR2 for both)."""
        limit = _time_limit_s()
        if limit is None:
            return "preempted"
        elapsed = time.time() - self.started
        return "timeout" if elapsed >= limit - self.signal_delay_s - 60 else "preempted"

    def _maybe_requeue(self, job, stopped: bool) -> bool:
        ended = _outcomes(Path(job.folder))
        last = ended[-1] if ended else None
        last_end = _last_ended(Path(job.folder))
        if "SIGTERM" in str(last_end.get("stop_signal") or "") or (stopped and "SIGTERM" in _last_reason(
                Path(job.folder))):
            # SIGTERM alone is scancel (or SLURM's own preemption, which requeues the job itself in REQUEUE
            # mode): the state is saved; requeueing here would make a job that a person cancelled come back. A job
            # that failed while it was being stopped so (scancel also kills its helpers, e.g. wandb's service)
            # is not requeued either.
            log.info("stopped by SIGTERM: not requeued by pisweep")
            return False
        if stopped and last == "preempted":
            why = "preempted"
        elif stopped and last == "timeout" and ended.count("timeout") <= self.max_timeouts:
            why = f"timeout {ended.count('timeout')}/{self.max_timeouts}"
        elif not stopped and ended.count("failed") <= self.max_failures and last_end.get("retry", True):
            why = f"failure {ended.count('failed')}/{self.max_failures + 1}"
        else:
            log.info("not requeued: %s (outcomes so far: %s)", last, ended)
            return False
        target = _requeue_target()
        log.info("requeueing %s (%s)", target, why)
        return subprocess.run(["scontrol", "requeue", target], check=False, timeout=60).returncode == 0

    # -- eval submission --------------------------------------------------------------------------------------------
    def _eval_hook(self, job):
        def hook(kind: str, data: dict[str, Any]) -> None:
            if kind != "checkpoint" or data.get("kind") != "weights":
                return
            epoch = int(data["epoch"])
            if epoch not in self.eval_submit["epochs"]:
                return
            try:
                job_id = submit_eval_from_job(job, epoch, self.eval_submit)
            except Exception as e:  # noqa: BLE001 - training goes on; submit/resume heal a lost submission
                log.warning("could not submit the eval job of epoch %d: %s", epoch, e)
                return
            for task in self.eval_submit["tasks"]:
                write_event(Path(job.folder), job.uid, "eval_state", None, epoch=epoch, task=task,
                            suite_version=SUITE_VERSION, state="queued", reason=f"slurm job {job_id}",
                            scheduler_id=job_id)
        return hook


def rank_callbacks(task_file: Path, job) -> tuple:
    """(stop_outcome, hooks) for a rank started by this task's launcher (see pisweep.runner.entry.main)."""
    task = SlurmTask(**json.loads(Path(task_file).read_text()))
    hooks = [task._eval_hook(job)] if task.eval_submit and job.kind == "train" else []
    return task.stop_outcome, hooks


def ranks_per_node(job) -> int:
    """Ranks per node of this job: its GPUs on this node (SLURM's count; the study's shape when SLURM gives none),
    and one on CPU-only nodes."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = os.environ.get(key, "").strip()
        if value:
            try:
                return max(1, int(value.split("(")[0].rsplit(":", 1)[-1]))
            except ValueError:
                continue
    train = (job.study.get("executor") or {}).get(job.kind) or {}
    return max(1, int(train.get("gpus_per_node") or 0))


def _tasks() -> int:
    """SLURM tasks of this job step: one per node (executors/slurm.py submits ntasks_per_node=1)."""
    return int(os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NNODES") or 1)


def _rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


def _requeue_target() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def _time_limit_s() -> float | None:
    """The job's time limit from scontrol (SLURM does not put it in the environment)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for token in out.split():
        if token.startswith("TimeLimit="):
            return _duration(token.split("=", 1)[1])
    return None


def _duration(text: str) -> float | None:
    """SLURM's [days-]hours:minutes:seconds (or minutes) as seconds."""
    if text in ("UNLIMITED", "Partition_Limit", "NONE"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def _last_ended(folder: Path) -> dict[str, Any]:
    """The data of this job's last attempt_ended event ({} if none)."""
    ended = sorted(JobPaths(folder).events.glob("*-attempt_ended.json"))
    try:
        return dict(json.loads(ended[-1].read_text())["data"]) if ended else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _last_reason(folder: Path) -> str:
    return str(_last_ended(folder).get("reason") or "")


def _outcomes(folder: Path) -> list[str]:
    """The outcomes of this job's attempts so far, from its own events (jobs never read the ledger)."""
    out = []
    for path in sorted(JobPaths(folder).events.glob("*-attempt_ended.json")):
        try:
            out.append(json.loads(path.read_text())["data"]["outcome"])
        except (OSError, ValueError, KeyError):
            continue
    return out


# -- submitting from inside a job -----------------------------------------------------------------------------------
def make_executor(folder: Path, params: dict[str, Any]):
    """A submitit SLURM executor with these parameters (the submit side and a train job's eval submissions)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=str(folder), python=sys.executable)
    ex.update_parameters(**params)
    return ex


def submit_eval_from_job(job: JobFile, epoch: int, spec: dict[str, Any]) -> str:
    """Called inside a train job when an epoch checkpoint is complete: submit that epoch's eval job."""
    jf = JobFile("eval", job.uid, job.folder, spec["study_json"],
                 {"epochs": [epoch], "tasks": spec["tasks"], "eval_root": spec["eval_root"], "nights": spec["nights"],
                  "cache_dir": spec["cache_dir"]})
    path = jf.write(job_file_path(job.folder, "eval", f"slurm-e{epoch}-{time.time_ns()}"))
    from submitit.helpers import clean_env

    # sbatch passes our environment on: without this, an eval submitted from an array element inherits
    # SLURM_ARRAY_JOB_ID/TASK_ID (submitit then waits for the parent's pickle and the job dies, submitit #1782),
    # CPU binding and memory forms sbatch may reject, and this job's own identity (attempt, launcher, task file).
    with clean_env(extra_names=IN_JOB_ENV):
        submitted = make_executor(Path(spec["folder"]), spec["params"]).submit(
            SlurmTask(str(path), 0, 0, spec["signal_delay_s"]))
    return str(submitted.job_id)


#: What identifies the job that runs now (its attempt, its launcher, its threads): never inherited by a job it
#: submits. (SLURM_*, SRUN_*, SBATCH_*, SUBMITIT_* and torchrun's rank variables go too: clean_env.)
IN_JOB_ENV = ("PISWEEP_JOB_ID", "PISWEEP_LAUNCH_DIR", "PISWEEP_SLURM_TASK",
              "PISWEEP_CONTROLLER_PID", "PISWEEP_THREADS")
