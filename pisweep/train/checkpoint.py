"""Checkpoint files of training: weights (``{"epoch", "state_dict"}``) and resume states.

Every file is written temp + fsync + rename (pisweep.atomic), so a reader never sees a partial file under its
final name, and its sha256 is computed while writing (no second read of a multi-GB file).
"""
from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pisweep.atomic import atomic_open, atomic_write_json, disk_full
from pisweep.errors import TrainingError
from pisweep.models import unwrap

RESUME_FORMAT = 1


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.error: OSError | None = None  # torch.save turns a failed write into a RuntimeError: keep the cause

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.bytes += view.nbytes
        try:
            return self._f.write(view)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def save_hashed(obj: Any, path: Path) -> tuple[str, int]:
    """torch.save ``obj`` atomically to ``path``; return (sha256, bytes) of the file."""
    w = None
    try:
        with atomic_open(Path(path)) as f:
            w = _HashingWriter(f)
            torch.save(obj, w)
    except RuntimeError as e:
        if w is not None and w.error is not None and w.error.errno == errno.ENOSPC:
            raise disk_full(Path(path)) from e
        raise
    return w.sha.hexdigest(), w.bytes


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, without a DDP ``module.`` prefix."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def save_weights(path: Path, epoch: int, model: torch.nn.Module) -> tuple[str, int]:
    """A weights file that ``open_clip.create_model_and_transforms(name, pretrained=path)`` loads."""
    return save_hashed({"epoch": int(epoch), "state_dict": cpu_state_dict(model)}, path)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def step_note_path(path: Path) -> Path:
    """Beside a resume state: the step it holds (a few bytes, read without unpickling the state)."""
    return Path(path).with_name(Path(path).stem + ".step.json")


def saved_step(path: Path) -> int | None:
    """The step of the resume state at ``path`` (None when there is no state, or no note of its step)."""
    if not Path(path).exists():
        return None
    try:
        return int(json.loads(step_note_path(path).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_resume(path: Path, state: dict[str, Any]) -> tuple[str, int]:
    """Write a resume state (model, optimizer, step, data position, RNG, ...) with a format tag.

    Never replaces a state of a later step: that would mean two copies of one job ran, and the older one would
    throw the newer one's work away (TrainingError instead). The note of the step is written after the state, so a
    write killed in between leaves an older note, which never refuses a correct save."""
    step, before = state.get("step"), saved_step(path)
    if step is not None and before is not None and int(step) < before:
        raise TrainingError(f"resume state {path} is at step {before} and this attempt only at step {step}: another "
                            f"copy of this job ran ahead; its state is kept, this attempt stops")
    sha, nbytes = save_hashed({"format": RESUME_FORMAT, **_to_cpu(state)}, path)
    if step is not None:
        atomic_write_json(step_note_path(path), {"step": int(step), "sha256": sha})
    return sha, nbytes


def load_resume(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The resume state at ``path``, or None if there is none.

    Raises TrainingError when the file is unreadable or was written by a different training (its
    ``fingerprint``, the settings that fix the result, differs): resuming it would silently mix two runs.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        # weights_only: a state planted in a job folder cannot run code when it is read (tensors and plain types
        # only; the fingerprint is checked next)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing here
        raise TrainingError(f"resume state {path} is unreadable: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise TrainingError(f"resume state {path} has an unknown format")
    if state.get("fingerprint") != fingerprint:
        diff = sorted(k for k in set(fingerprint) | set(state.get("fingerprint") or {})
                      if (state.get("fingerprint") or {}).get(k) != fingerprint.get(k))
        raise TrainingError(f"resume state {path} belongs to a different training (differs in {diff}); "
                            "move it away to start over")
    return state
