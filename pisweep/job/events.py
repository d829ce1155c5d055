"""Events: how jobs report to the ledger without ever opening it.

A job writes ``<job folder>/events/<time_ns>-<pid>-<kind>.json`` atomically (temp + fsync + rename); any pisweep
command ingests the new ones under the ledger lock. SQLite on a network file system cannot take hundreds of
writers, a folder of small files can, and the ledger can always be rebuilt from the job folders.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from pisweep.atomic import atomic_write_json
from pisweep.job.audit import audit
from pisweep.job.paths import JobPaths

# The kinds a job may write, and the fields each carries (besides job, kind, time, attempt).
KINDS = {
    "attempt_started": "executor, host, pid, world_size, nodes",
    "attempt_ended": "outcome (completed|preempted|stopped|timeout|failed|cancelled|vanished), reason, step, epoch",
    "epoch_done": "epoch, step, metrics {name: value}",
    "checkpoint": "epoch, kind (weights|resume|init), path, sha256, bytes, step",
    "init_selected": "epoch, path, val_loss",
    "eval_state": "epoch, task, state (queued|running|done|failed|missing_data), reason, path, metrics, main_metric, "
                  "scheduler_id (queued: the SLURM job submitted to run it)",
}


def attempt_from_env() -> dict[str, Any]:
    """The scheduler's identity of this attempt: (job id, restart count)."""
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job_id and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("PISWEEP_JOB_ID") or f"local-{os.getpid()}"
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return {"job_id": job_id, "restart": restart}


def write_event(job_folder: Path, job_uid: str, kind: str, attempt: dict[str, Any] | None = None, /,
                **data: Any) -> Path:
    """Write one event; ``data`` may itself hold a field named ``kind`` (e.g. a checkpoint's kind)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    now = time.time_ns()
    name = f"{now:020d}-{os.getpid()}-{kind}.json"
    path = JobPaths(job_folder).events / name
    attempt = attempt if attempt is not None else attempt_from_env()
    atomic_write_json(path, {"job": job_uid, "kind": kind, "time": now / 1e9, "attempt": attempt, "data": data})
    audit(job_folder, kind, attempt, data)
    return path


def attempt_ended(job_folder: Path, attempt: dict[str, Any]) -> bool:
    """Whether some process of ``attempt`` (any rank, the launcher) already recorded its end."""
    for path in JobPaths(job_folder).events.glob("*-attempt_ended.json"):
        try:
            if json.loads(path.read_text()).get("attempt") == attempt:
                return True
        except (OSError, ValueError):
            continue
    return False


def read_events(job_folder: Path, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[tuple[str, dict]]:
    """Yield ``(name, event)`` in time order, skipping names already seen and temp files."""
    folder = JobPaths(job_folder).events
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return
    for name in names:
        if name in skip:
            continue
        try:
            yield name, json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a complete event is never unreadable; skip anything odd and retry next time
