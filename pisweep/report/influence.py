"""How much each run's metric moves when the test set is redrawn: its example-level covariance. Pure numpy.

Every metric of the report is, to first order, a sum over *units* of the test set of per-unit contributions
(its influence values): an example for acc1, acc5 and mean per-class recall, a triplet for NIGHTS 2AFC, an image
with all of its captions for retrieval (the captions of one image are not independent queries, and both directions share the image).
Units are redrawn within *strata*: the classes for mean per-class recall (the benchmarks fix each class's count),
one stratum otherwise. For two runs scored on the same units, the covariance of their metrics over redraws of the
test set is then

    C[r, q] = sum over strata h of n_h / (n_h - 1) * sum over units u in h of psi_r(u) * psi_q(u)

with psi centred within each stratum: the bootstrap's covariance with infinitely many resamples (exact for the
linear metrics, first order for the ratio of text->image recall), with the n/(n-1) that makes it unbiased. No
random draw is involved, so every table of a report gets the same number. The per-example arrays are those the
evaluator writes (eval/metrics.py); every run must have scored the same examples in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pisweep.errors import PisweepError

PerExample = Mapping[str, np.ndarray]


class OrderMismatch(PisweepError, ValueError):
    """The runs' per-example arrays do not describe the same examples in the same order."""


class MetricUndefined(PisweepError, KeyError):
    """The per-example arrays cannot give this metric (acc5 under 5 classes, a recall@k not stored...)."""


@dataclass(frozen=True)
class Contribution:
    """One run's metric as a sum over units: ``value == psi.sum()`` up to rounding (ratio metrics: first order)."""

    value: float
    psi: np.ndarray  # (units,)
    strata: np.ndarray  # (units,) stratum of each unit (0..H-1)
    key: np.ndarray  # what every run of a comparison must share (the targets; each caption's image)


def contribution(arrays: PerExample, metric: str) -> Contribution:
    """The contributions of one run's units to ``metric``."""
    if metric in ("acc1", "acc5", "mean_per_class_recall"):
        return _classification(arrays, metric)
    if metric.startswith("nights_") and metric.endswith("_2afc"):
        return _nights(arrays, metric[len("nights_"):-len("_2afc")])
    if metric == "mean_recall@1":
        img, txt = _text_to_image(arrays, 1), _image_to_text(arrays, 1)
        return Contribution((img.value + txt.value) / 2, (img.psi + txt.psi) / 2, img.strata, img.key)
    for prefix, part in (("image_retrieval_recall@", _text_to_image), ("text_retrieval_recall@", _image_to_text)):
        if metric.startswith(prefix):
            return part(arrays, int(metric[len(prefix):]))
    raise MetricUndefined(f"no per-example form of metric {metric!r}")


def linearize(runs: Sequence[PerExample], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (runs,), psi (runs, units)) of ``metric`` for runs scored on the same examples: psi centred within
    strata and scaled by sqrt(n_h / (n_h - 1)), so that their covariance over redraws of the test set is
    ``psi @ psi.T``, across epochs too (the rows of several epochs of one test set share their units). Raises
    OrderMismatch when the runs scored different examples, MetricUndefined when the arrays lack the metric."""
    parts = [contribution(r, metric) for r in runs]
    first = parts[0]
    for p in parts[1:]:
        if p.key.shape != first.key.shape or not np.array_equal(p.key, first.key):
            raise OrderMismatch("the runs' per-example files hold different examples or orders")
    psi = np.stack([p.psi for p in parts]).astype(np.float64)
    return np.array([p.value for p in parts]), scaled_centred(psi, first.strata)


def example_covariance(runs: Sequence[PerExample], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (runs,), covariance (runs, runs)) of ``metric`` over redraws of the test set (see linearize)."""
    values, psi = linearize(runs, metric)
    return values, psi @ psi.T


def scaled_centred(psi: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """psi (runs, units) centred within strata and scaled by sqrt(n_h/(n_h - 1)) (0 for a unit alone in its
    stratum): its Gram matrix is the covariance formula above."""
    strata = np.asarray(strata, dtype=np.int64)
    sizes = np.bincount(strata).astype(np.float64)
    means = np.stack([np.bincount(strata, weights=row, minlength=len(sizes)) for row in psi]) / np.maximum(sizes, 1)
    factor = np.where(sizes > 1, np.sqrt(sizes / np.maximum(sizes - 1, 1)), 0.0)[strata]
    return (psi - means[:, strata]) * factor


# ----------------------------------------------------------------------------------------------- metrics

def _classification(arrays: PerExample, metric: str) -> Contribution:
    target = np.asarray(arrays["target"]).astype(np.int64)
    n = len(target)
    if n == 0:
        raise MetricUndefined("no examples")
    if metric == "mean_per_class_recall":
        correct = (np.asarray(arrays["pred"]).astype(np.int64) == target).astype(np.float64)
        classes, cls = np.unique(target, return_inverse=True)
        sizes = np.bincount(cls).astype(np.float64)
        psi = correct / (len(classes) * sizes[cls])
        return Contribution(float(psi.sum()), psi, cls, target)
    if metric == "acc5" and int(np.asarray(arrays["n_classes"])) < 5:
        raise MetricUndefined("acc5 is not defined for a task with fewer than 5 classes")
    hits = np.asarray(arrays["top1" if metric == "acc1" else "top5"]).astype(np.float64)
    return Contribution(float(hits.mean()), hits / n, np.zeros(n, np.int64), target)


def _nights(arrays: PerExample, subset: str) -> Contribution:
    """NIGHTS 2AFC of one subset (a triplet per unit); ``total``: both test subsets' triplets together (DreamSim's
    size-weighted total)."""
    parts = ("test_imagenet", "test_no_imagenet") if subset == "total" else (subset,)
    if any(f"{p}_outcome" not in arrays for p in parts):
        raise MetricUndefined(f"no per-triplet outcomes of NIGHTS {subset} (stored: {sorted(arrays)})")
    outcome = np.concatenate([np.asarray(arrays[f"{p}_outcome"], dtype=np.float64) for p in parts])
    ids = np.concatenate([np.asarray(arrays[f"{p}_id"]) for p in parts])
    if len(outcome) == 0:
        raise MetricUndefined(f"no NIGHTS {subset} triplets")
    n = len(outcome)
    return Contribution(float(outcome.mean()), outcome / n, np.zeros(n, np.int64), ids)


def _column(arrays: PerExample, name: str, k: int) -> np.ndarray:
    ks = [int(x) for x in np.asarray(arrays["recall_k"])]
    if k not in ks:
        raise MetricUndefined(f"recall@{k} was not stored (stored: {ks})")
    return np.asarray(arrays[name])[:, ks.index(k)].astype(np.float64)


def _text_to_image(arrays: PerExample, k: int) -> Contribution:
    """image_retrieval_recall@k: the share of captions whose image is in their top k, a ratio over image units."""
    tii = np.asarray(arrays["text_image_index"]).astype(np.int64)
    n_images = np.asarray(arrays["text_hits"]).shape[0]
    hits = np.bincount(tii, weights=_column(arrays, "image_hits", k), minlength=n_images)
    captions = np.bincount(tii, minlength=n_images).astype(np.float64)
    total = captions.sum()
    if total == 0:
        raise MetricUndefined("no captions")
    value = hits.sum() / total
    return Contribution(float(value), (hits - value * captions) / total + value / n_images,
                        np.zeros(n_images, np.int64), tii)


def _image_to_text(arrays: PerExample, k: int) -> Contribution:
    """text_retrieval_recall@k: the share of images with one of their captions in their top k."""
    hits = _column(arrays, "text_hits", k)
    if len(hits) == 0:
        raise MetricUndefined("no images")
    return Contribution(float(hits.mean()), hits / len(hits), np.zeros(len(hits), np.int64),
                        np.asarray(arrays["text_image_index"]).astype(np.int64))
