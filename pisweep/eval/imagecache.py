"""Preprocessed images on disk, so that a warm evaluator decodes each eval image once, not once per checkpoint.

Why: decoding and resizing dominate a small model's evaluation (and a GPU's), and they do not depend on the
weights. An entry holds the pixels after the PIL-side transforms (uint8, 4x smaller than floats); the cheap,
exact tensor-side transforms (ToTensor, Normalize) are re-applied when reading, so the batches are bit-identical
to decoding afresh. Split out of :mod:`pisweep.eval.datasets`, which re-exports these names.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision.transforms import Compose, Normalize, ToTensor

from pisweep.eval import registry

if TYPE_CHECKING:
    from pisweep.eval.tarsamples import SampleIndex, ShardImages


def iterate_in_order(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int) -> Iterator[list]:
    """Batches (lists) of items in index order, decoded by ``num_workers`` processes (0: in this one)."""
    from pisweep.job.signals import ignore_stop_signals  # SLURM signals every process: only the job decides

    yield from torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                           collate_fn=list,
                                           worker_init_fn=ignore_stop_signals if num_workers else None)


CACHE_FORMAT = 1
DEFAULT_CACHE_MAX_BYTES = 64 << 30
_STALE_TMP_S = 24 * 3600


def split_preprocess(preprocess: Callable) -> tuple[Compose, Compose] | None:
    """(PIL-side transforms, tensor-side transforms) split at ToTensor, or None if there is none.

    Why: the PIL side (resize, crop, RGB) is the expensive part and yields uint8 pixels, 4x smaller than
    floats; the tensor side (ToTensor, Normalize) is cheap, exact and re-applied when reading.
    """
    ts = getattr(preprocess, "transforms", None)
    if not isinstance(ts, list):
        return None
    for i, t in enumerate(ts):
        if isinstance(t, ToTensor):
            return Compose(ts[:i]), Compose(ts[i:])
    return None


def fingerprint_for(folder: Path, shards: tuple[Path, ...], preprocess: Callable, kind: str) -> dict:
    """Everything the cached pixels depend on (shards by size and mtime: hashing GBs would defeat it)."""
    stats = [[s.name, s.stat().st_size, s.stat().st_mtime_ns] for s in shards]
    return {"format": CACHE_FORMAT, "suite": registry.SUITE_VERSION, "kind": kind,
            "folder": str(Path(folder).resolve()), "shards": stats,
            "preprocess": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess)),
            "pil": PIL.__version__, "torchvision": torchvision.__version__}


class _AsUint8:
    def __init__(self, pre: Callable):
        self.pre = pre

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.asarray(self.pre(img), dtype=np.uint8)


class _AsFloat(_AsUint8):
    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.pre(img).numpy().astype(np.float32, copy=False)


@dataclass
class CacheEntry:
    path: Path
    n: int
    mode: str  # "uint8": pixels after the PIL-side transforms; "float32": fully preprocessed tensors
    item_shape: tuple[int, ...]
    labels: np.ndarray | None
    captions: list[list[str]] | None
    post: Callable | None
    _whole_batch: Callable[[np.ndarray], torch.Tensor] | None = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._whole_batch = batch_post(self.post) if self.post is not None else None

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        dtype = np.uint8 if self.mode == "uint8" else np.float32
        arr = np.memmap(self.path / "images.bin", dtype=dtype, mode="r", shape=(self.n, *self.item_shape))
        for s in range(0, self.n, batch_size):
            block = np.array(arr[s:s + batch_size])
            if self.post is None:
                yield torch.from_numpy(block)
            elif self._whole_batch is None:
                yield torch.stack([self.post(x) for x in block])
            else:
                fast = self._whole_batch(block)
                if not self._checked:  # once per entry: the batch form must equal the per-image form, bit for bit
                    slow = torch.stack([self.post(x) for x in block])
                    self._checked = True
                    if not torch.equal(fast, slow):
                        self._whole_batch, fast = None, slow
                yield fast


_TO_TENSOR_TYPES = {("torchvision.transforms.transforms", "ToTensor"), ("open_clip.transform", "MaybeToTensor")}


def batch_post(post: Callable) -> Callable[[np.ndarray], torch.Tensor] | None:
    """The tensor-side transforms for a whole (B, H, W, C) uint8 block at once, if they are ToTensor + Normalize.

    Why: one image at a time, they cost about a tenth of a tiny-model epoch. On a block they are the same
    elementwise float operations (to float, /255, -mean, /std), so the values are bit-identical (and checked
    against the per-image form on an entry's first batch). None for any other pipeline.
    """
    ts = getattr(post, "transforms", None)
    if not isinstance(ts, list) or len(ts) != 2:
        return None
    to_tensor, normalize = ts
    kind = (type(to_tensor).__module__, type(to_tensor).__name__)
    if kind not in _TO_TENSOR_TYPES or type(normalize) is not Normalize:
        return None

    def apply(block: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(block.transpose(0, 3, 1, 2)).contiguous()  # as ToTensor, per image: CHW, then float
        return normalize(x.to(dtype=torch.get_default_dtype()).div(255))

    return apply


class ImageCache:
    """Preprocessed images on disk, one entry per (task folder, preprocessing fingerprint).

    An entry is built in a hidden temp folder and renamed into place, so readers never see a partial one;
    when two processes race, the first rename wins and the other discards its copy. ``max_bytes`` caps
    the total: an entry that would exceed it is simply not cached (nothing is evicted).
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_MAX_BYTES):
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".tmp-*"):  # left by killed builders
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def entry_name(fp: dict) -> str:
        return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:24]

    def usage(self) -> int:
        return sum(f.stat().st_size for d in self.root.iterdir() if not d.name.startswith(".") and d.is_dir()
                   for f in d.iterdir() if f.is_file())

    def get(self, fp: dict, preprocess: Callable) -> CacheEntry | None:
        path = self.root / self.entry_name(fp)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("fingerprint") != fp:
            return None
        labels = np.load(path / "labels.npy") if (path / "labels.npy").is_file() else None
        captions = json.loads((path / "captions.json").read_text()) if fp["kind"] == registry.RETRIEVAL else None
        split = split_preprocess(preprocess)
        post = split[1] if meta["mode"] == "uint8" and split else None
        if meta["mode"] == "uint8" and post is None:
            return None
        return CacheEntry(path, meta["n"], meta["mode"], tuple(meta["item_shape"]), labels, captions, post)

    def build(self, fp: dict, index: SampleIndex, source: Callable[[Callable], ShardImages], preprocess: Callable,
              num_workers: int = 0, progress: Callable[[str, int, int], None] | None = None) -> CacheEntry | None:
        """Decode every image once into a new entry; None when it cannot or may not be cached."""
        n = len(index.images)
        first = source(lambda img: img)[0]
        mode, fn, item = "float32", _AsFloat(preprocess), tuple(preprocess(first).shape)
        split = split_preprocess(preprocess)
        if split is not None:
            pixels = _AsUint8(split[0])(first)
            if pixels.ndim == 3 and torch.equal(split[1](pixels.copy()), preprocess(first)):
                mode, fn, item = "uint8", _AsUint8(split[0]), pixels.shape
        itemsize = 1 if mode == "uint8" else 4
        if self.usage() + n * int(np.prod(item)) * itemsize > self.max_bytes:
            return None
        final = self.root / self.entry_name(fp)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with open(tmp / "images.bin", "wb") as f:
                for b, items in enumerate(iterate_in_order(source(fn), 64, num_workers)):
                    for a in items:
                        if a.shape != item:
                            return None  # sizes vary (no crop): not cacheable as one array
                        f.write(np.ascontiguousarray(a).tobytes())
                    if progress:
                        progress("cache", min(n, (b + 1) * 64), n)
                f.flush()
                os.fsync(f.fileno())
            if index.labels is not None:
                np.save(tmp / "labels.npy", index.labels)
            if index.captions is not None:
                (tmp / "captions.json").write_text(json.dumps(index.captions))
            meta = {"fingerprint": fp, "n": n, "mode": mode, "item_shape": list(item)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(fp, preprocess)
