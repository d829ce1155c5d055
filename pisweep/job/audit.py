"""The audit file of a job folder, ``audit.log``: one JSON line per event a job (or its controller) writes there,
appended and never rewritten, so it keeps what the ledger would tidy away (an attempt that ran twice, an epoch
finished twice, a checkpoint replaced). Forensics and the crash campaign (benchmarks/crash_campaign.py) read it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from pisweep.job.paths import JobPaths

AUDITED = {"attempt_started", "attempt_ended", "epoch_done", "checkpoint", "init_selected"}


def audit(folder: str | Path, kind: str, attempt: dict[str, Any], data: dict[str, Any]) -> None:
    """Append one line (a single write with O_APPEND: lines of concurrent writers never interleave)."""
    if kind not in AUDITED:
        return
    keep = {k: data[k] for k in ("outcome", "epoch", "step", "kind", "path", "sha256", "pid") if k in data}
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "event": kind, "job_id": attempt.get("job_id"),
                       "restart": attempt.get("restart"), **keep}, sort_keys=True) + "\n"
    path = JobPaths(folder).audit
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_audit(folder: str | Path) -> Iterator[dict[str, Any]]:
    """The audit lines of a job folder (a line cut short by a kill is skipped)."""
    try:
        text = JobPaths(folder).audit.read_text()
    except OSError:
        return
    for line in text.splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue
