"""Synthetic data: idempotent atomic builds, and every file read by the real consumers' own code."""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydantic
import pytest
import webdataset as wds
from PIL import Image

from pisweep.data import world
from pisweep.data.synth import EVAL_TASKS, MARKER, SynthConfig, eval_labels, layout_for, synthesize
from pisweep.errors import DataError

SMALL = SynthConfig(seed=3, nights_triplets=40, nights_low_vote_rows=6, train_scales={"tiny": 100, "small": 160},
                    samples_per_shard=32, eval_examples_per_class=3, eval_retrieval_images=8,
                    eval_samples_per_shard=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    return synthesize(root, SMALL), SMALL


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_second_call_writes_nothing_and_returns_same_layout(built):
    layout, cfg = built
    before = _snapshot(layout.root)
    calls = []
    again = synthesize(layout.root, cfg, lambda *a: calls.append(a))
    assert again == layout
    assert calls == []
    assert _snapshot(layout.root) == before
    assert json.loads((layout.root / MARKER).read_text())["config_hash"] == cfg.config_hash()


def test_layout_is_known_before_building(built, tmp_path):
    layout, cfg = built
    assert layout_for(layout.root, cfg) == layout
    assert not (tmp_path / "x").exists()
    planned = layout_for(tmp_path / "x", cfg)
    assert planned.train["tiny"].pattern == f"{tmp_path}/x/train/tiny/{{00000..00003}}.tar"
    assert not (tmp_path / "x").exists()


def test_interrupted_build_leaves_nothing(tmp_path):
    def boom(stage: str, done: int, total: int) -> None:
        if stage.startswith("train/") and done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "set", SMALL, boom)
    assert list(tmp_path.iterdir()) == []


def test_other_config_replaces_set_but_foreign_folder_is_refused(tmp_path):
    cfg_a = SMALL.model_copy(update={"train_scales": {"a": 40}, "eval_tasks": ["renderedsst2"]})
    cfg_b = cfg_a.model_copy(update={"seed": 4})
    synthesize(tmp_path / "set", cfg_a)
    layout_b = synthesize(tmp_path / "set", cfg_b)
    assert json.loads((tmp_path / "set" / MARKER).read_text())["config_hash"] == cfg_b.config_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert layout_b.config_hash != cfg_a.config_hash()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="mine"):
        synthesize(foreign, cfg_a)
    assert (foreign / "keep.txt").read_text() == "precious"


def test_same_config_gives_identical_bytes(built, tmp_path):
    layout, cfg = built
    cfg2 = cfg.model_copy(update={"train_scales": {"tiny": 100}, "eval_tasks": ["vtab/pets"]})
    other = synthesize(tmp_path / "again", cfg2)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for rel in ("train/tiny/00002.tar", "nights/data.csv", "nights/distort/000/005_1.png",
                "eval/wds_vtab-pets/test/0.tar"):
        assert digest(layout.root / rel) == digest(other.root / rel), rel


def test_config_validation():
    assert SynthConfig().eval_tasks == list(EVAL_TASKS)
    assert SynthConfig(eval_tasks=list(reversed(EVAL_TASKS))).config_hash() == SynthConfig().config_hash()
    assert SynthConfig(seed=1).config_hash() != SynthConfig().config_hash()
    for bad in ({"train_scales": {"../x": 10}}, {"train_scales": {"a": 0}}, {"train_scales": {}},
                {"eval_tasks": ["imagenet2k"]}, {"colour": "red"}):
        with pytest.raises(pydantic.ValidationError):
            SynthConfig(**bad)


# ---------------------------------------------------------------- training shards, read by open_clip


def test_scales_are_sharded_for_workers_and_nested(built):
    layout, cfg = built
    tiny, small = layout.train["tiny"], layout.train["small"]
    assert (tiny.num_samples, tiny.num_shards) == (100, 4)  # 4 shards of 25 (min_shards) beat 32 per shard
    assert (small.num_samples, small.num_shards) == (160, 5)
    folder = layout.root / "train" / "tiny"
    assert json.loads((folder / "sizes.json").read_text()) == {f"0000{i}.tar": 25 for i in range(4)}
    stats = json.loads((folder / "00001_stats.json").read_text())
    assert stats["count"] == stats["successes"] == 25 and stats["failed_to_download"] == 0
    with tarfile.open(folder / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000001.json").read())
        text = tar.extractfile("000000001.txt").read().decode()
    assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
    assert meta["key"] == "000000001" and meta["status"] == "success" and meta["caption"] == text
    assert (meta["width"], meta["height"]) == (cfg.image_size, cfg.image_size)
    # sample 0 of "small" is sample 0 of "tiny": the scales are nested
    with tarfile.open(layout.root / "train" / "small" / "00000.tar") as tar:
        assert tar.extractfile("000000001.txt").read().decode() == text


def test_open_clip_reads_the_shards(built, monkeypatch):
    data = pytest.importorskip("open_clip_train.data")
    from pisweep.models import TINY_CONFIG, create_model

    # open_clip_train 3.3.0's group_by_keys_nothrow cannot take the end-of-shard marker ({}) that
    # webdataset >= 0.2.96 yields (webdataset#384, open_clip#935): KeyError 'fname' after the first shard.
    # The known fix is eof_value=None; the worker is forked, so the patch reaches it.
    monkeypatch.setattr(data, "tar_file_expander", functools.partial(data.tar_file_expander, eof_value=None))

    layout, _ = built
    shards = layout.train["tiny"]
    assert data.get_dataset_size(shards.pattern) == (shards.num_samples, shards.num_shards)
    _, preprocess_train, _, tokenizer = create_model("pisweep-tiny", TINY_CONFIG)
    args = argparse.Namespace(train_data=shards.pattern, val_data=None, train_num_samples=None,
                              dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                              batch_size=8, workers=1, world_size=1)
    info = data.get_wds_dataset(args, preprocess_train, is_train=True, epoch=0, tokenizer=tokenizer)
    assert info.dataloader.num_samples == 104  # 100 rounded up to whole batches, read from sizes.json
    images, texts = next(iter(info.dataloader))
    assert tuple(images.shape) == (8, 3, 64, 64)
    assert tuple(texts.shape) == (8, TINY_CONFIG["text_cfg"]["context_length"])
    assert (texts[:, 0] == texts[0, 0]).all() and (texts != 0).sum(dim=1).min() > 3  # real captions


# ---------------------------------------------------------------- eval sets, read like CLIP_benchmark


def _urls(folder: Path) -> list[str]:
    n = int((folder / "test" / "nshards.txt").read_text())
    return [str(folder / "test" / f"{i}.tar") for i in range(n)]


def test_classification_sets_read_like_clip_benchmark(built):
    layout, cfg = built
    exts = set()
    for name in ("imagenet1k", "vtab/cifar10", "vtab/pets", "renderedsst2"):
        task, folder = EVAL_TASKS[name], layout.eval_tasks[name]
        assert folder.name == {"imagenet1k": "wds_imagenet1k", "vtab/cifar10": "wds_vtab-cifar10",
                               "vtab/pets": "wds_vtab-pets", "renderedsst2": "wds_renderedsst2"}[name]
        classnames = (folder / "classnames.txt").read_text().splitlines()
        templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert templates and all("{c}" in t for t in templates)
        assert not (folder / "dataset_type.txt").exists()
        ds = wds.WebDataset(_urls(folder), shardshuffle=False).decode("pil").to_tuple("webp;png;jpg;jpeg", "cls")
        samples = list(ds)
        labels = [int(y) for _, y in samples]
        assert len(samples) == len(eval_labels(task, cfg)) and labels == eval_labels(task, cfg)
        assert set(labels) == set(range(len(classnames)))
        assert all(img.size == (cfg.image_size, cfg.image_size) for img, _ in samples)
        with tarfile.open(_urls(folder)[0]) as tar:
            exts |= {n.rsplit(".", 1)[1] for n in tar.getnames()} - {"cls"}
        counts = np.bincount(labels)
        if name == "imagenet1k":
            assert len(classnames) >= 20 and "red circle" in classnames
        if name == "vtab/cifar10":
            assert len(classnames) == 10
        if name == "vtab/pets":
            assert counts.min() < counts.max()  # unequal classes: mean_per_class_recall differs from acc1
        if name == "renderedsst2":
            assert len(classnames) == 2  # fewer than 5 classes: acc5 undefined
    assert len(exts) >= 2


def test_classification_labels_match_the_pixels(built):
    """The png images of wds_vtab-cifar10 are exactly the world scenes of their labels."""
    layout, cfg = built
    task = EVAL_TASKS["vtab/cifar10"]
    with tarfile.open(_urls(layout.eval_tasks["vtab/cifar10"])[0]) as tar:
        for i in range(3):
            label = int(tar.extractfile(f"s{i:07d}.cls").read())
            pixels = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"s{i:07d}.png").read())))
            scene = world.sample_scene(world.rng_for(cfg.seed, task.stream, i + 1), **task.classes[label])
            assert scene.main.shape == task.classnames[label]
            assert np.array_equal(pixels, np.asarray(world.render(scene, cfg.image_size)))


def test_retrieval_sets_read_like_clip_benchmark(built):
    layout, cfg = built
    for name in ("flickr30k", "mscoco_captions"):
        folder = layout.eval_tasks[name]
        assert (folder / "dataset_type.txt").read_text().strip() == "retrieval"
        ds = (wds.WebDataset(_urls(folder), shardshuffle=False).decode("pil")
              .to_tuple("webp;png;jpg;jpeg", "txt").map_tuple(lambda x: x, str.splitlines))
        samples = list(ds)
        assert len(samples) == cfg.eval_retrieval_images
        for img, captions in samples:
            assert img.size == (cfg.image_size, cfg.image_size)
            assert len(captions) == 5 and len(set(captions)) == 5
            words = {w for c in captions for w in c.split()}
            assert words & set(world.SHAPES) and words & set(world.COLOURS)


# ---------------------------------------------------------------- the world itself


def test_world_attributes_are_visible_and_weighted_shape_colour_texture():
    base = world.sample_scene(world.rng_for(0, 99, 0), shape="square", colour="red", texture="plain")
    o = base.main
    with_obj = lambda **kw: replace(base, objects=(replace(o, **kw),))  # noqa: E731
    pixels = {s: np.asarray(world.render(with_obj(shape=s, rotation=0.0)), dtype=int) for s in world.SHAPES}
    for a in world.SHAPES:
        for b in world.SHAPES:
            if a < b:
                assert np.abs(pixels[a] - pixels[b]).mean() > 2, (a, b)
    textures = {t: np.asarray(world.render(replace(base, texture=t)), dtype=int) for t in world.TEXTURES}
    for t in world.TEXTURES[1:]:
        assert np.abs(textures[t] - textures["plain"]).mean() > 5, t
    d = lambda scene: world.perceptual_distance(base, scene)  # noqa: E731
    d_shape, d_colour = d(with_obj(shape="circle")), d(with_obj(colour="blue", rgb=world.COLOURS["blue"]))
    d_texture, d_pose = d(replace(base, texture="striped")), d(with_obj(cx=o.cx + 0.05))
    assert d_shape > d_colour > d_texture > d_pose > 0 == d(base)
    scene = world.sample_scene(world.rng_for(0, 99, 1), shape="ring", colour="orange", texture="plain")
    assert world.caption(scene, 0) == "an orange ring on a plain background"


def test_pose_only_judgments_ignore_what_the_tasks_ask_about(tmp_path):
    """The negative control's simulated humans see pose only: shape, colour and texture changes cost nothing, and
    the written NIGHTS votes side with the distortion whose pose is closer. The default keeps its old hash."""
    base = world.sample_scene(world.rng_for(0, 99, 0), shape="square", colour="red", texture="plain")
    o = base.main
    moved = replace(base, objects=(replace(o, cx=o.cx + 0.1),))
    reshaped = replace(base, objects=(replace(o, shape="circle", colour="blue", rgb=world.COLOURS["blue"]),),
                       texture="striped")
    d = functools.partial(world.perceptual_distance, base, judgments="pose-only")
    assert d(reshaped) == 0.0 < d(moved)
    assert world.perceptual_distance(base, reshaped) > world.perceptual_distance(base, moved)  # task-aligned
    null = SMALL.model_copy(update={"judgments": "pose-only"})
    assert SMALL.config_hash() == SynthConfig(**SMALL.model_dump(exclude={"judgments"})).config_hash()
    assert null.config_hash() != SMALL.config_hash()
    layout = synthesize(tmp_path / "null", null)
    rows = list(csv_rows(layout.nights_root / "data.csv"))
    agree = 0
    for r in rows:
        ref, left, right = world.nights_triplet(null.seed, int(r["id"]))
        closer_right = d_pose(ref, right) < d_pose(ref, left)
        agree += closer_right == (r["right_vote"] == "1")
    assert agree / len(rows) > 0.9  # rater noise flips a few


def d_pose(a, b) -> float:
    return world.perceptual_distance(a, b, "pose-only")


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)
