"""Eval task folders in CLIP_benchmark's webdataset layout, read deterministically, with an image cache.

Layout (CLIP_benchmark builder.build_wds_dataset)::

    <folder>/test/nshards.txt, test/0.tar .. (n-1).tar
    <folder>/classnames.txt, zeroshot_classification_templates.txt   (classification)
    <folder>/dataset_type.txt                                         ("retrieval"; missing: classification)

Samples are grouped as webdataset groups them (key = member path up to the first dot of its base name);
an image is the first of .webp/.png/.jpg/.jpeg, decoded by PIL and converted to RGB (webdataset's "pil"
decoder); a label is ``int`` of .cls; captions are ``str.splitlines`` of .txt. Order is file order.
We index the tars ourselves (shard, offset) so that DataLoader workers decode in parallel and examples
still come in file order, and labels/captions are read without decoding any image (eval/tarsamples.py). The
image cache is eval/imagecache.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pisweep.errors import EvalError
from pisweep.eval import registry
from pisweep.eval.imagecache import ImageCache, fingerprint_for, iterate_in_order
from pisweep.eval.tarsamples import SampleIndex, ShardImages, index_samples


@dataclass(frozen=True)
class MissingData:
    """A task whose data is not there: reported per task, the rest of the suite still runs."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FolderInfo:
    """What a task folder declares, before any tar is read."""

    folder: Path
    kind: str  # "classification" | "retrieval"
    classnames: list[str] | None  # from classnames.txt, None when absent
    templates: list[str] | None  # from zeroshot_classification_templates.txt, None when absent
    shards: tuple[Path, ...]


def _read_lines(path: Path) -> list[str] | None:
    """CLIP_benchmark's reading of classnames/templates: every line, stripped; None when absent."""
    if not path.is_file():
        return None
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"cannot read {path}: {e}") from e
    if not lines:
        raise EvalError(f"{path} is empty")
    return lines


def read_folder(folder: Path) -> FolderInfo | MissingData:
    """Read a task folder's declarations; MissingData if it (or a listed shard) is absent."""
    folder = Path(folder)
    if not folder.is_dir():
        return MissingData(folder, f"eval data folder not found: {folder}")
    listing = registry.shards_listing(folder)
    if not listing.is_file():
        return MissingData(listing, f"no test split in {folder} (missing {listing})")
    try:
        n = int(listing.read_text())
    except ValueError as e:
        raise EvalError(f"{listing}: expected the number of shards, got {listing.read_text()[:40]!r}") from e
    if n < 1:
        raise EvalError(f"{listing}: number of shards must be >= 1, got {n}")
    shards = tuple(listing.parent / f"{i}.tar" for i in range(n))
    for s in shards:
        if not s.is_file():
            return MissingData(s, f"shard missing: {s} ({listing} lists {n})")
    type_file = folder / "dataset_type.txt"
    kind = (type_file.read_text().strip().lower() if type_file.is_file() else "") or registry.CLASSIFICATION
    if kind not in (registry.CLASSIFICATION, registry.RETRIEVAL):
        raise EvalError(f"{type_file}: unsupported dataset type {kind!r} (classification or retrieval)")
    return FolderInfo(folder, kind, _read_lines(folder / "classnames.txt"),
                      _read_lines(folder / "zeroshot_classification_templates.txt"), shards)


@dataclass
class TaskData:
    """One task folder, ready to be evaluated any number of times (labels/captions in memory)."""

    info: FolderInfo
    labels: np.ndarray | None
    captions: list[list[str]] | None
    n: int
    _batches: Callable[[int, int], Iterator[torch.Tensor]]
    cached: bool = False

    kind = property(lambda self: self.info.kind)

    def image_batches(self, batch_size: int = 64, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Preprocessed images, (B, C, H, W) float32, in file order."""
        return self._batches(batch_size, num_workers)


def load_task(folder: Path, preprocess: Callable, cache: ImageCache | None = None, num_workers: int = 0,
              progress: Callable[[str, int, int], None] | None = None) -> TaskData | MissingData:
    """Open a task folder; with a cache, images are preprocessed once per (folder, preprocessing).

    ``progress("cache", done, total)`` reports the building of a cache entry."""
    info = read_folder(folder)
    if isinstance(info, MissingData):
        return info
    index: SampleIndex | None = None
    if cache is not None:
        fp = fingerprint_for(info.folder, info.shards, preprocess, info.kind)
        entry = cache.get(fp, preprocess)
        if entry is None:
            index = index_samples(info.shards, info.kind, info.folder)
            entry = cache.build(fp, index, lambda fn: ShardImages(info.shards, index.images, fn), preprocess,
                                num_workers, progress)
        if entry is not None:  # else over the size cap, or images of varying size: decode every time
            return TaskData(info, entry.labels, entry.captions, entry.n, entry.batches, cached=True)
    if index is None:
        index = index_samples(info.shards, info.kind, info.folder)

    def batches(batch_size: int, workers: int) -> Iterator[torch.Tensor]:
        ds = ShardImages(info.shards, index.images, preprocess)
        for items in iterate_in_order(ds, batch_size, workers):
            yield torch.stack(items)

    return TaskData(info, index.labels, index.captions, len(index.images), batches)
