"""Synthetic NIGHTS, training shards and eval sets, written in the *real* on-disk formats.

Why: the whole pipeline (stage-1 NIGHTS init, open_clip webdataset training, CLIP_benchmark-style eval)
must run end to end on a CPU in minutes with no downloads, and read its data exactly as it would read the
real sets. The images come from :mod:`pisweep.data.world`; everything is a pure function of the config.

Layout under ``root`` (see :func:`layout_for`)::

    nights/{ref,distort}/NNN/*.png, nights/data.csv      NIGHTS' own layout and column order
    train/<scale>/{00000..}.tar, *_stats.json, sizes.json  img2dataset webdataset + open_clip's sizes.json
    eval/wds_<task>/test/{nshards.txt,0.tar..}, ...        CLIP_benchmark webdataset layout
    pisweep-synth.json                                    marker with the config hash, present only when complete

A build happens in a hidden temp folder next to ``root`` and is renamed into place, so an interrupted run
never leaves a ``root`` that looks complete.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from pisweep.data import world
from pisweep.data.synth_config import EVAL_TASK_NAMES, GENERATOR_VERSION, SynthConfig  # noqa: F401 (re-exported)
from pisweep.errors import DataError

MARKER = "pisweep-synth.json"
NIGHTS_COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path",
                  "prompt", "split", "is_imagenet")
NIGHTS_PER_FOLDER = 100
_MTIME = 1_600_000_000  # fixed tar member time: identical configs give identical bytes
_CHUNK = 64  # items between progress calls

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalTask:
    """One synthetic CLIP_benchmark task: what each class fixes in the scene, and how samples are stored."""

    name: str
    stream: int  # random stream of the world (disjoint from train = 1 and NIGHTS = 2, 3)
    ext: str
    classes: tuple[dict, ...] = ()  # per class: kwargs of world.sample_scene; empty -> retrieval
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    class_weights: tuple[float, ...] = ()  # relative class sizes (empty: balanced)

    @property
    def folder(self) -> str:
        return "wds_" + self.name.replace("/", "-")

    @property
    def retrieval(self) -> bool:
        return not self.classes


_IN_SHAPES, _IN_COLOURS = world.SHAPES[:6], ("red", "green", "blue", "yellow")
_PETS_COLOURS = tuple(world.COLOURS)
_EVAL_TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("imagenet1k", 10, "webp",
             tuple({"shape": s, "colour": c} for s in _IN_SHAPES for c in _IN_COLOURS),
             tuple(f"{c} {s}" for s in _IN_SHAPES for c in _IN_COLOURS),
             ("a photo of a {c}.", "a picture of a {c}.", "a drawing of a {c}.", "a {c} on a background.",
              "there is a {c}.")),
    EvalTask("vtab/cifar10", 11, "png", tuple({"shape": s} for s in world.SHAPES), world.SHAPES,
             ("a photo of a {c}.", "a picture of a {c}.", "a {c} shape.", "a drawing of a {c}.")),
    EvalTask("vtab/pets", 12, "jpg", tuple({"colour": c} for c in _PETS_COLOURS), _PETS_COLOURS,
             ("a photo of a {c} shape.", "something {c}.", "a {c} object."),
             class_weights=(1.5, 1.0, 0.5, 1.25, 0.75, 1.0)),
    EvalTask("renderedsst2", 13, "png", ({"texture": "striped"}, {"texture": "dotted"}), ("striped", "dotted"),
             ("a shape on a {c} background.", "a {c} pattern.")),
    EvalTask("flickr30k", 14, "jpg"),
    EvalTask("mscoco_captions", 15, "jpg"),
)}
EVAL_TASKS = {name: _EVAL_TASKS[name] for name in EVAL_TASK_NAMES}  # the config's canonical order
RETRIEVAL_CAPTIONS = 5


@dataclass(frozen=True)
class TrainShards:
    pattern: str  # brace pattern, as open_clip's --train-data takes it
    num_samples: int
    num_shards: int


@dataclass(frozen=True)
class SynthLayout:
    """Where a synthetic set lies (absolute paths); the same for the same (root, config)."""

    root: Path
    nights_root: Path
    train: Mapping[str, TrainShards]
    eval_root: Path
    eval_tasks: Mapping[str, Path]  # CLIP_benchmark task name -> its wds_* folder
    config_hash: str


def shard_size(n: int, cfg: SynthConfig) -> int:
    return max(1, min(cfg.samples_per_shard, math.ceil(n / cfg.min_shards)))


def layout_for(root: Path, cfg: SynthConfig) -> SynthLayout:
    """The layout ``synthesize`` produces, computed without touching the disk (planning needs it early)."""
    root = Path(root).absolute()
    train = {}
    for scale, n in cfg.train_scales.items():
        shards = math.ceil(n / shard_size(n, cfg))
        train[scale] = TrainShards(f"{root}/train/{scale}/{{00000..{shards - 1:05d}}}.tar", n, shards)
    eval_root = root / "eval"
    return SynthLayout(root, root / "nights", train, eval_root,
                       {t: eval_root / EVAL_TASKS[t].folder for t in cfg.eval_tasks}, cfg.config_hash())


def synthesize(root: Path, cfg: SynthConfig, progress: Progress | None = None) -> SynthLayout:
    """Generate the synthetic set under ``root`` unless a complete one for ``cfg`` is there already.

    ``progress(stage, done, total)`` is called as work proceeds; an exception it raises aborts the build
    and leaves nothing behind. An existing ``root`` is replaced only if it is a synthetic set (has the
    marker) or is empty; anything else raises :class:`DataError`.
    """
    root = Path(root).absolute()
    layout = layout_for(root, cfg)
    if _is_complete(root, layout.config_hash):
        return layout
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the set is shared data once renamed
        report = progress or (lambda stage, done, total: None)
        _write_nights(tmp / "nights", cfg, report)
        for scale, n in cfg.train_scales.items():
            _write_train(tmp / "train" / scale, n, cfg, report, f"train/{scale}")
        for name in cfg.eval_tasks:
            _write_eval(tmp / "eval" / EVAL_TASKS[name].folder, EVAL_TASKS[name], cfg, report)
        marker = {"config_hash": layout.config_hash, "generator_version": GENERATOR_VERSION,
                  "config": cfg.model_dump(mode="json")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, root, layout.config_hash)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return layout


def _is_complete(root: Path, config_hash: str) -> bool:
    try:
        return json.loads((root / MARKER).read_text()).get("config_hash") == config_hash
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(root: Path) -> None:
    if root.exists() and not (root / MARKER).exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root} exists and is not a pisweep synthetic data set; refusing to overwrite it")


def _move_into_place(tmp: Path, root: Path, config_hash: str) -> None:
    """Rename ``tmp`` to ``root``; an older set (other config) is moved aside first and then deleted."""
    old = None
    if root.exists():
        if _is_complete(root, config_hash):  # another process finished the same set meanwhile
            return
        _check_replaceable(root)
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "set")
    try:
        os.rename(tmp, root)
    except OSError as err:
        if _is_complete(root, config_hash):
            return
        if old is not None and not root.exists():
            os.replace(old / "set", root)  # put the previous set back
        raise DataError(f"cannot move the synthetic set into {root}: {err}") from err
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- NIGHTS

def nights_rel_paths(triplet_id: int) -> tuple[str, str, str]:
    """``ref/FFF/III.png``, ``distort/FFF/III_0.png`` (left), ``distort/FFF/III_1.png`` (right)."""
    folder, item = divmod(triplet_id, NIGHTS_PER_FOLDER)
    stem = f"{folder:03d}/{item:03d}"
    return f"ref/{stem}.png", f"distort/{stem}_0.png", f"distort/{stem}_1.png"


def _write_nights(out: Path, cfg: SynthConfig, report: Progress) -> None:
    """Candidate triplets are drawn until enough unanimous and low-vote ones exist; the others are skipped
    (so, as in NIGHTS, not every id exists). The id is the candidate index: tests can re-derive its scenes."""
    total = cfg.nights_triplets + cfg.nights_low_vote_rows
    rows, kept, low, index = [], 0, 0, 0
    imagenet = {(c["shape"], c["colour"]) for c in EVAL_TASKS["imagenet1k"].classes}
    report("nights", 0, total)
    while kept < cfg.nights_triplets or low < cfg.nights_low_vote_rows:
        scenes = world.nights_triplet(cfg.seed, index)
        ref = scenes[0]
        d_left, d_right = (world.perceptual_distance(ref, s, cfg.judgments) for s in scenes[1:])
        right, votes = world.simulate_votes(cfg.seed, index, d_left, d_right)
        unanimous = votes >= 6
        if (unanimous and kept < cfg.nights_triplets) or (not unanimous and low < cfg.nights_low_vote_rows):
            kept, low = kept + unanimous, low + (not unanimous)
            paths = nights_rel_paths(index)
            for rel, scene in zip(paths, scenes):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(_encode(world.render(scene, cfg.image_size), "png"))
            rows.append({"id": index, "left_vote": int(not right), "right_vote": int(right), "votes": votes,
                         "ref_path": paths[0], "left_path": paths[1], "right_path": paths[2],
                         "prompt": f"An image of a {world.obj_phrase(ref.main)}",
                         "is_imagenet": (ref.main.shape, ref.main.colour) in imagenet})
            if len(rows) % _CHUNK == 0:
                report("nights", len(rows), total)
        index += 1
        if index > 100 * total:  # cannot happen with the world's rater noise; guards against an endless loop
            raise DataError(f"NIGHTS synthesis: {index} candidates gave only {kept} unanimous, {low} low-vote rows")
    _assign_splits(rows, np.random.default_rng([cfg.seed, 4]))
    with open(out / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=NIGHTS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    report("nights", total, total)


def _assign_splits(rows: list[dict], rng: np.random.Generator) -> None:
    """70/15/15 train/val/test, stratified by is_imagenet so both test subsets are non-empty."""
    for flag in (True, False):
        group = [r for r in rows if r["is_imagenet"] == flag]
        order = rng.permutation(len(group))
        n_val = n_test = max(1, round(0.15 * len(group))) if len(group) >= 3 else 0
        for rank, i in enumerate(order):
            group[i]["split"] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"


# ---------------------------------------------------------------- training shards (img2dataset layout)

def _write_train(out: Path, n: int, cfg: SynthConfig, report: Progress, stage: str) -> None:
    """Sample i is the same image and caption at every scale (scales are nested prefixes)."""
    out.mkdir(parents=True)
    per = shard_size(n, cfg)
    sizes, done = {}, 0
    report(stage, 0, n)
    for shard in range(math.ceil(n / per)):
        name = f"{shard:05d}"
        count = min(per, n - shard * per)
        with tarfile.open(out / f"{name}.tar", "w") as tar:
            for j in range(count):
                i = shard * per + j
                rng = world.rng_for(cfg.seed, 1, i)
                scene = world.sample_scene(rng, n_objects=2 if rng.random() < cfg.multi_object_prob else 1)
                text = world.caption(scene, int(rng.integers(len(world.CAPTION_TEMPLATES))))
                jpg = _encode(world.render(scene, cfg.image_size), "jpg")
                key = f"{name}{j:04d}"
                meta = {"url": f"synthetic://train/{i}", "key": key, "caption": text, "status": "success",
                        "error_message": None, "width": cfg.image_size, "height": cfg.image_size,
                        "original_width": cfg.image_size, "original_height": cfg.image_size, "exif": "{}",
                        "sha256": hashlib.sha256(jpg).hexdigest()}
                _add(tar, f"{key}.jpg", jpg)
                _add(tar, f"{key}.txt", text.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                done += 1
                if done % _CHUNK == 0:
                    report(stage, done, n)
        stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
                 "duration": 0.0, "start_time": float(_MTIME), "end_time": float(_MTIME),
                 "status_dict": {"success": count}}
        (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
        sizes[f"{name}.tar"] = count
    (out / "sizes.json").write_text(json.dumps(sizes, indent=2))
    report(stage, n, n)


# ---------------------------------------------------------------- eval sets (CLIP_benchmark wds layout)

def eval_labels(task: EvalTask, cfg: SynthConfig) -> list[int]:
    """Class of each sample, shuffled; class sizes follow ``class_weights`` (>= 2 per class)."""
    weights = task.class_weights or (1.0,) * len(task.classes)
    labels = [c for c, w in enumerate(weights) for _ in range(max(2, round(w * cfg.eval_examples_per_class)))]
    order = np.random.default_rng([cfg.seed, task.stream, 0]).permutation(len(labels))
    return [labels[i] for i in order]


def _write_eval(out: Path, task: EvalTask, cfg: SynthConfig, report: Progress) -> None:
    labels = [] if task.retrieval else eval_labels(task, cfg)
    n = cfg.eval_retrieval_images if task.retrieval else len(labels)
    stage = f"eval/{task.name}"
    report(stage, 0, n)
    (out / "test").mkdir(parents=True)
    if task.retrieval:
        (out / "dataset_type.txt").write_text("retrieval\n")
    else:
        (out / "classnames.txt").write_text("".join(f"{c}\n" for c in task.classnames))
        (out / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in task.templates))
    n_shards = math.ceil(n / cfg.eval_samples_per_shard)
    (out / "test" / "nshards.txt").write_text(f"{n_shards}\n")
    for shard in range(n_shards):
        with tarfile.open(out / "test" / f"{shard}.tar", "w") as tar:
            for i in range(shard * cfg.eval_samples_per_shard, min(n, (shard + 1) * cfg.eval_samples_per_shard)):
                rng = world.rng_for(cfg.seed, task.stream, i + 1)
                key = f"s{i:07d}"
                if task.retrieval:
                    scene = world.sample_scene(rng)
                    picks = rng.permutation(len(world.CAPTION_TEMPLATES))[:RETRIEVAL_CAPTIONS]
                    _add(tar, f"{key}.txt", "\n".join(world.caption(scene, int(t)) for t in picks).encode())
                else:
                    scene = world.sample_scene(rng, **task.classes[labels[i]])
                    _add(tar, f"{key}.cls", str(labels[i]).encode())
                _add(tar, f"{key}.{task.ext}", _encode(world.render(scene, cfg.image_size), task.ext))
                if (i + 1) % _CHUNK == 0:
                    report(stage, i + 1, n)
    report(stage, n, n)


# ---------------------------------------------------------------- helpers

_FORMATS = {"jpg": ("JPEG", {"quality": 90}), "png": ("PNG", {"compress_level": 1}),  # fast; the images are tiny
            "webp": ("WEBP", {"quality": 90})}


def _encode(img: Image.Image, ext: str) -> bytes:
    fmt, kwargs = _FORMATS[ext]
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))
