"""CLIP_benchmark's zero-shot metrics, computed from compact per-example results (pure numpy).

Why per-example first: the report's intervals need each run's per-example outcomes, so every aggregate must be a
function of small per-example arrays that we store, not of logits we throw away.

Semantics (CLIP_benchmark 1.6.2, metrics/zeroshot_classification.py and zeroshot_retrieval.py):

- classification: logits = 100 * normalize(image_features) @ classifier, where a class embedding is the
  re-normalized mean of its L2-normalized prompt embeddings. acc1/acc5 = fraction of examples whose true
  class is among the top-k logits; acc5 is NaN when the task has fewer than 5 class names;
  mean_per_class_recall = sklearn's balanced_accuracy_score(target, argmax): the mean, over classes that
  occur in the targets, of per-class recall.
- retrieval (several captions per image): scores = text_emb @ image_emb.T; image_retrieval_recall@k = the
  fraction of texts whose image is in their top-k images; text_retrieval_recall@k = the fraction of images
  with at least one of their texts in their top-k texts; mean_recall@1 (DataComp) = mean of the two R@1.

Ties: which of several exactly equal scores make the top-k is decided by a ``topk(block, k)`` function.
The default is a stable sort (lower index first; pure numpy). The evaluator passes torch.topk on the
CPU, which is what CLIP_benchmark runs for classification (it moves the logits to the CPU first), so
acc1/acc5 are identical to CLIP_benchmark's even under ties; torch.topk's order among equal scores is
unspecified and does vary (with k and the number of classes), which is why it is injected rather than
imitated. ``pred`` is the argmax (first maximum, as torch.argmax), which mean_per_class_recall uses;
under a tie it can disagree with the top-1 of acc1, exactly as in CLIP_benchmark. Ties only arise from
bit-identical scores, e.g. ImageNet's duplicated class names "missile" and "sunglasses", or duplicated
captions in retrieval sets.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from pisweep.errors import EvalError

# Per-example keys of a classification task (also the array names in the saved .npz files).
CLS_KEYS = ("target", "pred", "top1", "top5", "n_classes")
_CHUNK_CELLS = 1 << 22  # score cells per top-k block, to bound memory

#: topk(scores (rows, cols), k) -> (rows, k) column indices, best first.
TopK = Callable[[np.ndarray, int], np.ndarray]


def stable_topk(block: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns per row, ties to the lower index (a stable descending sort)."""
    return np.argsort(-block, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------------------------- embeddings

def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along ``axis`` (torch.nn.functional.normalize's eps of 1e-12 included)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_embedding(prompt_embeddings: np.ndarray) -> np.ndarray:
    """(T, D) prompt embeddings of one class -> (D,): normalize each, average, re-normalize."""
    mean = l2_normalize(np.asarray(prompt_embeddings, dtype=np.float32)).mean(axis=0)
    return mean / np.linalg.norm(mean)


def zero_shot_logits(image_features: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """(N, D) raw image features, (D, C) class embeddings -> (N, C) logits."""
    return 100.0 * l2_normalize(np.asarray(image_features, dtype=np.float32)) @ classifier


# ------------------------------------------------------------------------------------------ classification

def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise EvalError(f"{what} contain NaN or inf (a diverged checkpoint?)")


def classification_per_example(logits: np.ndarray, targets: Sequence[int] | np.ndarray,
                               n_classes: int | None = None, topk: TopK = stable_topk) -> dict[str, np.ndarray]:
    """Compact results of a batch (or all) of examples: true class, argmax, top-1 and top-5 hits.

    As CLIP_benchmark: one top-k call with k = 5 (k = 1 under 5 classes); top1 is its first column.
    Rows are independent, so batches can be processed separately and joined by :func:`concat_classification`.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise EvalError(f"logits {logits.shape} and targets {targets.shape} do not match")
    c = logits.shape[1] if n_classes is None else int(n_classes)
    if c != logits.shape[1]:
        raise EvalError(f"n_classes={c} but logits have {logits.shape[1]} columns")
    if targets.size and (targets.min() < 0 or targets.max() >= c):
        raise EvalError(f"class label out of range [0, {c}): {int(targets.min())}..{int(targets.max())}")
    _check_finite(logits, "logits")
    top = np.asarray(topk(logits, 5 if c >= 5 else 1))
    hits = top == targets[:, None]
    dtype = np.int16 if c <= np.iinfo(np.int16).max else np.int32
    return {"target": targets.astype(dtype), "pred": logits.argmax(axis=1).astype(dtype), "top1": hits[:, 0],
            "top5": hits.any(axis=1) if c >= 5 else np.ones(len(targets), bool),
            "n_classes": np.array(c, dtype=np.int64)}


def concat_classification(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-batch results (in order) into one per-example record."""
    if not parts:
        raise EvalError("no examples")
    n_classes = {int(p["n_classes"]) for p in parts}
    if len(n_classes) != 1:
        raise EvalError(f"batches disagree on the number of classes: {sorted(n_classes)}")
    out = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in ("target", "pred", "top1", "top5")}
    out["n_classes"] = np.array(n_classes.pop(), dtype=np.int64)
    return out


def aggregate_classification(per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
    """acc1, acc5 (NaN under 5 classes), mean_per_class_recall, from compact per-example results."""
    target = np.asarray(per_example["target"]).astype(np.int64)
    pred = np.asarray(per_example["pred"]).astype(np.int64)
    n = len(target)
    if n == 0:
        raise EvalError("no examples to aggregate")
    acc1 = int(np.count_nonzero(per_example["top1"])) / n  # CLIP_benchmark: exact count / n in float64
    acc5 = int(np.count_nonzero(per_example["top5"])) / n if int(per_example["n_classes"]) >= 5 else math.nan
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(target, pred == target)}


def mean_per_class_recall(target: np.ndarray, correct: np.ndarray) -> float:
    """sklearn's balanced accuracy: mean over the classes present in ``target`` (ascending) of recall."""
    classes, inverse = np.unique(target, return_inverse=True)
    hits = np.bincount(inverse, weights=correct.astype(np.float64), minlength=len(classes))
    sizes = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    return float(np.mean(hits / sizes))


def resample_classification(per_example: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at ``idx`` (with repeats): a bootstrap draw for :func:`aggregate_classification`."""
    out = {k: np.asarray(per_example[k])[idx] for k in ("target", "pred", "top1", "top5")}
    out["n_classes"] = np.asarray(per_example["n_classes"])
    return out


# ----------------------------------------------------------------------------------------------- retrieval

def retrieval_per_example(scores: np.ndarray, text_image_index: Sequence[int] | np.ndarray,
                          recall_k: Sequence[int] = (1, 5, 10), topk: TopK = stable_topk) -> dict[str, np.ndarray]:
    """Hits at each k from a (n_texts, n_images) score matrix and each text's image index.

    image_hits[t, j]: text t's image is among its top recall_k[j] images (text -> image retrieval).
    text_hits[i, j]: one of image i's texts is among its top recall_k[j] texts (image -> text); an
    image without texts never hits. As CLIP_benchmark, top-k is taken separately for every k (k is
    capped at the number of candidates, where CLIP_benchmark would stop with an error).
    """
    scores = np.asarray(scores)
    tii = np.asarray(text_image_index, dtype=np.int64)
    n_texts, n_images = scores.shape
    if tii.shape != (n_texts,):
        raise EvalError(f"{n_texts} texts but {tii.shape} text->image indices")
    if n_texts and (tii.min() < 0 or tii.max() >= n_images):
        raise EvalError("text->image index out of range")
    _check_finite(scores, "retrieval scores")
    ks = [int(k) for k in recall_k]
    image_hits = np.zeros((n_texts, len(ks)), dtype=bool)
    text_hits = np.zeros((n_images, len(ks)), dtype=bool)
    by_text, by_image = scores, scores.T
    for j, k in enumerate(ks):
        for s, e, top in _blocks(by_text, min(k, n_images), topk):
            image_hits[s:e, j] = (top == tii[s:e, None]).any(axis=1)
        for s, e, top in _blocks(by_image, min(k, n_texts), topk):
            text_hits[s:e, j] = (tii[top] == np.arange(s, e)[:, None]).any(axis=1)
    return {"text_image_index": tii.astype(np.int32), "image_hits": image_hits, "text_hits": text_hits,
            "recall_k": np.asarray(ks, dtype=np.int64)}


def _blocks(scores: np.ndarray, k: int, topk: TopK):
    step = max(1, _CHUNK_CELLS // max(scores.shape[1], 1))
    for s in range(0, scores.shape[0], step):
        e = min(s + step, scores.shape[0])
        yield s, e, np.asarray(topk(scores[s:e], k))


def _mean_f32(hits: np.ndarray) -> float:
    """CLIP_benchmark's ``(recall > 0).float().mean().item()``: an exact count divided in float32."""
    if hits.size == 0:
        raise EvalError("no examples to aggregate")
    return float(np.float32(int(hits.sum())) / np.float32(hits.size))


def aggregate_retrieval(per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
    """image/text_retrieval_recall@k for each stored k, and mean_recall@1, from per-example hits."""
    out: dict[str, float] = {}
    ks = [int(k) for k in per_example["recall_k"]]
    for j, k in enumerate(ks):
        out[f"image_retrieval_recall@{k}"] = _mean_f32(np.asarray(per_example["image_hits"])[:, j])
        out[f"text_retrieval_recall@{k}"] = _mean_f32(np.asarray(per_example["text_hits"])[:, j])
    if 1 in ks:
        out["mean_recall@1"] = 0.5 * (out["text_retrieval_recall@1"] + out["image_retrieval_recall@1"])
    return out


def resample_retrieval(per_example: Mapping[str, np.ndarray], image_idx: np.ndarray) -> dict[str, np.ndarray]:
    """A bootstrap draw over images (with repeats): those images and, for each copy, all of its texts.

    Hits stay those measured against the full set (the usual bootstrap of a retrieval metric).
    """
    image_idx = np.asarray(image_idx, dtype=np.int64)
    tii = np.asarray(per_example["text_image_index"], dtype=np.int64)
    order = np.argsort(tii, kind="stable")
    n_images = len(per_example["text_hits"])
    starts = np.searchsorted(tii[order], np.arange(n_images + 1))
    texts = [order[starts[i]:starts[i + 1]] for i in image_idx]
    text_idx = np.concatenate(texts) if texts else np.zeros(0, dtype=np.int64)
    new_tii = np.repeat(np.arange(len(image_idx)), [len(t) for t in texts])
    return {"text_image_index": new_tii.astype(np.int32),
            "image_hits": np.asarray(per_example["image_hits"])[text_idx],
            "text_hits": np.asarray(per_example["text_hits"])[image_idx],
            "recall_k": np.asarray(per_example["recall_k"])}
