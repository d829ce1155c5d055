"""Reading SLURM's accounting: one batched sacct call for every job of a study, parsed by pure functions."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from pisweep.errors import ExecutorError

FIELDS = ("JobID", "State", "ExitCode", "Reason", "NodeList", "Start", "End")

# SLURM state -> pisweep state. A requeued job shows PENDING/REQUEUED again with the same id.
STATE_MAP = {
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "queued", "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
    "SIGNALING": "running", "STAGE_OUT": "running", "RESIZING": "running", "SUSPENDED": "running",
    "COMPLETED": "completed", "FAILED": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "vanished",
    "NODE_FAIL": "vanished", "DEADLINE": "timeout", "TIMEOUT": "timeout", "PREEMPTED": "preempted",
    "CANCELLED": "cancelled", "REVOKED": "cancelled",
}


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    slurm_state: str
    state: str  # pisweep's name for it
    exit_code: str
    reason: str
    nodes: str
    start: str
    end: str


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Parse ``sacct --parsable2 --noheader -o FIELDS``; only job allocations (no .batch/.extern steps)."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != len(FIELDS) or "." in parts[0]:
            continue
        job_id, state, exit_code, reason, nodes, start, end = parts
        word = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        out[job_id] = JobInfo(job_id, word, STATE_MAP.get(word, "running"), exit_code, reason, nodes, start, end)
    return out


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """Parse ``squeue -h -o '%i|%T|%r'`` into job id -> (state, reason)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def query(job_ids: list[str], timeout_s: float = 60) -> tuple[dict[str, JobInfo], dict[str, tuple[str, str]]]:
    """One sacct call and one squeue call for all ``job_ids``, however many."""
    if not job_ids:
        return {}, {}
    ids = ",".join(sorted(set(job_ids)))
    try:
        acct = subprocess.run(["sacct", "--parsable2", "--noheader", "-o", ",".join(FIELDS), "-j", ids],
                              capture_output=True, text=True, timeout=timeout_s)
        # -r: one line per array element (a pending element is otherwise folded into "<job>_[1-3]", and sacct has
        # no row for it until it starts: it would look gone)
        queue = subprocess.run(["squeue", "-r", "-h", "-o", "%i|%T|%r", "-j", ids], capture_output=True, text=True,
                               timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExecutorError(f"cannot ask SLURM about {len(job_ids)} jobs: {e}") from None
    if acct.returncode != 0:
        raise ExecutorError(f"sacct failed: {acct.stderr.strip()}")
    return parse_sacct(acct.stdout), parse_squeue(queue.stdout if queue.returncode == 0 else "")
