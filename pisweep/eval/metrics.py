"""CLIP_benchmark's zero-shot metrics, computed from compact per-example results (pure numpy).

Why per-example first: the report's paired bootstrap resamples examples, so every aggregate must be a
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

Ties: an item's rank is the number of items scored strictly higher plus the number scored equal that
come earlier (lower index). So the top-1 is ``argmax`` (first maximum, as torch.argmax and sklearn see it)
and "top-k" is the first k of a stable descending sort. CLIP_benchmark's top-k comes from torch.topk,
whose order among exactly equal scores is unspecified (it differs with k, the number of classes and the
device); we fix it so that results are reproducible. It only matters for bit-identical scores, e.g. the
duplicated ImageNet class names "missile" and "sunglasses".
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import EvalError

# Per-example keys (also the array names in the saved .npz files).
CLS_KEYS = ("target", "pred", "top5", "n_classes")
RET_KEYS = ("text_image_index", "image_rank", "text_rank")
NO_TEXT = np.iinfo(np.int32).max  # text_rank of an image without captions: never a hit
_CHUNK_CELLS = 1 << 22  # elements per comparison block, to bound memory


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
                               n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Compact results of one batch (or all) of examples: true class, top-1 prediction, top-5 hit.

    Rows are independent, so batches can be processed separately and concatenated with
    :func:`concat_classification`.
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
    rank = _rank_of(logits, targets)
    dtype = np.int16 if c <= np.iinfo(np.int16).max else np.int32
    return {"target": targets.astype(dtype), "pred": logits.argmax(axis=1).astype(dtype), "top5": rank < 5,
            "n_classes": np.array(c, dtype=np.int64)}


def _rank_of(scores: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Per row r, the stable descending rank of scores[r, col[r]] (0 = first)."""
    n, m = scores.shape
    out = np.empty(n, dtype=np.int32)
    step = max(1, _CHUNK_CELLS // max(m, 1))
    idx = np.arange(m)
    for s in range(0, n, step):
        block, c = scores[s:s + step], col[s:s + step]
        own = block[np.arange(len(c)), c][:, None]
        out[s:s + step] = (block > own).sum(1) + ((block == own) & (idx[None, :] < c[:, None])).sum(1)
    return out


def concat_classification(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-batch results (in order) into one per-example record."""
    if not parts:
        raise EvalError("no examples")
    n_classes = {int(p["n_classes"]) for p in parts}
    if len(n_classes) != 1:
        raise EvalError(f"batches disagree on the number of classes: {sorted(n_classes)}")
    out = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in ("target", "pred", "top5")}
    out["n_classes"] = np.array(n_classes.pop(), dtype=np.int64)
    return out


def aggregate_classification(per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
    """acc1, acc5 (NaN under 5 classes), mean_per_class_recall, from compact per-example results."""
    target = np.asarray(per_example["target"]).astype(np.int64)
    pred = np.asarray(per_example["pred"]).astype(np.int64)
    top5 = np.asarray(per_example["top5"], dtype=bool)
    n = len(target)
    if n == 0:
        raise EvalError("no examples to aggregate")
    correct = pred == target
    acc1 = int(correct.sum()) / n  # CLIP_benchmark: exact count / n in float64
    acc5 = int(top5.sum()) / n if int(per_example["n_classes"]) >= 5 else math.nan
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(target, correct)}


def mean_per_class_recall(target: np.ndarray, correct: np.ndarray) -> float:
    """sklearn's balanced accuracy: mean over the classes present in ``target`` (ascending) of recall."""
    classes, inverse = np.unique(target, return_inverse=True)
    hits = np.bincount(inverse, weights=correct.astype(np.float64), minlength=len(classes))
    sizes = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    return float(np.mean(hits / sizes))


def resample_classification(per_example: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at ``idx`` (with repeats): a bootstrap draw for :func:`aggregate_classification`."""
    out = {k: np.asarray(per_example[k])[idx] for k in ("target", "pred", "top5")}
    out["n_classes"] = np.asarray(per_example["n_classes"])
    return out


# ----------------------------------------------------------------------------------------------- retrieval

def retrieval_per_example(scores: np.ndarray, text_image_index: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Ranks from a (n_texts, n_images) score matrix and each text's image index.

    image_rank[t]: rank of text t's image among all images for text t (text -> image retrieval).
    text_rank[i]: best rank, among all texts for image i, of any of image i's texts (image -> text);
    NO_TEXT for an image without texts. A hit at k is ``rank < k``.
    """
    scores = np.asarray(scores)
    tii = np.asarray(text_image_index, dtype=np.int64)
    n_texts, n_images = scores.shape
    if tii.shape != (n_texts,):
        raise EvalError(f"{n_texts} texts but {tii.shape} text->image indices")
    if n_texts and (tii.min() < 0 or tii.max() >= n_images):
        raise EvalError("text->image index out of range")
    _check_finite(scores, "retrieval scores")
    image_rank = _rank_of(scores, tii)
    # Rank of text t within the column of its own image, over all texts.
    text_rank_of_text = np.empty(n_texts, dtype=np.int32)
    step = max(1, _CHUNK_CELLS // max(n_texts, 1))
    rows = np.arange(n_texts)
    for s in range(0, n_texts, step):
        cols = scores[:, tii[s:s + step]]  # (n_texts, chunk)
        own = scores[rows[s:s + step], tii[s:s + step]][None, :]
        text_rank_of_text[s:s + step] = ((cols > own).sum(0)
                                         + ((cols == own) & (rows[:, None] < rows[None, s:s + step])).sum(0))
    text_rank = np.full(n_images, NO_TEXT, dtype=np.int32)
    np.minimum.at(text_rank, tii, text_rank_of_text)
    return {"text_image_index": tii.astype(np.int32), "image_rank": image_rank, "text_rank": text_rank}


def _mean_f32(hits: np.ndarray) -> float:
    """CLIP_benchmark's ``(recall > 0).float().mean().item()``: an exact count divided in float32."""
    if hits.size == 0:
        raise EvalError("no examples to aggregate")
    return float(np.float32(int(hits.sum())) / np.float32(hits.size))


def aggregate_retrieval(per_example: Mapping[str, np.ndarray],
                        recall_k: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """image/text_retrieval_recall@k for each k, and mean_recall@1, from per-example ranks."""
    image_rank = np.asarray(per_example["image_rank"])
    text_rank = np.asarray(per_example["text_rank"])
    out: dict[str, float] = {}
    for k in recall_k:
        out[f"image_retrieval_recall@{k}"] = _mean_f32(image_rank < k)
        out[f"text_retrieval_recall@{k}"] = _mean_f32(text_rank < k)
    r1 = (_mean_f32(image_rank < 1), _mean_f32(text_rank < 1))
    out["mean_recall@1"] = 0.5 * (r1[1] + r1[0])
    return out


def resample_retrieval(per_example: Mapping[str, np.ndarray], image_idx: np.ndarray) -> dict[str, np.ndarray]:
    """A bootstrap draw over images (with repeats): those images and, for each copy, all of its texts.

    Ranks stay those measured against the full set (the usual bootstrap of a retrieval metric).
    """
    image_idx = np.asarray(image_idx, dtype=np.int64)
    tii = np.asarray(per_example["text_image_index"], dtype=np.int64)
    order = np.argsort(tii, kind="stable")
    n_images = len(per_example["text_rank"])
    starts = np.searchsorted(tii[order], np.arange(n_images + 1))
    texts = [order[starts[i]:starts[i + 1]] for i in image_idx]
    text_idx = np.concatenate(texts) if texts else np.zeros(0, dtype=np.int64)
    new_tii = np.repeat(np.arange(len(image_idx)), [len(t) for t in texts])
    return {"text_image_index": new_tii.astype(np.int32),
            "image_rank": np.asarray(per_example["image_rank"])[text_idx],
            "text_rank": np.asarray(per_example["text_rank"])[image_idx]}
