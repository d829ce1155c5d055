"""AdamW with the paper's parameter groups (§1.4, §1.5), and setting the learning rate before a step.

The schedule is a pure function of the step (study/schedule.py), so a resume state needs only the step number, and
the learning rate is set on the optimizer before every step (no scheduler object whose state could drift).
"""
from __future__ import annotations

from typing import Iterable

import torch

from pisweep.study.spec import OptimSpec

# Parameters excluded from weight decay besides every 1-D tensor (biases, norm scales, class embedding, logit
# scale): the learnable positional embeddings, which are 2-D (§1.4: "no wd on 1-D/bias/norm/logit_scale/pos-emb").
_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "logit_scale", "logit_bias")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to this parameter."""
    if param.ndim < 2 or name.endswith(".bias") or name == "bias":
        return False
    leaf = name.rsplit(".", 1)[-1]
    return not any(leaf == n or name.endswith(n) for n in _NO_DECAY_NAMES)


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and the rest with weight_decay 0. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(named: Iterable[tuple[str, torch.nn.Parameter]], optim: OptimSpec,
                fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with lr/betas/eps from the spec, with its fused kernels unless told otherwise: on CUDA, and on the CPU
    too, where they are several times faster than the default ``foreach`` path (2 threads, best of 15 steps:
    14 -> 2 ms for the tiny model, 0.99 -> 0.26 s for ViT-B-32)."""
    groups = param_groups(named, optim.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
