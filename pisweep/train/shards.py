"""Stage-2 data: which webdataset shards make up a scale (the manifest), and where each sample lies in them.

A scale of N samples is the first shards of the brace pattern, in order, that cover N; the last one is used only
up to what is needed, so an epoch visits exactly N distinct samples. Shard sizes come from ``sizes.json`` next to
the shards (webdataset/open_clip), from img2dataset's ``<shard>_stats.json`` ("successes"), or by reading the tar.

Samples are read by random access (a header scan gives each member's offset), which is what lets the sample
order be a pure function of (seed, epoch) whatever the number of loader workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from braceexpand import braceexpand

from ..atomic import atomic_write_json
from ..errors import TrainingError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXT = "txt"


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

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "samples": self.samples,
                "shards": [{"path": s.path, "size": s.size, "used": s.used} for s in self.shards]}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        atomic_write_json(path, {**self.to_json(), "sha256": self.digest})


def expand_shards(pattern: str) -> list[str]:
    """The shard paths of a brace pattern, in order (several patterns may be joined with '::')."""
    paths = [p for part in pattern.split("::") for p in braceexpand(part.strip())]
    if not paths:
        raise TrainingError(f"shard pattern {pattern!r} names no shards")
    return paths


def _sizes_json(folder: Path, cache: dict[Path, dict | None]) -> dict | None:
    if folder not in cache:
        f = folder / "sizes.json"
        try:
            cache[folder] = json.loads(f.read_text()) if f.exists() else None
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"unreadable shard sizes file {f}: {exc}") from exc
    return cache[folder]


def declared_size(path: str, cache: dict[Path, dict | None]) -> int | None:
    """The sample count a sizes file declares for one shard, or None when no file says."""
    p = Path(path)
    sizes = _sizes_json(p.parent, cache)
    if sizes is not None and p.name in sizes:
        return int(sizes[p.name])
    stats = p.parent / f"{p.name.split('.')[0]}_stats.json"
    if stats.exists():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise TrainingError(f"unreadable img2dataset stats {stats}: {exc}") from exc
    return None


def plan_manifest(pattern: str, samples: int) -> Manifest:
    """The first shards of ``pattern`` that cover ``samples`` (raises TrainingError when they do not)."""
    cache: dict[Path, dict | None] = {}
    chosen: list[ShardUse] = []
    covered = 0
    paths = expand_shards(pattern)
    for path in paths:
        size = declared_size(path, cache)
        if size is None:
            size = len(index_tar(path))
        if size <= 0:
            continue
        used = min(size, samples - covered)
        chosen.append(ShardUse(path, size, used))
        covered += used
        if covered >= samples:
            return Manifest(pattern, samples, tuple(chosen))
    raise TrainingError(f"shards {pattern!r} hold {covered} samples, fewer than the {samples} asked for")


@dataclass(frozen=True)
class TarIndex:
    """Byte ranges of each sample's image and caption inside one tar, in file order."""

    img_off: np.ndarray
    img_len: np.ndarray
    txt_off: np.ndarray
    txt_len: np.ndarray

    def __len__(self) -> int:
        return len(self.img_off)


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def index_tar(path: str) -> TarIndex:
    """Scan the headers of one webdataset tar; raise TrainingError naming the shard if it is unusable."""
    rows: list[tuple[int, int, int, int]] = []
    key, img, txt = None, None, None

    def close() -> None:
        if key is None:
            return
        if img is None or txt is None:
            raise TrainingError(f"shard {path}: sample {key!r} lacks an image ({'/'.join(IMAGE_EXTS)}) or a .txt")
        rows.append((img[0], img[1], txt[0], txt[1]))

    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _split_key(m.name)
                if k.rpartition("/")[2].startswith((".", "__")):
                    continue
                if k != key:
                    close()
                    key, img, txt = k, None, None
                if ext in IMAGE_EXTS and img is None:
                    img = (m.offset_data, m.size)
                elif ext == TEXT_EXT:
                    txt = (m.offset_data, m.size)
            close()
    except (OSError, tarfile.TarError) as exc:
        raise TrainingError(f"shard {path} is missing or unreadable: {exc}") from exc
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return TarIndex(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy())


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


def build_table(manifest: Manifest) -> SampleTable:
    """Index every shard of the manifest (checking it holds what the manifest says it uses)."""
    parts: list[TarIndex] = []
    for i, s in enumerate(manifest.shards):
        idx = index_tar(s.path)
        if len(idx) < s.used or (s.used == s.size and len(idx) != s.size):
            raise TrainingError(f"shard {s.path} holds {len(idx)} samples, but its sizes file says {s.size}")
        parts.append(TarIndex(idx.img_off[:s.used], idx.img_len[:s.used], idx.txt_off[:s.used],
                              idx.txt_len[:s.used]))
    shard = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(parts)])
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return SampleTable(tuple(s.path for s in manifest.shards), shard, cat("img_off"), cat("img_len"),
                       cat("txt_off"), cat("txt_len"))


def read_range(fd: int, path: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of an open shard; a short read names the shard."""
    try:
        data = os.pread(fd, int(length), int(offset))
    except OSError as exc:
        raise TrainingError(f"shard {path} is unreadable: {exc}") from exc
    if len(data) != length:
        raise TrainingError(f"shard {path} is truncated (wanted {length} bytes at {offset})")
    return data
