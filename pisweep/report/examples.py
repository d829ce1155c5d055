"""From the evaluator's per-example arrays to the sufficient statistics of the paired bootstrap. Pure numpy.

A metric is a list of parts, each an example set with one correctness bit per example and run (see
docs/statistics.md): acc1 is top-1 hits; mean_per_class_recall is argmax == target within each true class;
mean_recall@1 is two parts, text queries (image R@1) and image queries (text R@1);
image_retrieval_recall@k / text_retrieval_recall@k are one part each. Every run of both arms must have scored the
same examples in the same order (same eval set => same order); the check is the class labels, or each caption's
image index. When that fails the caller falls back to the seed-level bootstrap and says why.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pisweep.report.bootstrap import JointCounts, joint_counts

PerExample = Mapping[str, np.ndarray]


class OrderMismatch(ValueError):
    """The runs' per-example arrays do not describe the same examples in the same order."""


def _part_arrays(arrays: PerExample, metric: str) -> list[tuple[np.ndarray, np.ndarray | None, str, np.ndarray]]:
    """(correct, classes, bootstrap metric, order key) per part of ``metric`` for one run."""
    if metric in ("acc1", "mean_per_class_recall"):
        target = np.asarray(arrays["target"]).astype(np.int64)
        if metric == "acc1":
            return [(np.asarray(arrays["top1"]).astype(bool), None, "acc1", target)]
        return [(np.asarray(arrays["pred"]).astype(np.int64) == target, target, "mean_per_class_recall", target)]
    ks = [int(k) for k in np.asarray(arrays["recall_k"])]
    tii = np.asarray(arrays["text_image_index"]).astype(np.int64)
    n_images = np.asarray(arrays["text_hits"]).shape[0]
    image_order = np.arange(n_images, dtype=np.int64)

    def image_part(k: int):  # text queries: is the caption's image in its top k images
        return (np.asarray(arrays["image_hits"])[:, ks.index(k)].astype(bool), None, "hits", tii)

    def text_part(k: int):  # image queries: is one of the image's captions in its top k texts
        return (np.asarray(arrays["text_hits"])[:, ks.index(k)].astype(bool), None, "hits", image_order)

    if metric == "mean_recall@1":
        return [image_part(1), text_part(1)]
    for prefix, part in (("image_retrieval_recall@", image_part), ("text_retrieval_recall@", text_part)):
        if metric.startswith(prefix):
            k = int(metric[len(prefix):])
            if k not in ks:
                raise KeyError(f"recall@{k} was not stored (stored: {ks})")
            return [part(k)]
    raise KeyError(f"no per-example form of metric {metric!r}")


def metric_counts(runs_a: Sequence[PerExample], runs_b: Sequence[PerExample], metric: str,
                  seeds_a: Sequence[int], seeds_b: Sequence[int]) -> list[JointCounts]:
    """The JointCounts of every part of ``metric`` for these runs (arm A's, then arm B's, with their seed ids)."""
    parts_a = [_part_arrays(r, metric) for r in runs_a]
    parts_b = [_part_arrays(r, metric) for r in runs_b]
    out = []
    for j in range(len(parts_a[0])):
        key = parts_a[0][j][3]
        for p in [*parts_a, *parts_b]:
            if p[j][3].shape != key.shape or not np.array_equal(p[j][3], key):
                raise OrderMismatch("the runs' per-example files hold different examples or orders")
        correct_a = np.stack([p[j][0] for p in parts_a])
        correct_b = np.stack([p[j][0] for p in parts_b])
        out.append(joint_counts(correct_a, correct_b, parts_a[0][j][1], parts_a[0][j][2],
                                seeds_a=list(seeds_a), seeds_b=list(seeds_b)))
    return out
