"""When a gain emerges across epochs, and how wins add up across tasks (Holm, sign test). Pure, no I/O.

Definitions (also in docs/statistics.md):
- emergence epoch: the first evaluated epoch from which the delta's interval lower bound is above zero
  at that epoch and at every later evaluated epoch; None ("not yet") when the last one is not.
- crossover epoch: the same with the point (mean) delta instead of the lower bound.
- win/loss/tie of one task: a win when its Holm-adjusted p (across a table's tasks) is below alpha and the delta
  is positive, a loss when negative, else a tie; "no verdict" when its interval leaves seed noise out.
- win count and sign test: tasks whose point delta is above / below zero, exact two-sided binomial test
  with ties (delta exactly zero) dropped.
- their distribution (:func:`onset_distribution`): the same two epochs read from draws of the whole delta curve
  from its joint distribution across epochs (inference.Curve), one draw per replicate for all epochs, so every
  replicate is a coherent curve; with the probability that the gain is sustained from each epoch on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from pisweep.report.inference import StatsError

Outcome = Literal["win", "loss", "tie", "no verdict"]


def emergence_epoch(epochs: Sequence[int], lower_bounds: Sequence[float]) -> int | None:
    """First evaluated epoch whose lower bound, and every later one, is > 0; None when there is none.

    A NaN bound counts as not above zero. Epochs may come in any order; they must be distinct.
    """
    return _first_of_positive_suffix(epochs, lower_bounds, "lower_bounds")


def crossover_epoch(epochs: Sequence[int], mean_deltas: Sequence[float]) -> int | None:
    """First evaluated epoch from which the point delta is > 0 at every later evaluated epoch; else None."""
    return _first_of_positive_suffix(epochs, mean_deltas, "mean_deltas")


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (family-wise error control), same keys.

    Sorted ascending p_(1..m): adj_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)). NaN p-values
    stay NaN and are not counted in m.
    """
    out = {k: math.nan for k in pvalues}
    finite = sorted(((float(p), k) for k, p in pvalues.items() if not math.isnan(float(p))), key=lambda t: t[0])
    m, running = len(finite), 0.0
    for i, (p, k) in enumerate(finite):
        if not 0.0 <= p <= 1.0:
            raise StatsError(f"p-value of {k!r} is {p}, outside [0, 1]")
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses at 1/2 (ties already dropped); 1.0 when both are 0."""
    if wins < 0 or losses < 0:
        raise StatsError(f"wins and losses must be >= 0, got {wins} and {losses}")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2.0 ** n)


def verdict(delta: float, p_adjusted: float, decides: bool, alpha: float = 0.05) -> Outcome:
    """A task's outcome: win or loss when its (adjusted) p is below alpha, else tie; no verdict when its interval
    leaves seed noise out (one seed per arm) or there is none."""
    if not decides or math.isnan(p_adjusted):
        return "no verdict"
    if p_adjusted < alpha and delta != 0.0:
        return "win" if delta > 0.0 else "loss"
    return "tie"


@dataclasses.dataclass(frozen=True)
class Tally:
    """Across tasks at one epoch: raw win counts with a sign test, and Holm-adjusted per-task outcomes."""

    wins: int  # point delta > 0
    losses: int  # point delta < 0
    ties: int  # point delta == 0
    sign_p: float
    p_adjusted: dict[str, float]  # NaN for a task without a verdict (not in the Holm family)
    outcome: dict[str, Outcome]

    @property
    def significant(self) -> dict[Outcome, int]:
        counts: dict[Outcome, int] = {"win": 0, "loss": 0, "tie": 0, "no verdict": 0}
        for o in self.outcome.values():
            counts[o] += 1
        return counts


def tally(results: Mapping[str, tuple[float, float, bool]], *, alpha: float = 0.05) -> Tally:
    """Win counts (e.g. 23/29) with their sign test, and each task's outcome after Holm across the tasks whose
    interval may decide. ``results``: task -> (delta, p, decides)."""
    wins = sum(1 for d, _, _ in results.values() if d > 0.0)
    losses = sum(1 for d, _, _ in results.values() if d < 0.0)
    family = holm({k: p for k, (_, p, decides) in results.items() if decides})
    adjusted = {k: family.get(k, math.nan) for k in results}
    outcome = {k: verdict(d, adjusted[k], decides, alpha) for k, (d, _, decides) in results.items()}
    return Tally(wins=wins, losses=losses, ties=len(results) - wins - losses, sign_p=sign_test(wins, losses),
                 p_adjusted=adjusted, outcome=outcome)


def _first_of_positive_suffix(epochs: Sequence[int], values: Sequence[float], name: str) -> int | None:
    if len(epochs) != len(values):
        raise StatsError(f"{len(epochs)} epochs but {len(values)} {name}")
    if len(set(epochs)) != len(epochs):
        raise StatsError(f"epochs must be distinct, got {list(epochs)}")
    if not len(epochs):
        return None
    order = np.argsort(np.asarray(epochs))
    first = int(_first_of_positive_suffixes(np.asarray(values, np.float64)[order][None])[0])  # NaN: not above 0
    return int(np.asarray(epochs)[order][first]) if first < len(epochs) else None


def onset_distribution(epochs: Sequence[int], delta: np.ndarray, cov: np.ndarray, half_widths: Sequence[float],
                       df: float = math.inf, *, draws: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, Any]:
    """The emergence and crossover epochs over ``draws`` replicates of the delta curve.

    A replicate is delta + a draw from the curve's joint distribution (``cov``, Student-t with ``df`` degrees of
    freedom like the intervals: one chi-square scale per replicate); its lower bounds are its deltas minus each
    epoch's interval half-width. Per epoch: the median and the ``level`` interval of each (None: "not yet", after
    the last epoch), the share of replicates where it is not yet, and for each epoch k the probability that the
    delta is above 0 at k and at every later epoch."""
    if draws < 1:
        raise StatsError(f"draws must be at least 1, got {draws}")
    ep = [int(e) for e in epochs]
    order = np.argsort(ep)
    ep = [ep[i] for i in order]
    mean = np.asarray(delta, np.float64)[order]
    sigma = np.asarray(cov, np.float64)[np.ix_(order, order)]
    half = np.asarray(half_widths, np.float64)[order]
    E = len(ep)
    if mean.shape != (E,) or sigma.shape != (E, E) or half.shape != (E,):
        raise StatsError(f"{E} epochs need deltas ({E},), cov ({E}, {E}) and half-widths ({E},)")
    root = np.zeros((E, E))
    live = np.flatnonzero(np.diag(sigma) > 1e-12 * max(float(np.max(np.diag(sigma), initial=0.0)), 1e-300))
    if len(live):  # epochs without variance (identical runs) stay exactly at their delta in every replicate
        sub = sigma[np.ix_(live, live)]
        w, v = np.linalg.eigh((sub + sub.T) / 2)
        root[np.ix_(live, live)] = v * np.sqrt(np.clip(w, 0.0, None))  # negative eigenvalues dropped
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, E)) @ root.T
    if math.isfinite(df):
        z *= np.sqrt(df / rng.chisquare(df, draws))[:, None]
    curves = mean + z
    return {"emergence": _summary(_first_of_positive_suffixes(curves - half), ep, level),
            "crossover": _summary(_first_of_positive_suffixes(curves), ep, level),
            "sustained_from": {e: float(p) for e, p in zip(ep, _suffix_all(curves > 0).mean(axis=0))},
            "draws": draws}


def _suffix_all(positive: np.ndarray) -> np.ndarray:
    """[r, j]: positive at every epoch j.. of replicate r."""
    return np.flip(np.logical_and.accumulate(np.flip(positive, axis=1), axis=1), axis=1)


def _first_of_positive_suffixes(values: np.ndarray) -> np.ndarray:
    """Per replicate, the index of the first epoch of its positive suffix; E (after the last) when there is none."""
    return values.shape[1] - _suffix_all(values > 0).sum(axis=1)


def _summary(index: np.ndarray, epochs: list[int], level: float) -> dict[str, Any]:
    E = len(epochs)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2

    def at(q: float) -> int | None:
        i = int(np.quantile(index, q, method="inverted_cdf"))
        return epochs[i] if i < E else None

    return {"median": at(0.5), "lo": at(lo_q), "hi": at(hi_q), "p_not_yet": float(np.mean(index == E))}
