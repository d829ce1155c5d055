"""One controller per study: the scheduler (or a SLURM submission) holds ``<output_root>/controller.lock``.

A second ``submit``/``resume`` refuses at once, naming the live one; read-only commands ask :func:`live_controller`
whether one is alive (pid, host, since, command). The lock is an flock (job/liveness.py), so a controller killed
with kill -9 leaves nothing that blocks the next one.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from pisweep.errors import StudyBusy
from pisweep.job.liveness import holder, try_hold

LOCK_NAME = "controller.lock"


def controller_lock_path(output_root: str | Path) -> Path:
    return Path(output_root) / LOCK_NAME


def live_controller(output_root: str | Path) -> dict[str, Any] | None:
    """Who runs the study now (pid, host, since, command, study), or None when no controller is alive."""
    return holder(controller_lock_path(output_root))


def describe(info: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", time.time())))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since} (`{info.get('command', '?')}`)"


@contextlib.contextmanager
def hold_controller(output_root: str | Path, study: str, purpose: str) -> Iterator[None]:
    """Be the study's one controller for the block, or raise StudyBusy naming the live one.

    A block that fails on an output root this call created (a study refused by preflight) leaves no folder."""
    root = Path(output_root)
    created = not root.exists()
    held = try_hold(controller_lock_path(root), study=study, purpose=purpose,
                    command=" ".join(["pisweep", *sys.argv[1:3]]))
    if held is None:
        info = live_controller(root) or {}
        raise StudyBusy(f"study {study!r} is already being run by {describe(info)}; follow it with "
                        f"`pisweep status {study}`, stop it with `pisweep cancel {study}`")
    try:
        yield
    except BaseException:
        if created:
            _remove_if_only_ours(root)
        raise
    finally:
        held.release()


def _remove_if_only_ours(root: Path) -> None:
    """Remove the folder a refused first submit made, if it holds nothing but the controller's own files."""
    from pisweep.ledger.owner import OWNER_FILE

    try:
        if {p.name for p in root.iterdir()} <= {LOCK_NAME, OWNER_FILE}:
            for name in (LOCK_NAME, OWNER_FILE):
                (root / name).unlink(missing_ok=True)
            root.rmdir()
    except OSError:
        pass
