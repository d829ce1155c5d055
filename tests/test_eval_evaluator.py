"""The zero-shot runner end to end on the tiny model and small webdataset folders built here."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pisweep.errors import EvalError
from pisweep.eval import datasets as D
from pisweep.eval import evaluator
from pisweep.eval import imagecache as C
from pisweep.eval import metrics as M
from pisweep.eval import registry as R
from pisweep.eval import tarsamples as T
from pisweep.models import TINY_CONFIG, create_model
from pisweep.train.checkpoint import save_weights

MODEL = "pisweep-tiny"
FLICKR = "retrieval/flickr_1k_test_image_text_retrieval"


def image_bytes(rng: np.random.Generator, ext: str, label: int) -> bytes:
    """A small image whose colour depends on the label, in a size that needs resize and crop."""
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    base = np.array([(label * 67) % 256, (label * 131) % 256, (label * 29) % 256], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    img = Image.fromarray(pixels)
    if ext == "png" and label % 2:
        img = img.convert("P")  # a palette PNG: decoding must convert to RGB before any resize
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_folder(root: Path, name: str, *, n: int, shards: int, ext: str, classnames=None, templates=None,
                 retrieval: bool = False, labels=None, seed: int = 0) -> Path:
    folder = root / name
    (folder / "test").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    if retrieval:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    if classnames is not None:
        (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    if templates is not None:
        (folder / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    per = math.ceil(n / shards)
    for s in range(shards):
        with wds.TarWriter(str(folder / "test" / f"{s}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                label = int(labels[i]) if labels is not None else i % max(1, len(classnames or [1]))
                sample = {"__key__": f"s{i:05d}", ext: image_bytes(rng, ext, label)}
                if retrieval:
                    sample["txt"] = "\n".join(f"caption {j} of picture {i} in colour {i % 4}" for j in range(5))
                else:
                    sample["cls"] = str(label)
                sink.write(sample)
    return folder


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    write_folder(root, "wds_imagenet1k", n=30, shards=2, ext="webp",
                 classnames=["red square", "green circle", "blue star", "yellow line", "black dot", "white cube"],
                 templates=["a photo of a {c}.", "a drawing of a {c}."])
    write_folder(root, "wds_vtab-cifar10", n=12, shards=1, ext="png",  # 3 classes: acc5 is NaN
                 classnames=["airplane", "automobile", "bird"])  # no templates file: built-in (18)
    write_folder(root, "wds_flickr30k", n=9, shards=2, ext="jpg", retrieval=True)
    write_folder(root, "wds_foo", n=8, shards=1, ext="jpg", classnames=["a", "b", "c", "d", "e"],
                 templates=["{c}"], seed=3)
    bad = write_folder(root, "wds_vtab-pets", n=4, shards=1, ext="jpg", classnames=["x", "y"])
    (bad / "test" / "nshards.txt").write_text("two\n")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, *_ = create_model(MODEL, TINY_CONFIG)
        path = tmp_path_factory.mktemp(f"ckpt{seed}") / "epoch_1.pt"
        save_weights(path, 1, model)
        out.append(path)
    return out


TASKS = ["imagenet1k", "cifar10", FLICKR, "imagenet-a", "vtab/pets", "wds_foo"]


def run(eval_root, ckpt, out_dir=None, **kw):
    return evaluator.evaluate_checkpoint(ckpt, MODEL, TINY_CONFIG, eval_root, TASKS, out_dir=out_dir, batch_size=8,
                                      device="cpu", **kw)


@pytest.fixture(scope="module")
def first_run(eval_root, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("out1")
    return out, run(eval_root, checkpoints[0], out)


def test_statuses_missing_and_failed_do_not_stop_the_suite(first_run, eval_root):
    _, results = first_run
    by = {r.task: r for r in results}
    assert [r.task for r in results] == ["imagenet1k", "cifar10", FLICKR, "imagenet-a", "vtab/pets", "wds_foo"]
    assert [r.status for r in results] == ["done", "done", "done", "missing_data", "failed", "done"]
    assert by["imagenet-a"].path == str(eval_root / "wds_imagenet-a")
    assert "nshards.txt" in by["vtab/pets"].reason and by["vtab/pets"].path == str(eval_root / "wds_vtab-pets")
    assert by["imagenet1k"].n_examples == 30 and by[FLICKR].n_examples == 9
    assert math.isnan(by["cifar10"].metrics["acc5"]) and not math.isnan(by["imagenet1k"].metrics["acc5"])
    assert by["wds_foo"].main_metric == "acc1"
    assert by[FLICKR].main_metric == "mean_recall@1"
    assert by[FLICKR].main_value == by[FLICKR].metrics["mean_recall@1"]


def test_output_files_and_aggregates_recomputed_from_per_example(first_run):
    out, results = first_run
    for r in results:
        if r.status != "done":
            continue
        doc = json.loads(Path(r.json_path).read_text())
        assert set(doc) == {"dataset", "model", "pretrained", "task", "metrics", "language", "pisweep"}
        assert doc["language"] == "en" and doc["model"] == MODEL
        per = evaluator.read_per_example(Path(r.per_example_path))
        kind = R.RETRIEVAL if r.task == FLICKR else R.CLASSIFICATION
        again = M.aggregate_retrieval(per) if kind == R.RETRIEVAL else M.aggregate_classification(per)
        assert set(again) == set(R.metric_names(kind)) == set(doc["metrics"])
        for k, v in again.items():
            assert (math.isnan(v) and math.isnan(doc["metrics"][k])) or v == doc["metrics"][k] == r.metrics[k]
    assert json.loads((out / "cifar10.json").read_text())["dataset"] == "wds/vtab/cifar10"
    assert (out / "retrieval-flickr_1k_test_image_text_retrieval.npz").is_file()
    per = evaluator.read_per_example(out / "imagenet1k.npz")
    assert per["target"].tolist() == [i % 6 for i in range(30)]  # file order, across both shards
    flickr = evaluator.read_per_example(out / "retrieval-flickr_1k_test_image_text_retrieval.npz")
    assert flickr["text_image_index"].tolist() == [i for i in range(9) for _ in range(5)]


def test_running_twice_gives_identical_files(first_run, eval_root, checkpoints, tmp_path):
    out1, _ = first_run
    run(eval_root, checkpoints[0], tmp_path)
    names = sorted(p.name for p in out1.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir()) and len(names) == 8
    for name in names:
        assert (out1 / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_matches_a_direct_numpy_computation(first_run, eval_root, checkpoints):
    """Logits rebuilt from the model with metrics.class_embedding / zero_shot_logits agree with the runner."""
    out, _ = first_run
    model, _, preprocess, tok = create_model(MODEL, TINY_CONFIG, checkpoints[0])
    model.eval()
    data = D.load_task(eval_root / "wds_imagenet1k", preprocess)
    with torch.no_grad():
        images = torch.cat(list(data.image_batches(30)))
        feats = model.encode_image(images).numpy()
        clf = np.stack([M.class_embedding(model.encode_text(tok([t.format(c=c) for t in data.info.templates])).numpy())
                        for c in data.info.classnames], axis=1)
    direct = M.classification_per_example(M.zero_shot_logits(feats, clf), data.labels)
    saved = evaluator.read_per_example(out / "imagenet1k.npz")
    for k in ("target", "pred", "top5"):
        np.testing.assert_array_equal(direct[k], saved[k])
    assert len(set(saved["pred"].tolist())) > 1  # not a degenerate constant prediction


def test_warm_evaluator_reloads_weights(first_run, eval_root, checkpoints, tmp_path):
    out1, _ = first_run
    ev = evaluator.Evaluator(MODEL, TINY_CONFIG, eval_root, batch_size=8, device="cpu")
    warm0 = ev.evaluate(checkpoints[1], ["imagenet1k", FLICKR], tmp_path / "a")
    warm1 = ev.evaluate(checkpoints[0], ["imagenet1k", FLICKR], tmp_path / "b")
    for name in ("imagenet1k.npz", "retrieval-flickr_1k_test_image_text_retrieval.npz"):
        assert (tmp_path / "b" / name).read_bytes() == (out1 / name).read_bytes()
    a = evaluator.read_per_example(tmp_path / "a" / "imagenet1k.npz")
    b = evaluator.read_per_example(tmp_path / "b" / "imagenet1k.npz")
    assert not np.array_equal(a["pred"], b["pred"]) or warm0[1].metrics != warm1[1].metrics


def test_image_cache_is_lossless_and_reused(first_run, eval_root, checkpoints, tmp_path):
    out1, _ = first_run
    cache = tmp_path / "cache"
    run(eval_root, checkpoints[0], tmp_path / "c1", cache_dir=cache)
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 4  # imagenet1k, cifar10, flickr, wds_foo
    assert all(json.loads((e / "meta.json").read_text())["mode"] == "uint8" for e in entries)
    stamp = {e.name: (e / "images.bin").stat().st_mtime_ns for e in entries}
    run(eval_root, checkpoints[0], tmp_path / "c2", cache_dir=cache)
    assert {e.name: (e / "images.bin").stat().st_mtime_ns for e in entries} == stamp  # reused, not rebuilt
    for name in os.listdir(out1):
        assert (tmp_path / "c1" / name).read_bytes() == (out1 / name).read_bytes(), name
        assert (tmp_path / "c2" / name).read_bytes() == (out1 / name).read_bytes(), name


def test_cache_batches_equal_decoded_batches_and_cap(eval_root, tmp_path):
    *_, preprocess, _ = create_model(MODEL, TINY_CONFIG)
    folder = eval_root / "wds_vtab-cifar10"
    plain = D.load_task(folder, preprocess)
    cached = D.load_task(folder, preprocess, C.ImageCache(tmp_path / "c"))
    assert cached.cached and not plain.cached
    for x, y in zip(plain.image_batches(5), cached.image_batches(5), strict=True):
        assert torch.equal(x, y)
    np.testing.assert_array_equal(plain.labels, cached.labels)
    capped = D.load_task(folder, preprocess, C.ImageCache(tmp_path / "small", max_bytes=1000))
    assert not capped.cached and not any((tmp_path / "small").iterdir())


def test_worker_processes_keep_file_order(eval_root, tmp_path):
    *_, preprocess, _ = create_model(MODEL, TINY_CONFIG)
    folder = eval_root / "wds_imagenet1k"
    plain = torch.cat(list(D.load_task(folder, preprocess).image_batches(7)))
    workers = torch.cat(list(D.load_task(folder, preprocess).image_batches(7, num_workers=2)))
    built = D.load_task(folder, preprocess, C.ImageCache(tmp_path), num_workers=2)
    assert built.cached and torch.equal(plain, workers) and torch.equal(plain, torch.cat(list(built.image_batches(7))))


def test_cache_of_an_unsplittable_transform_stores_floats(eval_root, tmp_path):
    *_, preprocess, _ = create_model(MODEL, TINY_CONFIG)
    opaque = lambda img: preprocess(img)  # noqa: E731  no ToTensor to split at: whole tensors are cached
    folder = eval_root / "wds_vtab-cifar10"
    cached = D.load_task(folder, opaque, C.ImageCache(tmp_path))
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert cached.cached and json.loads((entry / "meta.json").read_text())["mode"] == "float32"
    plain = torch.cat(list(D.load_task(folder, preprocess).image_batches(5)))
    assert torch.equal(plain, torch.cat(list(cached.image_batches(5))))


def test_amp_runs(eval_root, checkpoints):
    res = evaluator.evaluate_checkpoint(checkpoints[0], MODEL, TINY_CONFIG, eval_root, ["cifar10", FLICKR], device="cpu",
                                     amp=True)
    assert [r.status for r in res] == ["done", "done"]


def test_cache_build_race_keeps_one_entry(eval_root, tmp_path):
    *_, preprocess, _ = create_model(MODEL, TINY_CONFIG)
    info = D.read_folder(eval_root / "wds_flickr30k")
    index = T.index_samples(info.shards, info.kind, info.folder)
    cache = C.ImageCache(tmp_path)
    fp = C.fingerprint_for(info.folder, info.shards, preprocess, info.kind)

    def source(fn):
        return T.ShardImages(info.shards, index.images, fn)

    first = cache.build(fp, index, source, preprocess)
    second = cache.build(fp, index, source, preprocess)  # loses the rename race: uses the winner's entry
    assert first.path == second.path and first.captions == index.captions
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_malformed_folders_raise_naming_the_file(eval_root, tmp_path):
    *_, preprocess, _ = create_model(MODEL, TINY_CONFIG)
    folder = write_folder(tmp_path, "nolabel", n=3, shards=1, ext="png", classnames=["a", "b"])
    with wds.TarWriter(str(folder / "test" / "0.tar")) as sink:
        sink.write({"__key__": "x", "png": image_bytes(np.random.default_rng(0), "png", 0)})
    with pytest.raises(EvalError, match=r"0\.tar: sample 'x' lacks .*\.cls"):
        D.load_task(folder, preprocess)
    missing_shard = write_folder(tmp_path, "short", n=3, shards=1, ext="png", classnames=["a"])
    (missing_shard / "test" / "nshards.txt").write_text("2\n")
    gone = D.load_task(missing_shard, preprocess)
    assert isinstance(gone, D.MissingData) and gone.path == missing_shard / "test" / "1.tar"
    corrupt = write_folder(tmp_path, "corrupt", n=2, shards=1, ext="png", classnames=["a", "b"])
    with wds.TarWriter(str(corrupt / "test" / "0.tar")) as sink:
        sink.write({"__key__": "y", "png": b"not a png", "cls": "0"})
    data = D.load_task(corrupt, preprocess)
    with pytest.raises(EvalError, match=r"cannot decode image .*0\.tar:y\.png"):
        list(data.image_batches(2))


def test_label_beyond_class_names_fails_only_that_task(eval_root, checkpoints, tmp_path):
    write_folder(tmp_path, "wds_mnist", n=4, shards=1, ext="png", classnames=["zero", "one"], labels=[0, 1, 2, 1])
    (tmp_path / "wds_gtsrb").symlink_to(eval_root / "wds_foo")
    res = evaluator.evaluate_checkpoint(checkpoints[0], MODEL, TINY_CONFIG, tmp_path, ["mnist", "gtsrb", "nights_2afc"],
                                     device="cpu")
    assert [r.status for r in res] == ["failed", "done", "failed"]
    assert "label 2" in res[0].reason and "nights_2afc" in res[2].reason


def test_no_eval_root_means_missing_data_unless_an_absolute_override(eval_root, checkpoints):
    res = evaluator.evaluate_checkpoint(checkpoints[0], MODEL, TINY_CONFIG, None, ["imagenet1k", "cifar10"], device="cpu",
                                     overrides={"cifar10": str(eval_root / "wds_vtab-cifar10")})
    assert [r.status for r in res] == ["missing_data", "done"]
    assert "no eval data root" in res[0].reason


def test_bad_checkpoint_is_an_eval_error(eval_root, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(EvalError, match="bad.pt"):
        evaluator.evaluate_checkpoint(bad, MODEL, TINY_CONFIG, eval_root, ["imagenet1k"], device="cpu")
    with pytest.raises(EvalError, match="not found"):
        evaluator.evaluate_checkpoint(tmp_path / "none.pt", MODEL, TINY_CONFIG, eval_root, ["imagenet1k"], device="cpu")


def test_available_folders(eval_root):
    assert evaluator.available_folders(eval_root) == ["wds_flickr30k", "wds_foo", "wds_imagenet1k", "wds_vtab-cifar10",
                                                   "wds_vtab-pets"]


def test_an_eval_job_refuses_weights_that_are_not_the_ones_training_wrote(tmp_path):
    """The sha256 a run recorded for its weights file is read back before the file is evaluated."""
    from pisweep.job.context import JobContext
    from pisweep.job.events import read_events, write_event
    from pisweep.runner.evals import run_evals
    from pisweep.train.checkpoint import save_weights

    from helpers import study

    s = study(str(tmp_path / "unused-{0..1}.tar"))
    folder = tmp_path / "run"
    model, *_ = create_model(MODEL, TINY_CONFIG)
    for epoch in (1, 2):
        path = folder / "checkpoints" / f"epoch_{epoch}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        sha, nbytes = save_weights(path, epoch, model)
        write_event(folder, "r", "checkpoint", None, epoch=epoch, kind="weights", path=str(path), sha256=sha,
                    bytes=nbytes, step=epoch)
    with open(folder / "checkpoints" / "epoch_2.pt", "r+b") as f:  # damaged after it was recorded
        f.seek(200)
        f.write(b"\x00" * 16)
    run_evals(JobContext(uid="r", folder=folder), s, epochs=[1, 2], tasks=["cifar10"], eval_root=None, nights=None,
              cache_dir=None)
    states = {e["data"]["epoch"]: e["data"] for _, e in read_events(folder) if e["kind"] == "eval_state"
              and e["data"]["state"] != "running"}
    assert states[1]["state"] == "missing_data"  # the intact file is evaluated (no eval data here)
    assert states[2]["state"] == "failed" and "is not the file training wrote" in states[2]["reason"]
