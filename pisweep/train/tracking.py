"""Optional wandb logging of a training job: offline by default, one run per job uid, resumable.

Mode "disabled" never imports wandb. Only the spec's hyper-parameters are logged as config (never the
environment, where secrets live), and console capture / git / code saving are off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """A thin wrapper so the training loop calls ``log`` unconditionally."""

    def __init__(self, run: Any = None):
        self._run = run

    @classmethod
    def start(cls, mode: str, project: str, uid: str, folder: Path, config: dict[str, Any],
              rank: int = 0) -> "Tracker":
        if mode == "disabled" or rank != 0:
            return cls(None)
        import wandb  # optional, costs ~0.35 s: only when asked for

        try:
            run = wandb.init(project=project, id=uid, name=uid, resume="allow", dir=str(folder), mode=mode,
                             config=config, save_code=False, reinit="create_new",
                             settings=wandb.Settings(console="off", disable_git=True, disable_code=True,
                                                     silent=True))
        except Exception as exc:  # noqa: BLE001 - e.g. a scancel or preemption that kills wandb-core as it starts
            tracker = cls(None)
            tracker._give_up(exc)  # the job then stops (or trains) as it would without wandb, not as failed
            return tracker
        return cls(run)

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, data: dict[str, float], step: int) -> None:
        if self._run is not None:
            try:
                self._run.log(data, step=step)
            except Exception as exc:  # noqa: BLE001 - e.g. its service process was killed by a job-wide signal
                self._give_up(exc)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            try:
                self._run.finish(exit_code=exit_code)
            except Exception as exc:  # noqa: BLE001
                self._give_up(exc)
            self._run = None

    def _give_up(self, exc: Exception) -> None:
        """Logging never ends a training: the events and checkpoints are the record, wandb is a view of it."""
        import logging

        logging.getLogger("pisweep.train").warning("wandb logging stopped: %s: %s", type(exc).__name__, exc)
        self._run = None
