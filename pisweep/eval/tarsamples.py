"""The samples of one eval task's tar shards: where each image lies (shard, offset), its label or captions, and a
map-style dataset that decodes images in parallel while examples keep their file order.

Samples are grouped as webdataset groups them (key = member path up to the first dot of its base name); an image is
the first of .webp/.png/.jpg/.jpeg, decoded by PIL and converted to RGB (webdataset's "pil" decoder); a label is
``int`` of .cls; captions are ``str.splitlines`` of .txt.
"""
from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pisweep.errors import EvalError
from pisweep.eval import registry

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
_META = re.compile(r"__[^/]*__($|/)")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes lie: shard number, byte offset and size, member name (for messages)."""

    shard: int
    offset: int
    size: int
    name: str


@dataclass
class SampleIndex:
    images: list[ImageRef]  # in file order
    labels: np.ndarray | None  # classification: int64 (n,)
    captions: list[list[str]] | None  # retrieval: captions per image


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


def index_samples(shards: tuple[Path, ...], kind: str, folder: Path) -> SampleIndex:
    """Scan a task's shards once: image locations, plus labels or captions (small members only)."""
    images: list[ImageRef] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    for si, shard in enumerate(shards):
        for key, group, tar in _samples(shard):
            ext = next((e for e in IMAGE_EXTS if e in group), None)
            want = "txt" if kind == registry.RETRIEVAL else "cls"
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
        raise EvalError(f"no samples in {folder / 'test'}")
    if kind == registry.RETRIEVAL:
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
