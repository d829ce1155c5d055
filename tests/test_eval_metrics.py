"""CLIP_benchmark's zero-shot metrics, from hand-computed cases and brute-force definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pisweep.errors import EvalError
from pisweep.eval import metrics as M
from pisweep.eval.zeroshot import torch_topk


def cls(logits, targets, n_classes=None):
    per = M.classification_per_example(np.asarray(logits, dtype=np.float32), targets, n_classes)
    return per, M.aggregate_classification(per)


# ------------------------------------------------------------------------------------------ classification

def test_ties_go_to_the_lower_class_index_by_default():
    logits = [[1, 3, 3, 0], [1, 3, 3, 0]]
    per, agg = cls(logits, [2, 1])
    assert per["pred"].tolist() == [1, 1]  # argmax: first maximum
    assert per["top1"].tolist() == [False, True]
    assert agg["acc1"] == 0.5
    assert per["top5"].tolist() == [True, True]
    assert math.isnan(agg["acc5"])  # 4 classes < 5


def test_injected_topk_decides_acc_but_not_the_argmax():
    """As in CLIP_benchmark: acc1 from the top-k call, mean_per_class_recall from argmax."""
    def last_first(block, k):  # a top-k that breaks ties towards the higher index
        return np.argsort(-block[:, ::-1], axis=1, kind="stable")[:, :k] * -1 + block.shape[1] - 1

    logits = np.array([[1, 3, 3, 0, 0, 0]] * 2, dtype=np.float32)
    per = M.classification_per_example(logits, [2, 1], topk=last_first)
    assert per["pred"].tolist() == [1, 1] and per["top1"].tolist() == [True, False]
    agg = M.aggregate_classification(per)
    assert agg["acc1"] == 0.5 and agg["mean_per_class_recall"] == 0.5  # class 1 recall 1, class 2 recall 0


def test_top5_boundary_with_ties():
    row = [5, 4, 4, 4, 4, 4, 0]  # stable order: 0, 1, 2, 3, 4 | 5, 6
    per, agg = cls([row] * 3, [4, 5, 6])
    assert per["top5"].tolist() == [True, False, False]
    assert agg["acc5"] == pytest.approx(1 / 3)
    assert agg["acc1"] == 0.0 and per["top1"].tolist() == [False] * 3


def test_acc5_nan_only_below_five_class_names():
    rng = np.random.default_rng(0)
    _, agg4 = cls(rng.normal(size=(10, 4)), rng.integers(0, 4, 10))
    _, agg5 = cls(rng.normal(size=(10, 5)), rng.integers(0, 5, 10))
    assert math.isnan(agg4["acc5"])
    assert agg5["acc5"] == 1.0  # every true class is in the top 5 of 5


def test_mean_per_class_recall_imbalanced():
    targets = [0, 0, 0, 0, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2]
    logits = np.full((7, 4), -1.0)
    logits[np.arange(7), preds] = 1.0
    logits[0, 3] = 0.5  # class 3 never a target: it must not count as a class with recall 0
    per, agg = cls(logits, targets)
    assert agg["acc1"] == 5 / 7
    assert agg["mean_per_class_recall"] == pytest.approx((3 / 4 + 1 / 1 + 1 / 2) / 3)
    # a class that is predicted but never a target is ignored (sklearn drops it)
    logits2 = logits.copy()
    logits2[5] = [-1, -1, -1, 2]
    _, agg2 = cls(logits2, targets)
    assert agg2["mean_per_class_recall"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)


def test_classification_matches_clip_benchmark_accuracy_without_ties():
    """CLIP_benchmark: top-k from torch.topk, acc = hits / n; balanced accuracy on argmax."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 12)).astype(np.float32)
    target = rng.integers(0, 12, 300)
    per, agg = cls(logits, target)
    t = torch.from_numpy(logits)
    pred = t.topk(5, 1, True, True)[1].t()
    correct = pred.eq(torch.from_numpy(target).view(1, -1).expand_as(pred))
    acc1, acc5 = (correct[:k].reshape(-1).float().sum().item() / 300 for k in (1, 5))
    assert (agg["acc1"], agg["acc5"]) == (acc1, acc5)
    am = t.argmax(1).numpy()
    recalls = [np.mean(am[target == c] == c) for c in np.unique(target)]
    assert agg["mean_per_class_recall"] == pytest.approx(np.mean(recalls), abs=1e-15)


def test_batches_concatenate_to_the_whole():
    rng = np.random.default_rng(2)
    logits, target = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    whole = M.classification_per_example(logits, target)
    parts = [M.classification_per_example(logits[s:s + 16], target[s:s + 16], 7) for s in range(0, 50, 16)]
    joined = M.concat_classification(parts)
    for k in M.CLS_KEYS:
        np.testing.assert_array_equal(joined[k], whole[k])
    assert whole["target"].dtype == np.int16 and whole["top5"].dtype == bool and whole["top1"].dtype == bool


def test_classification_rejects_bad_input():
    with pytest.raises(EvalError, match="NaN"):
        cls([[np.nan, 1.0]], [0])
    with pytest.raises(EvalError, match="out of range"):
        cls([[0.0, 1.0]], [2])


def test_logit_formula():
    feats = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    prompt_a = np.array([[1.0, 0.0], [2.0, 0.0]])  # both normalize to (1, 0)
    prompt_b = np.array([[0.0, 1.0], [1.0, 0.0]])  # mean of (0,1),(1,0) -> (.5,.5) -> (.707,.707)
    clf = np.stack([M.class_embedding(prompt_a), M.class_embedding(prompt_b)], axis=1)
    np.testing.assert_allclose(clf[:, 1], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    logits = M.zero_shot_logits(feats, clf)
    np.testing.assert_allclose(logits, [[60.0, 100 * 7 / 5 * 2 ** -0.5], [0.0, 100 * 2 ** -0.5]], rtol=1e-5)


# ----------------------------------------------------------------------------------------------- retrieval

def brute_force_retrieval(scores, tii, ks=(1, 5, 10)):
    n_t, n_i = scores.shape
    out = {}
    for k in ks:
        img_hits = [tii[t] in sorted(range(n_i), key=lambda j: (-scores[t, j], j))[:k] for t in range(n_t)]
        txt_hits = [any(tii[t] == i for t in sorted(range(n_t), key=lambda t: (-scores[t, i], t))[:k])
                    for i in range(n_i)]
        out[f"image_retrieval_recall@{k}"] = float(np.float32(sum(img_hits)) / np.float32(n_t))
        out[f"text_retrieval_recall@{k}"] = float(np.float32(sum(txt_hits)) / np.float32(n_i))
    out["mean_recall@1"] = 0.5 * (out["text_retrieval_recall@1"] + out["image_retrieval_recall@1"])
    return out


def test_retrieval_hand_case_five_captions():
    # 3 images x 5 captions. Text t belongs to image t // 5.
    tii = np.repeat(np.arange(3), 5)
    scores = np.zeros((15, 3), dtype=np.float32)
    scores[np.arange(15), tii] = 1.0  # every text prefers its own image ...
    scores[1] = [0.2, 0.9, 0.1]  # ... except text 1 (image 0): its image ranks 2nd
    scores[7] = [0.1, 0.5, 0.5]  # text 7 (image 1): tie with image 2, lower index wins -> rank 0
    scores[12] = [0.5, 0.1, 0.5]  # text 12 (image 2): tie with image 0 -> rank 1
    per = M.retrieval_per_example(scores, tii)
    assert per["image_hits"][[0, 1, 7, 12], 0].tolist() == [True, False, True, False]
    assert per["image_hits"][:, 1].all() and per["recall_k"].tolist() == [1, 5, 10]
    agg = M.aggregate_retrieval(per)
    assert agg["image_retrieval_recall@1"] == pytest.approx(13 / 15)
    assert agg["image_retrieval_recall@5"] == 1.0
    # image -> text: for every image some own text scores 1.0 and comes before any foreign 1.0
    assert per["text_hits"][:, 0].tolist() == [True, True, True]
    assert agg["text_retrieval_recall@1"] == 1.0
    assert agg["mean_recall@1"] == pytest.approx(0.5 * (1 + 13 / 15))
    assert agg == brute_force_retrieval(scores, tii)


def test_retrieval_equals_brute_force_with_many_ties():
    rng = np.random.default_rng(3)
    for n_images, caps in ((7, 5), (12, 3)):
        tii = np.repeat(np.arange(n_images), caps)
        scores = rng.integers(0, 4, size=(len(tii), n_images)).astype(np.float32)
        per = M.retrieval_per_example(scores, tii)
        assert M.aggregate_retrieval(per) == brute_force_retrieval(scores, tii)


def test_retrieval_matches_clip_benchmark_semantics_without_ties():
    """CLIP_benchmark: recall@k per query via torch.topk over a positive-pair matrix, then (> 0).mean()."""
    rng = np.random.default_rng(4)
    n_images, caps = 20, 5
    tii = np.repeat(np.arange(n_images), caps)
    scores = torch.from_numpy(rng.normal(size=(len(tii), n_images)).astype(np.float32))
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(tii)), torch.from_numpy(tii)] = True

    def recall(s, p, k):
        top = torch.nn.functional.one_hot(torch.topk(s, k, dim=1)[1], num_classes=s.shape[1])
        return (top * p.view(s.shape[0], 1, s.shape[1])).sum(dim=(1, 2)) / p.sum(dim=1)

    agg = M.aggregate_retrieval(M.retrieval_per_example(scores.numpy(), tii))
    assert agg == M.aggregate_retrieval(M.retrieval_per_example(scores.numpy(), tii, topk=torch_topk))
    for k in (1, 5, 10):
        assert agg[f"image_retrieval_recall@{k}"] == (recall(scores, pos, k) > 0).float().mean().item()
        assert agg[f"text_retrieval_recall@{k}"] == (recall(scores.T, pos.T, k) > 0).float().mean().item()


def test_image_without_captions_is_never_a_text_hit():
    scores = np.array([[0.9, 0.1], [0.8, 0.2]], dtype=np.float32)
    per = M.retrieval_per_example(scores, [0, 0])  # image 1 has no captions; k > candidates is capped
    assert per["text_hits"][1].tolist() == [False, False, False]
    assert M.aggregate_retrieval(per)["text_retrieval_recall@10"] == 0.5
    assert M.aggregate_retrieval(per)["image_retrieval_recall@10"] == 1.0


# ---------------------------------------------------------------------------------------------- resampling

def test_resampling_identity_and_image_bootstrap():
    rng = np.random.default_rng(5)
    logits, target = rng.normal(size=(40, 6)), rng.integers(0, 6, 40)
    per = M.classification_per_example(logits, target)
    assert M.aggregate_classification(M.resample_classification(per, np.arange(40))) == \
        M.aggregate_classification(per)
    tii = np.repeat(np.arange(10), 5)
    rper = M.retrieval_per_example(rng.normal(size=(50, 10)), tii)
    same = M.resample_retrieval(rper, np.arange(10))
    assert M.aggregate_retrieval(same) == M.aggregate_retrieval(rper)
    draw = M.resample_retrieval(rper, np.array([3, 3, 7]))
    assert draw["text_image_index"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    np.testing.assert_array_equal(draw["image_hits"], np.concatenate(
        [rper["image_hits"][15:20], rper["image_hits"][15:20], rper["image_hits"][35:40]]))
    np.testing.assert_array_equal(draw["text_hits"], rper["text_hits"][[3, 3, 7]])


def test_torch_topk_equals_clip_benchmark_calls_even_with_ties():
    """Blockwise torch top-k (the evaluator's) gives CLIP_benchmark's hits, ties included."""
    rng = np.random.default_rng(6)
    logits = rng.integers(0, 3, size=(500, 10)).astype(np.float32)  # many ties
    target = rng.integers(0, 10, 500)
    per = M.concat_classification([M.classification_per_example(logits[s:s + 64], target[s:s + 64], 10,
                                                                 topk=torch_topk) for s in range(0, 500, 64)])
    top = torch.from_numpy(logits).topk(5, 1, True, True)[1].numpy()
    np.testing.assert_array_equal(per["top1"], top[:, 0] == target)
    np.testing.assert_array_equal(per["top5"], (top == target[:, None]).any(1))
    np.testing.assert_array_equal(per["pred"], torch.from_numpy(logits).argmax(1).numpy())
