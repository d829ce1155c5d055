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
    a3, b3, cov5, paired = _aligned(a[:, :, None], b[:, :, None], None if cov is None else cov[:, :, None, :, None],
                                    seeds_a, seeds_b)
    a, b, cov = a3[:, :, 0], b3[:, :, 0], None if cov5 is None else cov5[:, :, 0, :, 0]
    d = a.mean(axis=1) - b.mean(axis=1)
    v_seed, df_seed, v_ex = _moments(a3, b3, cov5, paired)
    v_seed, v_ex = v_seed[:, 0, 0], np.maximum(v_ex[:, 0, 0], 0.0)
    flip = _sign_flip(a - b) if paired else np.full(len(d), np.nan)
    method = _method(cov is not None, df_seed)
    se, df = _combine(v_seed, df_seed, v_ex)
    q = stdtrit(df, (1.0 + level) / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2.0 * stdtr(df, -np.abs(d) / se), np.where(d == 0, 1.0, 0.0))
    arm_a, arm_b = _arm(a, cov, slice(0, n_a), level), _arm(b, cov, slice(n_a, n_a + n_b), level)
    out = []
    for k in range(len(d)):
        none = method == "none"
        lo, hi = (math.nan, math.nan) if none else (max(-1.0, float(d[k] - q[k] * se[k])),
                                                      min(1.0, float(d[k] + q[k] * se[k])))  # a difference of shares
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

def _moments(a: np.ndarray, b: np.ndarray, cov: np.ndarray | None,
             paired: bool) -> tuple[np.ndarray, int, np.ndarray]:
    """The two parts of the variance of mean(a) - mean(b), over E epochs at once (the intervals use E = 1).

    ``a`` (K, S_a, E), ``b`` (K, S_b, E); ``cov`` (K, R, E, R, E) the runs' example-level covariance across
    epochs (arm A's runs first), or None. Returns the seed part (K, E, E), its degrees of freedom, and the
    test-set part (K, E, E) that the seed part does not already hold."""
    if paired:
        return _paired(a - b, cov)
    return _unpaired(a, b, cov)


def _paired(d: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Seed (co)variance of the mean of S paired deltas, its df, and the test-set part all seeds share."""
    K, S, E = d.shape
    dc = d - d.mean(axis=1, keepdims=True)
    v_seed = np.einsum("kse,ksf->kef", dc, dc) / (S - 1) / S if S > 1 else np.zeros((K, E, E))
    if cov is None:
        return v_seed, S - 1, np.zeros((K, E, E))
    cd = cov[:, :S, :, :S] - cov[:, :S, :, S:] - cov[:, S:, :, :S] + cov[:, S:, :, S:]  # per-seed deltas' covariance
    if S == 1:
        return v_seed, 0, cd[:, 0, :, 0, :]
    off = _off_diagonal_mean(cd)
    own = np.einsum("ksesf->kef", cd) / S - off  # one seed's test-set noise that the others do not share
    return _at_least(v_seed, own / S), S - 1, off


def _unpaired(a: np.ndarray, b: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """Pooled seed (co)variance of mean(a) - mean(b) with S_a + S_b - 2 df, and the shared test-set part."""
    K, n_a, E = a.shape
    n_b = b.shape[1]
    df = n_a + n_b - 2
    if df > 0:
        ac, bc = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        ss = np.einsum("kse,ksf->kef", ac, ac) + np.einsum("kse,ksf->kef", bc, bc)
        v_seed = ss / df * (1.0 / n_a + 1.0 / n_b)
    else:
        v_seed = np.zeros((K, E, E))
    if cov is None:
        return v_seed, df, np.zeros((K, E, E))
    c = cov.copy()
    if df > 0:  # the seed part already holds each run's own test-set noise: keep only what runs of an arm share
        floor = np.zeros_like(v_seed)
        for lo, n in ((0, n_a), (n_a, n_b)):
            if n > 1:
                block = c[:, lo:lo + n, :, lo:lo + n]
                off = _off_diagonal_mean(block)
                floor += (np.einsum("ksesf->kef", block) / n - off) / n
                for i in range(lo, lo + n):
                    c[:, i, :, i, :] = off
        v_seed = _at_least(v_seed, floor)
    w = np.concatenate([np.full(n_a, 1.0 / n_a), np.full(n_b, -1.0 / n_b)])
    return v_seed, df, np.einsum("i,kiejf,j->kef", w, c, w)


def _at_least(v_seed: np.ndarray, own: np.ndarray) -> np.ndarray:
    """The seed part, where it is zero (tied per-seed deltas), replaced on its diagonal by the runs' own test-set
    noise (K, E, E), which it holds in expectation. Student's t allows for a seed spread that is small by chance,
    but not for the atom at exactly zero that a small, discrete test set gives (18 NIGHTS triplets: one draw in
    nine ties at two seeds), where the interval had zero width and p = 0. Adding a non-negative diagonal keeps the
    matrix a covariance; a spread that is not tied is left as it is (the calibration is unchanged)."""
    v_diag, own_diag = np.diagonal(v_seed, axis1=1, axis2=2), np.diagonal(own, axis1=1, axis2=2)
    gap = np.where(v_diag <= 1e-9 * own_diag, np.clip(own_diag - v_diag, 0.0, None), 0.0)
    return v_seed + gap[:, :, None] * np.eye(v_seed.shape[1])[None]


def _off_diagonal_mean(block: np.ndarray) -> np.ndarray:
    """Mean over pairs s != t of block[:, s, :, t, :], for block (K, S, E, S, E): (K, E, E)."""
    S = block.shape[1]
    total = block.sum(axis=(1, 3))
    same = np.einsum("ksesf->kef", block)
    return (total - same) / (S * (S - 1))


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
        v_ex = block[:, 0, 0] if S == 1 else _off_diagonal_mean(block[:, :, None, :, None])[:, 0, 0]
        if S > 1:  # tied seeds
            own = np.einsum("kss->k", block) / S - v_ex
            v_seed = _at_least(v_seed[:, None, None], (own / S)[:, None, None])[:, 0, 0]
    se, df = _combine(v_seed, S - 1, np.maximum(v_ex, 0.0))
    if cov is None and S == 1:
        nan = [math.nan] * K
        return mean.tolist(), nan, nan
    q = stdtrit(df, (1.0 + level) / 2.0)  # every metric is a share: its bounds stay in [0, 1]
    return mean.tolist(), np.clip(mean - q * se, 0.0, 1.0).tolist(), np.clip(mean + q * se, 0.0, 1.0).tolist()


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


@dataclasses.dataclass(frozen=True)
class Curve:
    """The delta over several epochs as one random vector, for the emergence and crossover epochs' distribution.

    ``cov`` is the same two-part variance as each epoch's interval, with the covariances across epochs: seed s's
    deltas at two epochs move together (one training run), and so do the examples' (one test set)."""

    epochs: tuple[int, ...]
    delta: np.ndarray  # (E,)
    cov: np.ndarray  # (E, E)
    df: float  # of the seed part (inf: none)
    method: Method


def curve(values_a: np.ndarray, values_b: np.ndarray, cov: np.ndarray | None, *, epochs: Sequence[int],
          seeds_a: Sequence[int] | None = None, seeds_b: Sequence[int] | None = None) -> Curve:
    """The Curve of A - B: ``values_a`` (S_a, E) and ``values_b`` (S_b, E) per run and epoch, ``cov`` the runs'
    example-level covariance across epochs (R, E, R, E), arm A's runs first, or None."""
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    E = len(epochs)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != E or b.shape[1] != E:
        raise StatsError(f"values must be (seeds, {E} epochs) per arm, got {a.shape} and {b.shape}")
    n_a, n_b = a.shape[0], b.shape[0]
    if cov is not None:
        cov = np.asarray(cov, np.float64)
        if cov.shape != (n_a + n_b, E, n_a + n_b, E):
            raise StatsError(f"cov must be ({n_a + n_b}, {E}, {n_a + n_b}, {E}), got {cov.shape}")
    a3, b3, cov5, paired = _aligned(a[None], b[None], None if cov is None else cov[None], seeds_a, seeds_b)
    v_seed, df_seed, v_ex = _moments(a3, b3, cov5, paired)
    return Curve(tuple(int(e) for e in epochs), a3[0].mean(axis=0) - b3[0].mean(axis=0), v_seed[0] + v_ex[0],
                 float(df_seed) if df_seed > 0 else math.inf, _method(cov is not None, df_seed))


def _aligned(a: np.ndarray, b: np.ndarray, cov: np.ndarray | None, seeds_a: Sequence[int] | None,
             seeds_b: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Runs (K, S, E) of each arm, and their covariance (K, R, E, R, E), in sorted seed order, so that seed s of
    both arms lines up; and whether the arms are paired (ran the same seed ids)."""
    n_a = a.shape[1]
    order_a, ids_a = _seed_order(seeds_a, n_a, "seeds_a")
    order_b, ids_b = _seed_order(seeds_b, b.shape[1], "seeds_b")
    if cov is not None:
        order = np.concatenate([order_a, n_a + order_b])
        cov = cov[:, order][:, :, :, order]
    return a[:, order_a], b[:, order_b], cov, ids_a is not None and ids_a == ids_b


def _method(examples: bool, df_seed: int) -> Method:
    """What an interval includes: the test set when per-example files were used, seeds when they have df."""
    if examples:
        return "examples+seeds" if df_seed else "examples"
    return "seeds" if df_seed else "none"
