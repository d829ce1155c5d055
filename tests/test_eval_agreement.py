"""pisweep's zero-shot evaluator agrees with the real CLIP_benchmark 1.6.2 on a checkpoint trained above chance.

CLIP_benchmark runs in its own environment, ``.venv-peer`` (made by ``benchmarks/peer_env.sh``), as a subprocess.
Without it the tests skip, unless PISWEEP_REQUIRE_PEER=1 (CI), where they fail. The machinery (data, training,
the peer wrapper, the comparison) is ``benchmarks/eval_agreement.py``; it runs the same check at a larger size.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains, or starts processes

ROOT = Path(__file__).resolve().parent.parent


def _load_agreement():
    spec = importlib.util.spec_from_file_location("eval_agreement", ROOT / "benchmarks" / "eval_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_agreement", module)
    spec.loader.exec_module(module)
    return module


EA = _load_agreement()
BATCH = 16
PER_CLASS = 12
RETRIEVAL_IMAGES = 50


@pytest.fixture(scope="module")
def agreement(tmp_path_factory):
    """(rows by task, work folder): one trained checkpoint, both evaluators, all tasks."""
    if not EA.peer_python().is_file():
        message = (f"CLIP_benchmark peer environment missing ({EA.peer_python()}); "
                   "create it with benchmarks/peer_env.sh")
        if os.environ.get("PISWEEP_REQUIRE_PEER") == "1":
            pytest.fail(message + " (PISWEEP_REQUIRE_PEER=1)")
        pytest.skip(message)
    work = tmp_path_factory.mktemp("agreement")
    rows, _ = EA.check_agreement(work, steps=100, per_class=PER_CLASS, retrieval_images=RETRIEVAL_IMAGES,
                                 batch_size=BATCH, full=True)
    return {r.task: r for r in rows}, work


def test_covers_the_required_kinds_of_task(agreement):
    rows, work = agreement
    assert set(rows) == {"colours4", "vtab/pets", "flickr30k", "imagenet1k", "mscoco_captions"}
    assert math.isnan(rows["colours4"].ours) is False and rows["colours4"].kind == "classification"
    assert (work / "eval" / "wds_colours4" / "classnames.txt").read_text().count("\n") < 5
    assert rows["vtab/pets"].main_metric == "mean_per_class_recall"
    captions = (work / "eval" / "wds_flickr30k" / "test")
    import tarfile
    with tarfile.open(captions / "0.tar") as tar:
        texts = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert texts and all(len(t.splitlines()) == 5 for t in texts)
    assert rows["imagenet1k"].tied > 0  # the duplicated class name gives exact ties: they are exercised


def test_checkpoint_is_well_above_chance(agreement):
    rows, _ = agreement
    for name, row in rows.items():
        chance = 1.0 / RETRIEVAL_IMAGES if row.kind == "retrieval" else 1.0 / _n_classes(name)
        assert row.ours >= 3 * chance, f"{name}: {row.main_metric} {row.ours:.3f} is not well above chance {chance:.3f}"
    assert rows["colours4"].ours >= 0.75


def _n_classes(name: str) -> int:
    return next(len(s.classnames) for s in EA.eval_sets(True) if s.cb_name == name)


def test_aggregates_agree_within_1e6(agreement):
    rows, work = agreement
    for name, row in rows.items():
        assert row.max_abs_diff <= 1e-6, f"{name}: {row.problems}"
    import json
    acc5 = json.loads((work / "cb" / "colours4__epoch_1.pt.json").read_text())["metrics"]["acc5"]
    assert math.isnan(acc5)  # under 5 classes, on both sides (NaN == NaN is counted as agreement)
    ours = json.loads((work / "ours" / "vtab-pets.json").read_text())["metrics"]
    assert ours["mean_per_class_recall"] != ours["acc1"]  # unequal classes: the metric is not acc1 in disguise


def test_per_example_predictions_equal_except_exact_ties(agreement):
    rows, _ = agreement
    for name, row in rows.items():
        assert row.per_example_compared > 0
        assert row.mismatches == row.mismatches_at_ties, f"{name}: {row.problems}"
        assert row.ok, f"{name}: {row.problems}"


def test_logits_and_scores_are_bit_identical(agreement):
    """Stronger than required: same kernels, same batch shapes, same order of operations on both sides."""
    rows, _ = agreement
    assert all(row.scores_bitwise for row in rows.values()), {n: r.scores_bitwise for n, r in rows.items()}


def test_comparison_detects_a_changed_prediction(agreement):
    """The check can fail: one flipped top-1 hit or one changed metric is reported."""
    rows, work = agreement
    from pisweep.eval import evaluator
    s = next(s for s in EA.eval_sets(True) if s.cb_name == "vtab/pets")
    per = evaluator.read_per_example(work / "ours" / "vtab-pets.npz")
    import json
    ours_metrics = json.loads((work / "ours" / "vtab-pets.json").read_text())["metrics"]
    theirs_metrics = json.loads((work / "cb" / "vtab_pets__epoch_1.pt.json").read_text())["metrics"]
    captured = _captured(work, "wds/vtab/pets")
    assert EA.compare(s, "mean_per_class_recall", (ours_metrics, per), theirs_metrics, captured).ok
    flipped = dict(per, top1=per["top1"].copy())
    flipped["top1"][0] = not flipped["top1"][0]
    bad = EA.compare(s, "mean_per_class_recall", (ours_metrics, flipped), theirs_metrics, captured)
    assert not bad.ok and bad.mismatches == 1 and "top1" in bad.problems[0]
    off = dict(ours_metrics, acc1=ours_metrics["acc1"] + 2e-6)
    assert not EA.compare(s, "mean_per_class_recall", (off, per), theirs_metrics, captured).ok


def _captured(work: Path, dataset: str) -> dict:
    ckpt = str(work / "ckpt" / "epoch_1.pt")
    with np.load(work / "cb" / "capture" / f"{EA._capture_name(dataset, ckpt)}.npz") as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- the speed-ups keep the numbers (no peer needed)

def test_cached_tokenizer_gives_equal_tokens_and_tokenizes_once():
    import torch

    from pisweep.eval.zeroshot import CachedTokenizer

    calls = []

    def tokenizer(texts):
        calls.append(list(texts))
        return torch.tensor([[len(t), i] for i, t in enumerate(texts)], dtype=torch.int64)

    tok = CachedTokenizer(tokenizer, max_bytes=64)
    first = tok(["a", "bb"])
    again = tok(["a", "bb"])
    assert torch.equal(first, again) and len(calls) == 1
    again[0, 0] = 99  # a caller's change does not reach the memo
    assert torch.equal(tok(["a", "bb"]), first)
    assert tok(["bb", "a"]).tolist() == [[2, 0], [1, 1]] and len(calls) == 2  # the list, in order, is the key
    tok(["ccc", "d", "e"])  # 48 bytes: over the 64-byte budget with what is there, so the memo starts afresh
    tok(["a", "bb"])
    assert len(calls) == 4


def test_whole_batch_normalisation_is_bit_identical_to_per_image():
    import torch
    from torchvision.transforms import Compose, Normalize, ToTensor

    from pisweep.eval.imagecache import batch_post

    post = Compose([ToTensor(), Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    block = np.random.default_rng(0).integers(0, 256, size=(7, 13, 11, 3), dtype=np.uint8)
    fast = batch_post(post)(block)
    assert fast.is_contiguous() and fast.shape == (7, 3, 13, 11)
    assert torch.equal(fast, torch.stack([post(x) for x in block]))
    assert batch_post(Compose([ToTensor()])) is None
    assert batch_post(Compose([ToTensor(), Normalize((0.5,) * 3, (0.5,) * 3), Normalize((0.,) * 3, (1.,) * 3)])) is None
