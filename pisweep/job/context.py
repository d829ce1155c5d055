"""What a running job gets from pisweep: its folder, its attempt, a way to report events, and the stop flag.

Signals (SIGUSR2 from SLURM before a preemption or time limit, SIGTERM) only set the flag; the training loop
checks :meth:`JobContext.should_stop` at step boundaries, saves, and raises :class:`Preempted`.

The flag is one attribute, written without a lock: a Python signal handler can run *inside* another one (SLURM and
the launcher each send a SIGTERM, milliseconds apart), and a handler that takes a lock (``threading.Event.set``)
then waits forever for the lock its outer run holds.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pisweep.job.events import attempt_from_env, write_event
from pisweep.job.liveness import controller_lost

log = logging.getLogger("pisweep.job")


class Preempted(Exception):
    """Raised by a job that saved its state and stops because it was asked to (preemption or time limit)."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}; state saved")
        self.signal_name = signal_name
        self.step = step


@dataclass
class JobContext:
    uid: str
    folder: Path
    rank: int = 0
    world_size: int = 1
    attempt: dict[str, Any] = field(default_factory=attempt_from_env)
    step: int = 0
    epoch: int = 0
    stop_signal: str | None = None  # the latest stop request's name; None: none yet
    # Called after rank 0 wrote an event, e.g. the slurm executor submits an eval job for a new checkpoint.
    on_event: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list, repr=False)

    def emit(self, kind: str, /, **data: Any) -> None:
        """Write an event (rank 0 only: one event per fact, however many ranks)."""
        if self.rank == 0:
            write_event(self.folder, self.uid, kind, self.attempt, **data)
            for hook in self.on_event:
                hook(kind, data)

    def request_stop(self, name: str) -> None:
        """Ask the job to save and stop at its next step boundary. Safe in a signal handler, nested ones too."""
        self.stop_signal = name

    def should_stop(self) -> bool:
        return self.stop_signal is not None

    def pause_point(self, step: int) -> bool:
        """Called by the training loop at each step boundary it reaches after a start or resume. A real job never
        waits here; a test's context (pisweep/testing.py) may hold the job at a chosen step until it is asked to
        stop. True makes this step's stop check collective, so that every rank stops at the same step."""
        return False

    def install_signal_handlers(self, signals: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM)) -> None:
        """Replace any handler (submitit's included) with one that only sets the stop flag."""
        for sig in signals:
            signal.signal(sig, lambda signum, _frame: self.request_stop(signal_label(signum)))


def signal_label(signum: int) -> str:
    """A stop signal's name for the attempt's reason; a SIGTERM a job sent itself names its lost controller."""
    name = signal.Signals(signum).name
    return f"{name} (its controller is gone)" if signum == signal.SIGTERM and controller_lost() else name
