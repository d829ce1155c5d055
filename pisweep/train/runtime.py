"""Device, precision and rank helpers shared by the two stages, and the process group of a rank."""
from __future__ import annotations

import contextlib
import gc
import os
from datetime import timedelta
from typing import Callable, ContextManager, TypeVar

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


T = TypeVar("T")


def rank0_first(rank: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (which then find rank 0's cached work)."""
    if not distributed():
        return fn()
    result = fn() if rank == 0 else None
    dist.barrier()
    return result if rank == 0 else fn()


def setup_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def init_distributed(device: str) -> None:
    """Join the process group the launcher set up (torchrun's env://): gloo on the CPU, nccl on GPUs.

    The timeout bounds how long a rank waits in a collective for a peer that died without closing its
    connections (PISWEEP_DIST_TIMEOUT_S, default 30 minutes: an epoch-end save of a large model must fit).
    """
    timeout = timedelta(seconds=float(os.environ.get("PISWEEP_DIST_TIMEOUT_S", "1800")))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=timeout, device_id=dev)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def teardown_distributed(clean: bool) -> None:
    """Leave the process group. Gloo can hang in its teardown when a peer is already gone (an upstream race,
    once in ~17 runs): collect the DDP wrappers first, and after a clean end meet the peers at a barrier, so no
    rank destroys its group while another still uses it. After a failure the peers may be dead: no barrier."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()
