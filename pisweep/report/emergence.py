"""When a gain emerges across epochs, and how wins add up across tasks (Holm, sign test). Pure, no I/O.

Definitions (also in docs/statistics.md):
- emergence epoch: the first evaluated epoch from which the delta's interval lower bound is above zero
  at that epoch and at every later evaluated epoch; None ("not yet") when the last one is not.
- crossover epoch: the same with the point (mean) delta instead of the lower bound.
- win/loss/tie of one task: a win when the delta is significantly above zero, a loss when significantly
  below, else a tie; "significantly" is the interval excluding zero, or a Holm-adjusted p below alpha.
- win count and sign test: tasks whose point delta is above / below zero, exact two-sided binomial test
  with ties (delta exactly zero) dropped.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping, Sequence

from pisweep.report.bootstrap import Interval, StatsError

Outcome = Literal["win", "loss", "tie"]


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


def resamples_for_holm(tests: int, alpha: float = 0.05) -> int:
    """Fewest bootstrap resamples R at which the smallest p, 2 / (R + 1), survives Holm over `tests` tasks.

    The p of a bootstrap with R resamples is never below 2 / (R + 1); Holm multiplies the smallest p by
    the number of tests, so 31 tasks at alpha 0.05 need R >= 1240 before any task can be significant.
    """
    if tests < 0 or not 0.0 < alpha < 1.0:
        raise StatsError(f"need tests >= 0 and alpha in (0, 1), got {tests} and {alpha}")
    return max(1, math.floor(2 * tests / alpha))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses at 1/2 (ties already dropped); 1.0 when both are 0."""
    if wins < 0 or losses < 0:
        raise StatsError(f"wins and losses must be >= 0, got {wins} and {losses}")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2.0 ** n)


def win_loss_tie(interval: Interval, *, p_adjusted: float | None = None, alpha: float = 0.05) -> Outcome:
    """Significance of one task's delta: by its interval (lo > 0 / hi < 0), or by an adjusted p < alpha."""
    if p_adjusted is None:
        if interval.lo > 0.0:
            return "win"
        if interval.hi < 0.0:
            return "loss"
        return "tie"
    if p_adjusted < alpha and interval.delta != 0.0:
        return "win" if interval.delta > 0.0 else "loss"
    return "tie"


@dataclasses.dataclass(frozen=True)
class Tally:
    """Across tasks at one epoch: raw win counts with a sign test, and Holm-adjusted per-task outcomes."""

    wins: int  # point delta > 0
    losses: int  # point delta < 0
    ties: int  # point delta == 0
    sign_p: float
    p_adjusted: dict[str, float]
    outcome: dict[str, Outcome]  # per task, from the Holm-adjusted p
    holm_attainable: bool  # False: too few resamples for any task to pass Holm (see resamples_for_holm)

    @property
    def significant(self) -> dict[Outcome, int]:
        counts: dict[Outcome, int] = {"win": 0, "loss": 0, "tie": 0}
        for o in self.outcome.values():
            counts[o] += 1
        return counts


def tally(intervals: Mapping[str, Interval], *, alpha: float = 0.05) -> Tally:
    """Win counts (e.g. 23/29) with their sign test, and each task's outcome after Holm across these tasks."""
    wins = sum(1 for iv in intervals.values() if iv.delta > 0.0)
    losses = sum(1 for iv in intervals.values() if iv.delta < 0.0)
    adjusted = holm({k: iv.p_value for k, iv in intervals.items()})
    outcome = {k: win_loss_tie(iv, p_adjusted=adjusted[k], alpha=alpha) for k, iv in intervals.items()}
    tested = [iv.resamples for k, iv in intervals.items() if not math.isnan(adjusted[k])]
    attainable = not tested or min(tested) >= resamples_for_holm(len(tested), alpha)
    return Tally(wins=wins, losses=losses, ties=len(intervals) - wins - losses, sign_p=sign_test(wins, losses),
                 p_adjusted=adjusted, outcome=outcome, holm_attainable=attainable)


def _first_of_positive_suffix(epochs: Sequence[int], values: Sequence[float], name: str) -> int | None:
    if len(epochs) != len(values):
        raise StatsError(f"{len(epochs)} epochs but {len(values)} {name}")
    if len(set(epochs)) != len(epochs):
        raise StatsError(f"epochs must be distinct, got {list(epochs)}")
    found: int | None = None
    for epoch, value in sorted(zip(epochs, values), key=lambda t: t[0], reverse=True):
        if not float(value) > 0.0:  # NaN is not above zero
            break
        found = int(epoch)
    return found
