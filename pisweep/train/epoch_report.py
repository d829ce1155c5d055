"""Each finished epoch is reported exactly once, even when the job is killed at any instant.

An epoch's ``epoch_done`` is kept in the resume state that ends the epoch, and emitted only after that state is
saved. Killed before the save, the next attempt redoes the epoch's end and reports it then; killed between the
save and the event, the next attempt finds the report in the state and, if the job's own events lack it, emits it.
(Emitting first and saving after would report an epoch twice when a kill falls between the two.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pisweep.job.paths import JobPaths


def reported_epochs(folder: Path) -> set[int]:
    """Epochs this job folder's events already report as done."""
    out: set[int] = set()
    for path in JobPaths(folder).events.glob("*-epoch_done.json"):
        try:
            out.add(int(json.loads(path.read_text())["data"]["epoch"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def replay_unreported(ctx, pending: dict[str, Any] | None) -> None:
    """After a restore: emit the report a killed attempt saved in its state but did not get to write."""
    if pending and ctx.rank == 0 and int(pending["epoch"]) not in reported_epochs(ctx.folder):
        ctx.emit("epoch_done", **pending)
