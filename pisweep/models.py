"""open_clip models by name or inline config, and the weights files pisweep writes.

A weights file is ``{"epoch": int, "state_dict": ...}``; next to it lies ``<model-name>.json``, the open_clip
model config, so that a fresh process can register an inline model and then call
``open_clip.create_model_and_transforms(name, pretrained=path)``. Importing this module imports torch and
open_clip: keep it off the start-up path of commands that do not train or evaluate.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch

from pisweep.atomic import atomic_write_bytes
from pisweep.errors import EvalError

# The tiny CPU model of the tests and the demo (shared/reference/python-stack.md: ~3.4 M params, ~60 ms/step).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_model_config(name: str, config: dict[str, Any] | None) -> None:
    """Make ``name`` known to open_clip. Built-in names need no config; inline ones are registered."""
    if config is None:
        if name not in open_clip.list_models():
            raise EvalError(f"unknown open_clip model {name!r} and no inline config given")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def write_model_config(folder: Path, name: str, config: dict[str, Any] | None) -> Path | None:
    """Write ``<folder>/<name>.json`` (inline models only) so a weights file loads in a fresh process."""
    if config is None:
        return None
    path = Path(folder) / f"{name}.json"
    atomic_write_bytes(path, json.dumps(config, indent=2, sort_keys=True).encode())
    return path


def register_from_checkpoint(weights: Path, name: str) -> None:
    """Register the config JSON that lies next to a weights file, if any."""
    cfg = Path(weights).parent / f"{name}.json"
    if cfg.exists():
        open_clip.add_model_config(cfg)


def create_model(name: str, config: dict[str, Any] | None = None, pretrained: str | Path | None = None,
                 device: str | torch.device = "cpu", init_logit_scale: float | None = None):
    """Return ``(model, preprocess_train, preprocess_val, tokenizer)`` for an open_clip model; ``init_logit_scale``
    (ln of the starting 1/temperature): open_clip's model option, None for the model's own."""
    register_model_config(name, config)
    if pretrained is not None:
        register_from_checkpoint(Path(pretrained), name)
    extra = {} if init_logit_scale is None else {"init_logit_scale": init_logit_scale}
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name, pretrained=str(pretrained) if pretrained is not None else None, device=device, **extra)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess_train, preprocess_val, tokenizer


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model

