"""Device, precision and rank helpers shared by the two stages."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
import torch.distributed as dist


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast on CUDA for "auto"/"bf16"; fp32 (no autocast) on the CPU and for "fp32".

    The CPU stays fp32 even for "bf16": CPU bf16 matmuls are slow and the CPU runs are tests and demos.
    """
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is set on any rank (a collective: every rank must call it at the same step)."""
    if not distributed():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def setup_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev
