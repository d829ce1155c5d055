"""The interval of an arm-vs-arm delta, over training randomness (seeds) and over the test set. Pure numpy + scipy.

Estimand: Delta = the expected difference of the two arms' metric over seeds, on this test set's population.
With seeds s = 1..S of both arms (paired when both ran the same seed ids) and per-seed deltas d_s, the estimate
is their mean, and its variance has two parts (docs/statistics.md derives them):

- seeds: var(d_s) / S, from the S per-seed deltas (S - 1 degrees of freedom). It holds the seed-to-seed spread
  and the part of the test-set noise that differs between seeds;
- test set: the part of the test-set noise that all seeds share, the mean over pairs s != t of the example-level
  covariance of d_s and d_t (influence.py); with one seed, the whole example-level variance of d.

The interval is delta +- t * se, t being Student's with S - 1 degrees of freedom (exact when seed noise dominates,
conservative when test-set noise does; see _combine). The p-value is the one this interval inverts (p < 1 - level
exactly when the interval excludes 0); Holm's adjustment across tasks uses it.

Unpaired arms pool the two arms' seed variances (S_a + S_b - 2 degrees of freedom). Without per-example files
only the seed part exists (``seeds``: the test-set noise is not in the interval). With one seed per arm only the
test-set part exists (``examples``): training randomness is not in the interval, and no verdict is drawn from it
unless the caller assumes there is none.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Literal, Mapping, Sequence

import numpy as np

from pisweep.errors import PisweepError
from pisweep.report.influence import example_covariance

Method = Literal["examples+seeds", "examples", "seeds", "none"]
INCLUDES = {"examples+seeds": "seeds and test set", "examples": "test set only (1 seed per arm)",
            "seeds": "seeds only (test-set noise not included)", "none": "nothing (1 seed per arm, no examples)"}
_SIGN_FLIP_MAX_SEEDS = 16


class StatsError(PisweepError, ValueError):
    """Inputs to the statistics are inconsistent (shapes, seed lists, level)."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """Point estimates and intervals of arm A, arm B and their delta (A - B) for one (task, metric, epoch)."""

    mean_a: float
    lo_a: float
    hi_a: float
    mean_b: float
    lo_b: float
    hi_b: float
    delta: float
    lo: float
    hi: float
    p_value: float  # two-sided, of delta = 0; NaN when there is no interval
    level: float
    method: Method
    n_seeds_a: int
    n_seeds_b: int
    se: float
    df: float  # inf: normal
    se_seeds: float  # the seed part of se (0 with one seed per arm)
    se_examples: float  # the shared test-set part (0 without per-example files)
    sign_flip_p: float  # exact sign-flip p over the paired per-seed deltas; NaN when not paired or S < 2
    assume_no_seed_noise: bool = False

    @property
    def includes(self) -> str:
        return INCLUDES[self.method] + (", seed noise assumed none" if self.method == "examples" and
                                        self.assume_no_seed_noise else "")

    @property
    def decides(self) -> bool:
        """Whether a verdict (win, loss, emergence) may be drawn from this interval."""
        if math.isnan(self.lo):
            return False
        return self.method != "examples" or self.assume_no_seed_noise


def intervals(values_a: np.ndarray, values_b: np.ndarray, cov: np.ndarray | None = None, *,
              seeds_a: Sequence[int] | None = None, seeds_b: Sequence[int] | None = None, level: float = 0.95,
              assume_no_seed_noise: bool = False) -> list[Interval]:
    """One Interval per key: ``values_a`` (keys, S_a) and ``values_b`` (keys, S_b) are the runs' metric values,
    ``cov`` (keys, S_a + S_b, S_a + S_b) their example-level covariance (arm A's runs first; None: unknown)."""
    from scipy.special import stdtr, stdtrit

    a, b = _matrix(values_a, "values_a"), _matrix(values_b, "values_b")
    if a.shape[0] != b.shape[0]:
        raise StatsError(f"values_a has {a.shape[0]} keys but values_b {b.shape[0]}")
    if not 0.0 < level < 1.0:
        raise StatsError(f"level must be in (0, 1), got {level}")
    n_a, n_b = a.shape[1], b.shape[1]
    if cov is not None:
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != (a.shape[0], n_a + n_b, n_a + n_b):
            raise StatsError(f"cov must be ({a.shape[0]}, {n_a + n_b}, {n_a + n_b}), got {cov.shape}")
    order_a, ids_a = _seed_order(seeds_a, n_a, "seeds_a")
    order_b, ids_b = _seed_order(seeds_b, n_b, "seeds_b")
    a, b = a[:, order_a], b[:, order_b]
    if cov is not None:
        order = np.concatenate([order_a, n_a + order_b])
        cov = cov[:, order][:, :, order]
    paired = ids_a is not None and ids_a == ids_b
    d = a.mean(axis=1) - b.mean(axis=1)
    if paired:
        v_seed, df_seed, v_ex = _paired(a - b, cov)
        flip = _sign_flip(a - b)
    else:
        v_seed, df_seed, v_ex = _unpaired(a, b, cov)
        flip = np.full(len(d), np.nan)
    method: Method = ("examples+seeds" if df_seed else "examples") if cov is not None else (
        "seeds" if df_seed else "none")
    se, df = _combine(v_seed, df_seed, v_ex)
    q = stdtrit(df, (1.0 + level) / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2.0 * stdtr(df, -np.abs(d) / se), np.where(d == 0, 1.0, 0.0))
    arm_a, arm_b = _arm(a, cov, slice(0, n_a), level), _arm(b, cov, slice(n_a, n_a + n_b), level)
    out = []
    for k in range(len(d)):
        none = method == "none"
        lo, hi = (math.nan, math.nan) if none else (float(d[k] - q[k] * se[k]), float(d[k] + q[k] * se[k]))
        out.append(Interval(
            mean_a=arm_a[0][k], lo_a=arm_a[1][k], hi_a=arm_a[2][k], mean_b=arm_b[0][k], lo_b=arm_b[1][k],
            hi_b=arm_b[2][k], delta=float(d[k]), lo=lo, hi=hi, p_value=math.nan if none else float(p[k]),
            level=level, method=method, n_seeds_a=n_a, n_seeds_b=n_b, se=math.nan if none else float(se[k]),
            df=float(df[k]), se_seeds=float(math.sqrt(v_seed[k])), se_examples=float(math.sqrt(v_ex[k])),
            sign_flip_p=float(flip[k]), assume_no_seed_noise=assume_no_seed_noise))
    return out


def interval(values_a: Sequence[float], values_b: Sequence[float], cov: np.ndarray | None = None,
             **kw) -> Interval:
    """:func:`intervals` for one key: per-run values of each arm, their (S_a + S_b)^2 covariance or None."""
    return intervals(np.asarray(values_a, np.float64)[None], np.asarray(values_b, np.float64)[None],
                     None if cov is None else np.asarray(cov, np.float64)[None], **kw)[0]


# ----------------------------------------------------------------------------------------------- parts

def _paired(d: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Seed variance of the mean of S paired deltas, its df, and the test-set variance all seeds share."""
    K, S = d.shape
    v_seed = d.var(axis=1, ddof=1) / S if S > 1 else np.zeros(K)
    if cov is None:
        return v_seed, S - 1, np.zeros(K)
    aa, ab, ba, bb = cov[:, :S, :S], cov[:, :S, S:], cov[:, S:, :S], cov[:, S:, S:]
    cd = aa - ab - ba + bb  # covariance of the per-seed deltas over redraws of the test set
    if S == 1:
        return v_seed, 0, np.maximum(cd[:, 0, 0], 0.0)
    off = (cd.sum(axis=(1, 2)) - np.trace(cd, axis1=1, axis2=2)) / (S * (S - 1))
    return v_seed, S - 1, np.maximum(off, 0.0)


def _unpaired(a: np.ndarray, b: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Pooled seed variance of mean(a) - mean(b) with S_a + S_b - 2 df, and the shared test-set variance."""
    K, n_a = a.shape
    n_b = b.shape[1]
    df = n_a + n_b - 2
    if df > 0:
        ss = ((a - a.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) + ((b - b.mean(axis=1, keepdims=True)) ** 2).sum(1)
        v_seed = ss / df * (1.0 / n_a + 1.0 / n_b)
    else:
        v_seed = np.zeros(K)
    if cov is None:
        return v_seed, df, np.zeros(K)
    c = cov.copy()
    if df > 0:  # the seed part already holds each run's own test-set noise: keep only what runs of an arm share
        for sl, n in ((slice(0, n_a), n_a), (slice(n_a, n_a + n_b), n_b)):
            if n > 1:
                block = c[:, sl, sl]
                off = (block.sum(axis=(1, 2)) - np.trace(block, axis1=1, axis2=2)) / (n * (n - 1))
                idx = np.arange(sl.start, sl.stop)
                c[:, idx, idx] = off[:, None]
    w = np.concatenate([np.full(n_a, 1.0 / n_a), np.full(n_b, -1.0 / n_b)])
    return v_seed, df, np.maximum(np.einsum("i,kij,j->k", w, c, w), 0.0)


def _combine(v_seed: np.ndarray, df_seed: int, v_ex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """se, and the degrees of freedom of its t: those of the seed part whenever there is one, else the normal.

    Student's t with S - 1 degrees of freedom on the whole se is exact when seed noise dominates and conservative
    when the (well-known) test-set part does. Satterthwaite's degrees of freedom, which would grow with the
    test-set share, were measured to undercover (0.85-0.93 at 2-3 seeds): a seed variance that is small by chance
    then also buys a small t quantile."""
    K = len(v_seed)
    return np.sqrt(v_seed + v_ex), np.full(K, float(df_seed) if df_seed > 0 else np.inf)


def _arm(x: np.ndarray, cov: np.ndarray | None, sl: slice, level: float) -> tuple[list, list, list]:
    """Each arm's seed mean with its own interval (seed part with S - 1 df, plus the test-set part)."""
    from scipy.special import stdtrit

    K, S = x.shape
    mean = x.mean(axis=1)
    v_seed = x.var(axis=1, ddof=1) / S if S > 1 else np.zeros(K)
    if cov is None:
        v_ex = np.zeros(K)
    else:
        block = cov[:, sl, sl]
        v_ex = block[:, 0, 0] if S == 1 else (block.sum(axis=(1, 2)) - np.trace(block, axis1=1, axis2=2)) / (S * (S - 1))
    se, df = _combine(v_seed, S - 1, np.maximum(v_ex, 0.0))
    if cov is None and S == 1:
        nan = [math.nan] * K
        return mean.tolist(), nan, nan
    q = stdtrit(df, (1.0 + level) / 2.0)
    return mean.tolist(), (mean - q * se).tolist(), (mean + q * se).tolist()


def _sign_flip(d: np.ndarray) -> np.ndarray:
    """Exact two-sided sign-flip p of mean(d) = 0 over the 2^S sign patterns (shown beside, never deciding)."""
    K, S = d.shape
    if S < 2 or S > _SIGN_FLIP_MAX_SEEDS:
        return np.full(K, np.nan)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=S)))
    means = np.abs(signs @ d.T) / S  # (2^S, K)
    observed = np.abs(d.mean(axis=1))
    return (means >= observed[None, :] - 1e-12 * np.maximum(1.0, observed[None, :])).mean(axis=0)


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise StatsError(f"{name} must be a (keys, seeds) matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise StatsError(f"{name} must hold finite per-run metrics")
    return arr


def _seed_order(seeds: Sequence[int] | None, n: int, name: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """The order that sorts the runs by seed id (so seed s of both arms lines up), and the sorted ids."""
    if seeds is None:
        return np.arange(n), None
    ids = [int(s) for s in seeds]
    if len(ids) != n or len(set(ids)) != n:
        raise StatsError(f"{name} must name each of the {n} runs once, got {list(seeds)}")
    order = np.argsort(ids, kind="stable")
    return order, tuple(sorted(ids))


def interval_from_examples(runs_a: Sequence[Mapping[str, np.ndarray]], runs_b: Sequence[Mapping[str, np.ndarray]],
                           metric: str, *, seeds_a: Sequence[int] | None = None,
                           seeds_b: Sequence[int] | None = None, values_a: Sequence[float] | None = None,
                           values_b: Sequence[float] | None = None, level: float = 0.95,
                           assume_no_seed_noise: bool = False) -> Interval:
    """The interval of A - B from the runs' per-example arrays (the report's path, and the calibration's).

    ``values_*``: the runs' recorded metric values (the ledger's), which the tables show; by default the values
    the arrays give. Raises influence.OrderMismatch / MetricUndefined when the arrays cannot be compared."""
    observed, cov = example_covariance([*runs_a, *runs_b], metric)
    n_a = len(runs_a)
    va = observed[:n_a] if values_a is None else values_a
    vb = observed[n_a:] if values_b is None else values_b
    return interval(va, vb, cov, seeds_a=seeds_a, seeds_b=seeds_b, level=level,
                    assume_no_seed_noise=assume_no_seed_noise)
