"""Eval task folders in CLIP_benchmark's webdataset layout, read deterministically, with an image cache.

Layout (CLIP_benchmark builder.build_wds_dataset)::

    <folder>/test/nshards.txt, test/0.tar .. (n-1).tar
    <folder>/classnames.txt, zeroshot_classification_templates.txt   (classification)
    <folder>/dataset_type.txt                                         ("retrieval"; missing: classification)

Samples are grouped as webdataset groups them (key = member path up to the first dot of its base name);
an image is the first of .webp/.png/.jpg/.jpeg, decoded with PIL and converted to RGB as webdataset's
"pil" decoder does; a label is ``int`` of .cls; captions are ``str.splitlines`` of .txt. Order is file
order: shard 0..n-1, members in tar order, so every run sees the same examples in the same order.

Why we read the tars ourselves instead of through ``wds.WebDataset``: a map-style index (shard, offset)
lets a DataLoader decode in parallel worker processes and still yield examples in file order, and lets
the labels and captions be read once without decoding any image.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision.transforms import Compose, ToTensor

from ..errors import EvalError
from . import registry

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
_META = re.compile(r"__[^/]*__($|/)")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


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


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes lie: shard number, byte offset and size, member name (for messages)."""

    shard: int
    offset: int
    size: int
    name: str


@dataclass
class SampleIndex:
    images: list[ImageRef]
    labels: np.ndarray | None  # classification: int64 (n,)
    captions: list[list[str]] | None  # retrieval: captions per image


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
    kind = type_file.read_text().strip().lower() if type_file.is_file() else registry.CLASSIFICATION
    if kind in ("", "classification"):
        kind = registry.CLASSIFICATION
    elif kind != registry.RETRIEVAL:
        raise EvalError(f"{type_file}: unsupported dataset type {kind!r} (classification or retrieval)")
    return FolderInfo(folder, kind, _read_lines(folder / "classnames.txt"),
                      _read_lines(folder / "zeroshot_classification_templates.txt"), shards)


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {suffix: member}, tar) per sample of one shard, grouped as webdataset groups them."""
    try:
        with tarfile.open(shard, "r:") as tar:
            key, group = None, {}
            for m in tar:
                if not m.isreg() or _META.match(m.name):
                    continue
                parsed = _KEY.match(m.name)
                if not parsed:
                    continue
                prefix, suffix = parsed.group(1), parsed.group(2).lower()
                if prefix != key:
                    if group:
                        yield key, group, tar
                    key, group = prefix, {}
                if suffix in group:
                    raise EvalError(f"{shard}: duplicate file {m.name} in sample {prefix!r}")
                group[suffix] = m
            if group:
                yield key, group, tar
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EvalError(f"cannot read shard {shard}: {e}") from e


def index_samples(info: FolderInfo) -> SampleIndex:
    """Scan the shards once: image locations, plus labels or captions (small members only)."""
    images: list[ImageRef] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    for si, shard in enumerate(info.shards):
        for key, group, tar in _samples(shard):
            ext = next((e for e in IMAGE_EXTS if e in group), None)
            want = "txt" if info.kind == registry.RETRIEVAL else "cls"
            if ext is None or want not in group:
                raise EvalError(f"{shard}: sample {key!r} lacks an image ({'/'.join(IMAGE_EXTS)}) or .{want}"
                                f" (has {', '.join(sorted(group))})")
            m = group[ext]
            images.append(ImageRef(si, m.offset_data, m.size, m.name))
            data = tar.extractfile(group[want]).read()
            try:
                if want == "cls":
                    labels.append(int(data))
                else:
                    captions.append(data.decode("utf-8").splitlines())
            except (ValueError, UnicodeDecodeError) as e:
                raise EvalError(f"{shard}: bad {group[want].name}: {e}") from e
    if not images:
        raise EvalError(f"no samples in {info.folder / 'test'}")
    if info.kind == registry.RETRIEVAL:
        return SampleIndex(images, None, captions)
    return SampleIndex(images, np.asarray(labels, dtype=np.int64), None)


def decode_image(data: bytes, where: str) -> Image.Image:
    """webdataset's "pil" decoding: open, load, convert to RGB."""
    try:
        with io.BytesIO(data) as stream:
            img = Image.open(stream)
            img.load()
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt data
        raise EvalError(f"cannot decode image {where}: {e}") from e


class ShardImages(torch.utils.data.Dataset):
    """Map-style view of the images of one folder: item i = fn(decoded image i)."""

    def __init__(self, shards: tuple[Path, ...], refs: list[ImageRef], fn: Callable[[Image.Image], Any]):
        self.shards, self.refs, self.fn = shards, refs, fn

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> Any:
        ref = self.refs[i]
        shard = self.shards[ref.shard]
        with open(shard, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
        return self.fn(decode_image(data, f"{shard}:{ref.name}"))


def iterate_in_order(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int) -> Iterator[list]:
    """Batches (lists) of items in index order, decoded by ``num_workers`` processes (0: in this one)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=list)
    yield from loader


@dataclass
class TaskData:
    """One task folder, ready to be evaluated any number of times (labels/captions in memory)."""

    info: FolderInfo
    labels: np.ndarray | None
    captions: list[list[str]] | None
    n: int
    _batches: Callable[[int, int], Iterator[torch.Tensor]]
    cached: bool = False

    @property
    def kind(self) -> str:
        return self.info.kind

    def image_batches(self, batch_size: int = 64, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Preprocessed images, (B, C, H, W) float32, in file order."""
        return self._batches(batch_size, num_workers)


def load_task(folder: Path, preprocess: Callable, cache: ImageCache | None = None,
              num_workers: int = 0) -> TaskData | MissingData:
    """Open a task folder; with a cache, images are preprocessed once per (folder, preprocessing)."""
    info = read_folder(folder)
    if isinstance(info, MissingData):
        return info
    index: SampleIndex | None = None
    if cache is not None:
        fp = fingerprint_for(info.folder, info.shards, preprocess, info.kind)
        entry = cache.get(fp, preprocess)
        if entry is None:
            index = index_samples(info)
            entry = cache.build(fp, index, lambda fn: ShardImages(info.shards, index.images, fn), preprocess,
                                num_workers)
        if entry is not None:
            return TaskData(info, entry.labels, entry.captions, entry.n, entry.batches, cached=True)
        # Not cacheable (over the size cap, or a transform we cannot split losslessly): decode every time.
    if index is None:
        index = index_samples(info)

    def batches(batch_size: int, workers: int) -> Iterator[torch.Tensor]:
        ds = ShardImages(info.shards, index.images, preprocess)
        for items in iterate_in_order(ds, batch_size, workers):
            yield torch.stack(items)

    return TaskData(info, index.labels, index.captions, len(index.images), batches)


# ------------------------------------------------------------------------- preprocessed-image cache

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


class _AsFloat:
    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.preprocess(img).numpy().astype(np.float32, copy=False)


@dataclass
class CacheEntry:
    path: Path
    n: int
    mode: str  # "uint8": pixels after the PIL-side transforms; "float32": fully preprocessed tensors
    item_shape: tuple[int, ...]
    labels: np.ndarray | None
    captions: list[list[str]] | None
    post: Callable | None

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        dtype = np.uint8 if self.mode == "uint8" else np.float32
        arr = np.memmap(self.path / "images.bin", dtype=dtype, mode="r", shape=(self.n, *self.item_shape))
        for s in range(0, self.n, batch_size):
            block = np.array(arr[s:s + batch_size])
            yield torch.stack([self.post(x) for x in block]) if self.post else torch.from_numpy(block)


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

    def build(self, fp: dict, index: SampleIndex, source: Callable[[Callable], ShardImages],
              preprocess: Callable, num_workers: int = 0) -> CacheEntry | None:
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
                for items in iterate_in_order(source(fn), 64, num_workers):
                    for a in items:
                        if a.shape != item:
                            return None  # sizes vary (no crop): not cacheable as one array
                        f.write(np.ascontiguousarray(a).tobytes())
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
