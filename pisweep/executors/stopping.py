"""How a controller is asked to end: SIGINT, SIGTERM, SIGHUP, or its stdout closing (``pisweep submit | head``).

Each one ends the local scheduler the same way (see executors/local.py): its jobs are asked to save and stop,
waited for, recorded as stopped, and one line says what happened and which command continues.
"""
from __future__ import annotations

import select
import signal
import sys
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stdout_closed(fd: int | None = None) -> bool:
    """Whether our stdout is a pipe whose reader has gone (or a terminal that hung up): the next write would fail."""
    try:
        fd = sys.stdout.fileno() if fd is None else fd
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to watch
        return bool(getattr(sys.stdout, "closed", False))
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in poller.poll(0))


class StopRequest:
    """Within ``with StopRequest():`` the stop signals only set a flag that the scheduler's loop reads."""

    def __init__(self, watch_stdout: bool = True):
        self.watch_stdout = watch_stdout
        self.signum: int | None = None
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum, self.reason = signum, signal.Signals(signum).name

    def requested(self) -> bool:
        if self.signum is None and self.watch_stdout and stdout_closed():
            self.signum, self.reason = signal.SIGPIPE, "stdout closed"
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """What a shell expects of a process ended by that signal: 128 + its number (141 for a closed stdout)."""
        return 128 + int(self.signum or 0)
