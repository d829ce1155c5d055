"""Stage-2 data: which webdataset shards make up a scale (the manifest), and where each sample lies in them.

A scale of N samples is the shards of the brace pattern that cover N, taken in the order of ``data.subset``:
"random-shards" orders them by a seeded hash of each shard's name (``<folder>/<file>``, so a new mount moves
nothing), the same for every arm and seed, so that scales over one pattern are nested (the 1M subset lies inside
the 3M one); "prefix" keeps the pattern's order (the download's). The last shard is used only up to what is needed,
so the scale holds exactly N distinct samples (an epoch is N // global batch batches of them; see loader.py).
Shard sizes come from ``sizes.json`` next to the shards (webdataset/open_clip), from img2dataset's
``<shard>_stats.json`` ("successes"), or by indexing the tar.

Samples are read by random access (tarindex.py gives each member's byte range), which is what lets the sample
order be a pure function of (seed, epoch) whatever the number of loader workers.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pisweep.atomic import atomic_write_json
from pisweep.data.shardlist import DeclaredSizes, expand_shards
from pisweep.errors import TrainingError
from pisweep.train.tarindex import IndexCache


@dataclass(frozen=True)
class ShardUse:
    path: str
    size: int  # samples in the shard
    used: int  # samples of it in this scale (== size except for the last shard)


@dataclass(frozen=True)
class Manifest:
    """The deterministic list of shards (and how much of each) that make one data scale."""

    pattern: str
    samples: int
    shards: tuple[ShardUse, ...]
    subset: str = "prefix"
    subset_seed: int = 0

    def to_json(self) -> dict:
        out = {"pattern": self.pattern, "samples": self.samples,
               "shards": [{"path": s.path, "size": s.size, "used": s.used} for s in self.shards]}
        if self.subset != "prefix":  # (a prefix manifest keeps the digest it had before subsets had a rule)
            out["subset"] = {"rule": self.subset, "seed": self.subset_seed}
        return out

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        atomic_write_json(path, {**self.to_json(), "sha256": self.digest})


def subset_order(paths: list[str], subset: str, seed: int) -> list[str]:
    """The order a scale takes the shards of its pattern in (see the module docstring)."""
    if subset == "prefix":
        return list(paths)
    if subset != "random-shards":
        raise TrainingError(f"unknown data.subset {subset!r}; expected random-shards or prefix")

    def key(path: str) -> str:
        p = Path(path)
        return hashlib.sha256(f"{seed}/{p.parent.name}/{p.name}".encode()).hexdigest()
    return sorted(paths, key=key)


def plan_manifest(pattern: str, samples: int, index_cache: Path | None = None, subset: str = "prefix",
                  subset_seed: int = 0) -> Manifest:
    """The shards of ``pattern`` that cover ``samples``, in the order of ``subset`` (raises TrainingError when they
    do not). A shard that no sizes file describes is counted by indexing it (cached in ``index_cache``)."""
    declared = DeclaredSizes()
    indexes = IndexCache(index_cache)
    chosen: list[ShardUse] = []
    covered = 0
    paths = subset_order(expand_shards(pattern), subset, subset_seed)
    for path in paths:
        size = declared.of(path)
        if size is None:
            size = len(indexes.get(path))
        if size <= 0:
            continue
        used = min(size, samples - covered)
        chosen.append(ShardUse(path, size, used))
        covered += used
        if covered >= samples:
            return Manifest(pattern, samples, tuple(chosen), subset, subset_seed)
    raise TrainingError(f"shards {pattern!r} hold {covered} samples, fewer than the {samples} asked for")


@dataclass(frozen=True)
class SampleTable:
    """Where every sample of a manifest lies: sample id -> (shard number, byte ranges). Compact numpy arrays,
    shared copy-on-write with forked loader workers."""

    paths: tuple[str, ...]
    shard: np.ndarray  # int32
    img_off: np.ndarray
    img_len: np.ndarray
    txt_off: np.ndarray
    txt_len: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shard_counts(self) -> list[int]:
        return np.bincount(self.shard, minlength=len(self.paths)).tolist()


def build_table(manifest: Manifest, index_cache: Path | None = None, processes: int | None = None) -> SampleTable:
    """Index every shard of the manifest (checking it holds what the manifest says it uses)."""
    paths = [s.path for s in manifest.shards]
    indexes = IndexCache(index_cache).get_many(paths, processes)
    parts = []
    for s, idx in zip(manifest.shards, indexes):
        if len(idx) < s.used or (s.used == s.size and len(idx) != s.size):
            raise TrainingError(f"shard {s.path} holds {len(idx)} samples, but its sizes file says {s.size}")
        parts.append(idx.rows[:s.used])
    rows = np.concatenate(parts)
    shard = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(parts)])
    return SampleTable(tuple(paths), shard, rows[:, 0].copy(), rows[:, 1].astype(np.int32),
                       rows[:, 2].copy(), rows[:, 3].astype(np.int32))


def read_range(fd: int, path: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of an open shard; a short read names the shard."""
    try:
        data = os.pread(fd, int(length), int(offset))
    except OSError as exc:
        raise TrainingError(f"shard {path} is unreadable: {exc}") from exc
    if len(data) != length:
        raise TrainingError(f"shard {path} is truncated (wanted {length} bytes at {offset})")
    return data
