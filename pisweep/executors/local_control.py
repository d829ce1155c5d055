"""Controlling a local study from another command: cancel its scheduler or its live jobs, start the scheduler
detached, and follow it.

A live local job is found through its folder's lock (job/liveness.py), whose note names its pid; a cancel writes
the job's cancel marker first, so the job ends its attempt as ``cancelled`` (state saved), then sends it SIGTERM
(save and stop) and waits for the lock to be released. A running scheduler is cancelled the same way: its jobs get
their markers, it gets SIGTERM, and it stops them as on any other signal.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pisweep.errors import ExecutorError
from pisweep.executors.controller import live_controller
from pisweep.executors.schedlog import scheduler_log_path
from pisweep.job.liveness import cancel_marker_path, holder, job_lock_path

CANCEL_WAIT_S = 120.0  # a job gets this long to save after SIGTERM (the scheduler: its own grace, 60 s, and more)


@dataclass
class LocalCancel:
    scheduler: dict[str, Any] | None = None  # the note of the scheduler that was stopped
    jobs: list[tuple[str, int]] = field(default_factory=list)  # (label, pid) of the jobs asked to stop
    still_live: list[str] = field(default_factory=list)  # labels that did not stop in time
    scheduler_said: str | None = None  # the scheduler's last line in its log


def live_jobs(rows: Iterable[Any]) -> list[tuple[Any, str, dict[str, Any]]]:
    """(row, role, holder note) of every live local process of these jobs: their training and their evals."""
    out = []
    for row in rows:
        for role in ("job", "eval"):
            note = holder(job_lock_path(row.folder, role))
            if note is not None:
                out.append((row, role, note))
    return out


def _check_host(note: dict[str, Any], what: str) -> None:
    if note.get("host") not in (None, socket.gethostname()):
        raise ExecutorError(f"{what} runs on host {note['host']} (pid {note.get('pid')}); run the command there")


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def cancel_local(output_root: Path, rows: list[Any], whole_study: bool, wait_s: float = CANCEL_WAIT_S) -> LocalCancel:
    """Stop the study's live local work: with ``whole_study`` its scheduler (and so every job it runs), else the
    given jobs. Each stopped job saves its state and records its attempt as cancelled."""
    result = LocalCancel()
    live = live_jobs(rows)
    for row, role, note in live:
        _check_host(note, f"job {row.label}")
        if role == "job":
            cancel_marker_path(row.folder).parent.mkdir(parents=True, exist_ok=True)
            cancel_marker_path(row.folder).write_text("cancelled by pisweep cancel\n")
    ctl = live_controller(output_root) if whole_study else None
    if ctl is not None:
        _check_host(ctl, "the study's scheduler")
        result.scheduler = ctl
        _signal(int(ctl["pid"]), group=False)
        if not _wait(lambda: live_controller(output_root) is None, wait_s + 60):
            raise ExecutorError(f"the scheduler (pid {ctl['pid']}) did not stop within {wait_s + 60:.0f}s")
        result.scheduler_said = last_line(scheduler_log_path(output_root), int(ctl["pid"]))
    for row, role, note in live:  # a scheduler stops its own jobs; these are the ones left, or the only ones
        if holder(job_lock_path(row.folder, role)) is not None:
            _signal(int(note["pid"]), group=True)
        result.jobs.append((row.label if role == "job" else f"eval {row.label}", int(note["pid"])))
    for row, role, _ in live:
        if not _wait(lambda: holder(job_lock_path(row.folder, role)) is None, wait_s):
            result.still_live.append(row.label)
    return result


def _signal(pid: int, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


# -- the scheduler's log --------------------------------------------------------------------------------------------
def last_line(log: Path, pid: int | None = None) -> str | None:
    """The last line of the scheduler's log (of process ``pid``), without its time and pid."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if pid is None or f"[{pid}]" in line:
            return line.split("] ", 1)[-1]
    return None


def follow(output_root: Path, pid: int, poll_s: float = 0.5) -> Iterator[str]:
    """The scheduler's log lines from its start (process ``pid``), then new ones until it has ended (its lock is
    released: a pid can outlive its process as a zombie, a lock cannot)."""
    log = scheduler_log_path(output_root)
    offset = _start_of(log, pid)
    while True:
        ctl = live_controller(output_root)
        alive = ctl is not None and int(ctl.get("pid", -1)) == pid
        try:
            with open(log) as fh:
                fh.seek(offset)
                chunk = fh.read()
                offset = fh.tell()
        except OSError:
            chunk = ""
        yield from chunk.splitlines()
        if not alive:
            return
        time.sleep(poll_s)


def _start_of(log: Path, pid: int) -> int:
    try:
        text = log.read_text()
    except OSError:
        return 0
    at = text.rfind(f"[{pid}] scheduler started")
    return 0 if at < 0 else text.rfind("\n", 0, at) + 1


# -- detached ------------------------------------------------------------------------------------------------------
@dataclass
class Detached:
    pid: int
    console: Path  # what the scheduler prints (its stdout and stderr)
    exit_code: int | None  # set when it ended before it got going (nothing to do, or an error)
    output: str = ""


def console_path(output_root: Path) -> Path:
    return Path(output_root) / "logs" / "scheduler.console.log"


def start_detached(argv: list[str], output_root: Path, timeout_s: float = 900.0) -> Detached:
    """Run ``pisweep <argv>`` (a local submit or resume) in the background, in its own session (no terminal can
    hang it up), and return once its scheduler has started or it has ended."""
    console = console_path(output_root)
    console.parent.mkdir(parents=True, exist_ok=True)
    start = console.stat().st_size if console.exists() else 0
    with open(console, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pisweep.cli", *argv], stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
    log = scheduler_log_path(output_root)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        code = proc.poll()
        if code is not None:
            with open(console, "rb") as fh:
                fh.seek(start)
                return Detached(proc.pid, console, code, fh.read().decode(errors="replace"))
        try:
            if f"[{proc.pid}] scheduler started" in log.read_text():
                return Detached(proc.pid, console, None)
        except OSError:
            pass
        time.sleep(0.2)
    return Detached(proc.pid, console, None)
