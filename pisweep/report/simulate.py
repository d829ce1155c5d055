"""Simulated studies with a known delta, in the evaluator's per-example format: what the calibration benchmark
(benchmarks/stats_calibration.py) and the statistics tests feed to the report's interval code. Pure numpy.

One draw is one (task, epoch) of a study: a fresh test set from a population, S seeds per arm (paired ids), and
every run's per-example outcomes. The truth is known by construction:

- a unit's chance of success is ``q + delta_unit`` in arm A and ``q`` in arm B, plus a seed shift per run:
  ``c_s`` shared by both arms of seed s (cancels in the delta) and ``u_{arm,s}`` of variance seed_sd^2 / 2 per
  arm, so that one seed's delta varies by ``seed_sd`` over training randomness;
- outcomes are Bernoulli with those chances, correlated across runs through a Gaussian copula (runs agree on
  most examples, as real seeds do), so every run keeps exactly its chance;
- ``delta_unit`` has mean ``delta`` over the population. For per-class recall the classes are fixed by the
  benchmark, so the truth is the mean over this draw's classes of their expected effect;
- retrieval: images with ``captions`` captions each; a caption shares its image's difficulty, effect and latent
  (a cluster), and the image query (image -> text) shares them too.

Chances stay inside (0, 1) for the sizes used (|delta| <= 0.06, seed_sd <= 0.04), so no clipping bends the truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["classification", "per_class_recall", "retrieval"]
METRIC: dict[str, str] = {"classification": "acc1", "per_class_recall": "mean_per_class_recall",
                          "retrieval": "mean_recall@1"}
SHARED = 0.7  # copula correlation of one example's outcomes across runs (seeds agree on most examples)


@dataclass(frozen=True)
class Draw:
    """One simulated (task, epoch): per-example arrays of arm A's and arm B's runs (seed ids 0..S-1), the truth."""

    runs_a: list[dict[str, np.ndarray]]
    runs_b: list[dict[str, np.ndarray]]
    metric: str
    truth: float


@dataclass(frozen=True)
class Population:
    """Sizes of the simulated test set: ``examples`` (classification), ``classes`` x ``per_class`` (per-class
    recall), ``images`` x ``captions`` (retrieval); ``effect_sd``: spread of the per-unit effect around delta."""

    examples: int = 2000
    classes: int = 50
    per_class: int = 40
    images: int = 600
    captions: int = 5
    effect_sd: float = 0.06


def draw(rng: np.random.Generator, kind: Kind, seeds: int, delta: float, seed_sd: float,
         pop: Population = Population()) -> Draw:
    """One simulated (task, epoch) of ``kind`` with ``seeds`` paired seeds per arm."""
    shift_a, shift_b = _seed_shifts(rng, seeds, seed_sd)
    if kind == "retrieval":
        return _retrieval(rng, seeds, delta, shift_a, shift_b, pop)
    if kind == "classification":
        n = pop.examples
        target = rng.integers(0, 10, n)
        q = rng.uniform(0.35, 0.6, n)
        effect = delta + pop.effect_sd * rng.uniform(-np.sqrt(3), np.sqrt(3), n)
        truth = delta
    else:
        n = pop.classes * pop.per_class
        target = np.repeat(np.arange(pop.classes), pop.per_class)
        q_class = rng.uniform(0.35, 0.6, pop.classes)
        spread = rng.uniform(-np.sqrt(3), np.sqrt(3), pop.classes)
        effect_class = delta + pop.effect_sd * (spread - spread.mean())  # these classes' mean effect is delta
        q = q_class[target] + rng.uniform(-0.05, 0.05, n)
        effect = effect_class[target] + 0.5 * pop.effect_sd * rng.uniform(-np.sqrt(3), np.sqrt(3), n)
        truth = delta  # the classes are the benchmark's: the truth is about these, whose mean effect is delta
    latent = rng.standard_normal(n)
    n_classes = int(target.max()) + 1

    def run(chance: np.ndarray) -> dict[str, np.ndarray]:
        ok = _outcomes(rng, latent, chance)
        pred = np.where(ok, target, (target + 1) % n_classes)
        return {"target": target.astype(np.int16), "pred": pred.astype(np.int16), "top1": ok,
                "top5": ok | (rng.random(n) < 0.5), "n_classes": np.array(n_classes, dtype=np.int64)}

    return Draw([run(q + effect + s) for s in shift_a], [run(q + s) for s in shift_b], METRIC[kind], truth)


def _seed_shifts(rng: np.random.Generator, seeds: int, seed_sd: float) -> tuple[np.ndarray, np.ndarray]:
    shared = 0.01 * rng.standard_normal(seeds)
    own = seed_sd / np.sqrt(2.0) * rng.standard_normal((2, seeds))
    return shared + own[0], shared + own[1]


def _outcomes(rng: np.random.Generator, latent: np.ndarray, chance: np.ndarray) -> np.ndarray:
    """Bernoulli(chance) per unit, correlated with other runs through the shared latent (Gaussian copula)."""
    from scipy.special import ndtr

    z = np.sqrt(SHARED) * latent + np.sqrt(1.0 - SHARED) * rng.standard_normal(len(latent))
    return ndtr(z) < chance


def _retrieval(rng: np.random.Generator, seeds: int, delta: float, shift_a: np.ndarray, shift_b: np.ndarray,
               pop: Population) -> Draw:
    J, m = pop.images, pop.captions
    tii = np.repeat(np.arange(J), m)
    q = rng.uniform(0.35, 0.6, J)
    effect = delta + pop.effect_sd * rng.uniform(-np.sqrt(3), np.sqrt(3), J)
    image_latent = rng.standard_normal(J)
    caption_latent = np.sqrt(0.6) * image_latent[tii] + np.sqrt(0.4) * rng.standard_normal(J * m)

    def run(base: np.ndarray) -> dict[str, np.ndarray]:
        image_hits = _outcomes(rng, caption_latent, base[tii])  # each caption: is its image in its top k
        text_hits = _outcomes(rng, image_latent, base)  # each image: is one of its captions in its top k
        widen = rng.random((2, J * m)) < 0.3
        iw = rng.random((2, J)) < 0.3
        return {"text_image_index": tii.astype(np.int32),
                "image_hits": np.stack([image_hits, image_hits | widen[0], image_hits | widen[0] | widen[1]], 1),
                "text_hits": np.stack([text_hits, text_hits | iw[0], text_hits | iw[0] | iw[1]], 1),
                "recall_k": np.array([1, 5, 10], dtype=np.int64)}

    return Draw([run(q + effect + s) for s in shift_a], [run(q + s) for s in shift_b], METRIC["retrieval"], delta)


def trajectory(rng: np.random.Generator, seeds: int, deltas: list[float], seed_sd: float,
               pop: Population = Population()) -> list[Draw]:
    """One classification test set evaluated at several epochs (one Draw per epoch, truth ``deltas[e]``): the same
    examples, each example's difficulty and share of the effect, and each seed's shift (one training run per seed,
    with a little drift between epochs); fresh outcomes per epoch."""
    n = pop.examples
    target = rng.integers(0, 10, n)
    q = rng.uniform(0.35, 0.6, n)
    spread = pop.effect_sd * rng.uniform(-np.sqrt(3), np.sqrt(3), n)
    latent = rng.standard_normal(n)
    shift_a, shift_b = _seed_shifts(rng, seeds, seed_sd)

    def run(chance: np.ndarray) -> dict[str, np.ndarray]:
        ok = _outcomes(rng, latent, chance)
        return {"target": target.astype(np.int16), "pred": np.where(ok, target, (target + 1) % 10).astype(np.int16),
                "top1": ok, "top5": ok | (rng.random(n) < 0.5), "n_classes": np.array(10, dtype=np.int64)}

    out = []
    for delta in deltas:
        drift_a, drift_b = _seed_shifts(rng, seeds, 0.2 * seed_sd)
        out.append(Draw([run(q + delta + spread + s + t) for s, t in zip(shift_a, drift_a)],
                        [run(q + s + t) for s, t in zip(shift_b, drift_b)], "acc1", float(delta)))
    return out
