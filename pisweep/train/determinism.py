"""Seeds and RNG states: every random choice of training is a pure function of named integers.

Why: a resumed or re-run job must see the same samples in the same order with the same augmentation, whatever
the number of loader workers or ranks. So randomness is never drawn from a stream whose position depends on
how much was consumed before; it is derived from keys like (seed, epoch, sample index).
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

# Stream names keep the derived seeds of different purposes apart.
STREAM_SHARD_ORDER = 1
STREAM_WINDOW = 2
STREAM_AUGMENT = 3
STREAM_NIGHTS_ORDER = 4
STREAM_VOTE_SHUFFLE = 5
STREAM_LOADER = 6


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (stable across Python versions and platforms, unlike hash())."""
    data = b"".join(int(k).to_bytes(8, "little", signed=True) for k in keys)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def rng(*keys: int) -> np.random.Generator:
    """An independent numpy generator for the given keys."""
    return np.random.default_rng(derive_seed(*keys))


def torch_generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def capture_rng_state() -> dict[str, Any]:
    """The process-global RNG states (python, numpy, torch CPU and CUDA), for a resume state."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only: a resume state loads with torch.load(weights_only=True), which runs no code
    state: dict[str, Any] = {"python": random.getstate(),
                             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    # Training draws nothing from the CUDA generators (no dropout), so a resume on another GPU count may skip them.
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model init draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
