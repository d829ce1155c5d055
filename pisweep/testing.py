"""Job contexts for tests and benchmarks: stops at a chosen step, driven through the job context (never through
environment reads in the training loop).

- :class:`StopAfter`: in-process and deterministic; the stop flag is raised once ``stop_at`` steps are done;
- :func:`install_pause`: for real processes (a launcher's ranks, a SLURM job): every job context of this
  process waits at the listed steps, up to ``limit_s``, until a signal asks it to stop. A test enables it in
  the processes it starts through its own ``sitecustomize`` (tests/hooks/).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from pisweep.job.context import JobContext

PAUSE_LIMIT_S = 120.0


@dataclass
class StopAfter(JobContext):
    """A job context whose stop flag is raised, as by ``signal_name``, once ``stop_at`` steps are done: the loops
    then stop exactly as after that signal."""

    stop_at: int = 10 ** 9
    signal_name: str = "SIGUSR2"

    def should_stop(self) -> bool:
        if self.step >= self.stop_at and not super().should_stop():
            self.request_stop(self.signal_name)
        return super().should_stop()


def install_pause(steps: str | list[int], limit_s: float = PAUSE_LIMIT_S) -> None:
    """Make every job context of this process wait at ``steps`` (a list or "3,7"): rank 0 touches
    ``<job folder>/paused-<step>`` so that a test knows where the job stands, then each rank waits until it is asked
    to stop (or ``limit_s`` passes)."""
    wanted = frozenset(int(x) for x in (steps.split(",") if isinstance(steps, str) else steps) if str(x).strip())

    def pause_point(ctx: JobContext, step: int) -> bool:
        if step not in wanted:
            return False
        if ctx.rank == 0:
            (ctx.folder / f"paused-{step}").touch()
        deadline = time.monotonic() + limit_s
        while not ctx.should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    JobContext.pause_point = pause_point  # type: ignore[method-assign]
