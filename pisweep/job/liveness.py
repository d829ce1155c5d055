"""Liveness that the kernel guarantees: a live local job holds an ``flock`` on a file in its own folder.

The controller takes the lock *before* it starts the job and hands the open file to the child (``pass_fds``), so
there is no moment at which the job runs unlocked. The kernel releases the lock when the last process holding that
open file ends, however it ends (exit, crash, kill -9): a held lock is a live job, a free one a dead job, and a
stale lock from a dead job never blocks anything. Nothing starts a job whose lock is held.

The same mechanism holds the controller's own lock (one scheduler per study). Local executor only: on SLURM, job
folders lie on shared file systems whose locks cannot be trusted across nodes, so there liveness comes from the
scheduler (sacct/squeue), never from a lock file.

A local job also watches its controller: should the controller die without stopping it (kill -9), the job stops
the way it stops on SIGTERM (saves, records the attempt as stopped, exits), and the next ``pisweep resume`` goes
on from the saved state. Jobs are never adopted by a later controller.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pisweep.job.paths import JobPaths

ENV_CONTROLLER_PID = "PISWEEP_CONTROLLER_PID"  # set by the local executor for the jobs it starts
WATCH_INTERVAL_S = 1.0

log = logging.getLogger("pisweep.job")
_controller_lost = threading.Event()


def job_lock_path(folder: str | Path, role: str) -> Path:
    """The lock of a job folder's live process: role ``job`` (its init or train job) or ``eval`` (its eval job)."""
    return JobPaths(folder).live / f"{role}.lock"


def cancel_marker_path(folder: str | Path) -> Path:
    """Written by ``pisweep cancel`` before it signals a local job: the job then ends its attempt as cancelled."""
    return JobPaths(folder).live / "cancel"


def take_cancel_marker(folder: str | Path) -> bool:
    """Whether this job's stop is a cancel (the marker is removed: the next attempt is an ordinary one)."""
    path = cancel_marker_path(folder)
    if path.exists():
        path.unlink(missing_ok=True)
        return True
    return False


@dataclass
class Held:
    """An flock held through an open file; :meth:`note` records who holds it, :meth:`release` lets go."""

    fd: int
    path: Path

    def note(self, **info: Any) -> None:
        data = {"host": socket.gethostname(), "since": time.time(), **info}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(data, sort_keys=True).encode(), 0)

    def release(self) -> None:
        """Close this process's handle; the lock stays held by any child it was passed to."""
        os.close(self.fd)


def try_hold(path: str | Path, **note: Any) -> Held | None:
    """Take the exclusive lock at ``path`` without waiting; None when a live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    held = Held(fd, path)
    held.note(pid=os.getpid(), **note)
    return held


def holder(path: str | Path) -> dict[str, Any] | None:
    """The note of the live process holding the lock at ``path`` ({} if it wrote none), or None when none does.

    Opens the file read-only, so it works on a read-only output root; creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            except ValueError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- inside the job ----------------------------------------------------------------------------------------------
def controller_lost() -> bool:
    """Whether this job stops because its controller died (the stop reason says so)."""
    return _controller_lost.is_set()


def watch_controller() -> None:
    """If a local controller started this process, stop (SIGTERM to ourselves) as soon as that controller is gone.

    The parent is checked rather than relying on PR_SET_PDEATHSIG, which fires when the parent *thread* ends."""
    raw = os.environ.pop(ENV_CONTROLLER_PID, None)  # not passed on: a rank's parent is its launcher
    if not raw:
        return
    controller = int(raw)

    def lost() -> None:
        _controller_lost.set()
        log.warning("controller pid %d is gone: stopping as on SIGTERM (state saved; `pisweep resume` continues)",
                    controller)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != controller:
        lost()
        return

    def watch() -> None:
        while os.getppid() == controller:
            time.sleep(WATCH_INTERVAL_S)
        lost()

    threading.Thread(target=watch, name="pisweep-controller-watch", daemon=True).start()
