"""The paper's zero-shot suite: 29 classification + 2 retrieval tasks, keyed as DataComp keys them.

Why DataComp keys: the PI paper's aggregation script lists its benchmarks by DataComp task key
(shared/reference/paper-protocol.md §1.6), and DataComp fixes each task's main metric. The data itself
is CLIP_benchmark's published webdataset sets, so every task also knows its CLIP_benchmark dataset
name and the ``wds_<name with / -> ->`` folder that users download. Pure: no torch, only path checks.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pisweep.errors import EvalError

#: Bump when a task's data, metric or preprocessing semantics change (enters caches and result files).
SUITE_VERSION = "1"

CLASSIFICATION = "classification"
RETRIEVAL = "retrieval"

CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RECALL_K = (1, 5, 10)
RETRIEVAL_METRICS = tuple(
    [f"image_retrieval_recall@{k}" for k in RECALL_K] + [f"text_retrieval_recall@{k}" for k in RECALL_K]
    + ["mean_recall@1"])


@dataclass(frozen=True)
class Task:
    """One benchmark: how to find its folder and which number summarises it."""

    key: str  # DataComp key, e.g. "vtab/cifar100"; for an ad-hoc folder task, the folder name
    kind: str  # "classification" | "retrieval" (| "2afc" for the NIGHTS pseudo-task)
    main_metric: str
    display_name: str
    cb_name: str | None  # CLIP_benchmark dataset name (without "wds/"), None for ad-hoc folders

    @property
    def folder_name(self) -> str:
        """Default folder under the eval root: CLIP_benchmark's published ``wds_*`` set."""
        if self.cb_name is None:
            return self.key
        return "wds_" + self.cb_name.replace("/", "-")

    @property
    def alt_folder_names(self) -> tuple[str, ...]:
        """Other names we accept: DataComp's own download (``wds_<key>_test``) for classification tasks."""
        if self.cb_name is None or self.kind != CLASSIFICATION:
            return ()
        return ("wds_" + self.key.replace("/", "-") + "_test",)

    @property
    def file_stem(self) -> str:
        """Safe file name stem for result files (keys contain "/")."""
        return self.key.replace("/", "-")


def _c(key: str, name: str, cb: str | None = None, metric: str = "acc1") -> Task:
    return Task(key, CLASSIFICATION, metric, name, cb or key)


_MPCR = "mean_per_class_recall"

# Order and keys exactly as in paper-protocol.md §1.6 (the fork's TARGET_BENCHMARKS).
_TASKS: tuple[Task, ...] = (
    _c("imagenet1k", "ImageNet 1k"),
    _c("imagenetv2", "ImageNet v2"),
    _c("imagenet_sketch", "ImageNet Sketch"),
    _c("imagenet-a", "ImageNet-A"),
    _c("imagenet-o", "ImageNet-O"),
    _c("imagenet-r", "ImageNet-R"),
    _c("objectnet", "ObjectNet"),
    _c("vtab/caltech101", "Caltech-101", metric=_MPCR),
    _c("cifar10", "CIFAR-10", cb="vtab/cifar10"),
    _c("vtab/cifar100", "CIFAR-100"),
    _c("vtab/clevr_count_all", "CLEVR Counts"),
    _c("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    _c("vtab/dtd", "Describable Textures"),
    _c("vtab/eurosat", "EuroSAT"),
    _c("vtab/flowers", "Oxford Flowers-102", metric=_MPCR),
    _c("vtab/pets", "Oxford-IIIT Pet", metric=_MPCR),
    _c("vtab/pcam", "PatchCamelyon"),
    _c("vtab/resisc45", "RESISC45"),
    _c("vtab/svhn", "SVHN"),
    _c("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    _c("cars", "Stanford Cars"),
    _c("fgvc_aircraft", "FGVC Aircraft", metric=_MPCR),
    _c("food101", "Food-101"),
    _c("country211", "Country211"),
    _c("gtsrb", "GTSRB"),
    _c("mnist", "MNIST"),
    _c("stl10", "STL-10"),
    _c("renderedsst2", "Rendered SST2"),
    _c("voc2007", "Pascal VOC 2007"),
    Task("retrieval/flickr_1k_test_image_text_retrieval", RETRIEVAL, "mean_recall@1", "Flickr30k (1k test)",
         "flickr30k"),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", RETRIEVAL, "mean_recall@1", "MSCOCO (5k test)",
         "mscoco_captions"),
)

TASKS: dict[str, Task] = {t.key: t for t in _TASKS}
SUITE_KEYS: tuple[str, ...] = tuple(t.key for t in _TASKS)
CLASSIFICATION_KEYS: tuple[str, ...] = tuple(t.key for t in _TASKS if t.kind == CLASSIFICATION)
RETRIEVAL_KEYS: tuple[str, ...] = tuple(t.key for t in _TASKS if t.kind == RETRIEVAL)

#: NIGHTS 2AFC (human alignment) is reported beside the suite but is not one of the 31 tasks. Its result files are
#: versioned apart from the suite (NIGHTS_VERSION): "nights-2" added the per-triplet outcomes and DreamSim's total.
NIGHTS_2AFC = Task("nights_2afc", "2afc", "nights_val_2afc", "NIGHTS 2AFC", None)
NIGHTS_VERSION = "nights-2"
NIGHTS_SUBSETS = ("val", "test_imagenet", "test_no_imagenet")
NIGHTS_TOTAL = "test"  # DreamSim's nights_total: both test subsets together, i.e. their size-weighted mean
NIGHTS_METRICS = tuple(f"nights_{s}_2afc" for s in (*NIGHTS_SUBSETS, "total"))
PSEUDO_TASKS: dict[str, Task] = {NIGHTS_2AFC.key: NIGHTS_2AFC}

_BY_FOLDER: dict[str, Task] = {}
for _t in _TASKS:
    for _name in (_t.folder_name, *_t.alt_folder_names):
        _BY_FOLDER[_name] = _t


def get_task(key: str) -> Task:
    """The suite task (or pseudo-task) ``key``; EvalError listing the known keys otherwise."""
    if key in TASKS:
        return TASKS[key]
    if key in PSEUDO_TASKS:
        return PSEUDO_TASKS[key]
    raise EvalError(f"unknown eval task {key!r}; known: {', '.join(SUITE_KEYS)}")


def lookup(name: str) -> Task | None:
    """A suite task by DataComp key or by folder name (``wds_vtab-cifar10``), else None."""
    return TASKS.get(name) or _BY_FOLDER.get(name)


def folder_task(folder_name: str, kind: str) -> Task:
    """An ad-hoc task for any folder under the eval root (``pisweep eval --tasks wds_foo``)."""
    if kind not in (CLASSIFICATION, RETRIEVAL):
        raise EvalError(f"eval folder {folder_name!r}: unsupported dataset type {kind!r}")
    return Task(folder_name, kind, "acc1" if kind == CLASSIFICATION else "mean_recall@1", folder_name, None)


def metric_names(kind: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if kind == CLASSIFICATION else RETRIEVAL_METRICS


def resolve_folder(eval_root: Path, key: str, overrides: Mapping[str, str] | None = None) -> Path:
    """Folder of ``key`` under ``eval_root``.

    An override (key -> path, absolute or relative to the eval root) wins. Otherwise the first existing of
    CLIP_benchmark's ``wds_*`` name and DataComp's ``wds_*_test`` name; if neither exists, the former (so a
    "missing" message names the folder users are expected to download). Unknown keys are folder names.
    """
    eval_root = Path(eval_root)
    if overrides and key in overrides:
        return eval_root / Path(overrides[key]).expanduser()
    task = TASKS.get(key)
    if task is None:
        return eval_root / key
    candidates = [eval_root / task.folder_name] + [eval_root / n for n in task.alt_folder_names]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def shards_listing(folder: Path) -> Path:
    """The file whose presence makes a task folder count as present."""
    return Path(folder) / "test" / "nshards.txt"


def coverage(eval_root: Path, keys: list[str] | tuple[str, ...],
             overrides: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, Path]]:
    """Which of ``keys`` have data: (present keys, {missing key: folder path}).

    Present means ``<folder>/test/nshards.txt`` exists (a partial download without it is missing).
    Pseudo-tasks such as ``nights_2afc`` are not part of the suite and are skipped.
    """
    present: list[str] = []
    missing: dict[str, Path] = {}
    for key in keys:
        if key in PSEUDO_TASKS:
            continue
        folder = resolve_folder(eval_root, key, overrides)
        if shards_listing(folder).is_file():
            present.append(key)
        else:
            missing[key] = folder
    return present, missing


# ------------------------------------------------------------------ built-in class names and templates

@functools.cache
def _builtin(name: str) -> dict:
    """Package data (pisweep/eval/data/*.json), read on first use; dumped from CLIP_benchmark/open_clip."""
    with importlib.resources.files("pisweep.eval").joinpath("data", name).open("r", encoding="utf-8") as f:
        return json.load(f)


def builtin_classnames(key: str) -> list[str] | None:
    """Class names shipped for a suite task; used only when its folder lacks classnames.txt."""
    names = _builtin("classnames.json")["classnames"].get(key)
    return list(names) if names else None


def builtin_templates(key: str) -> list[str]:
    """Templates shipped for a suite task; else CLIP_benchmark's default (ImageNet's 80 OpenAI templates)."""
    data = _builtin("templates.json")
    return list(data["templates"].get(key) or data["templates"][data["default"]])
