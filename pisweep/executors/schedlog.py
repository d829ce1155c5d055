"""The scheduler's log, ``<output_root>/logs/scheduler.log``: what a local scheduler started, saw end, and why it
stopped, one line each. Written even when the terminal is gone (SIGHUP) or stdout is closed."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def scheduler_log_path(output_root: str | Path) -> Path:
    return Path(output_root) / "logs" / "scheduler.log"


class SchedulerLog:
    """A Reporter (see executors/local.py) that appends to the scheduler's log; it never raises."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def line(self, text: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
        except OSError:
            pass  # a log that cannot be written must not stop the scheduler

    def started(self, kind: str, label: str, log: Path) -> None:
        self.line(f"start {kind} {label} (log {log})")

    def finished(self, kind: str, label: str, outcome: str, detail: str | None) -> None:
        self.line(f"{outcome} {kind} {label}" + (f" ({detail})" if detail else ""))

    def waiting(self, kind: str, label: str, info: dict[str, Any]) -> None:
        self.line(f"waiting: {kind} {label} is live in pid {info.get('pid', '?')} (an earlier controller's job); "
                  "it starts again once that process has ended")

    def tick(self, state: dict[str, Any]) -> None:
        pass
