"""Paired, hierarchical bootstrap of an arm-vs-arm metric delta from sufficient statistics.

Both arms are scored on the same examples and seed s of both arms shares its text-tower init, so each
resample draws seeds (as pairs when both arms ran the same seed ids) and one set of examples shared by
every run of both arms: seeds and examples are crossed, not nested. An example enters a metric only
through its correctness pattern across all runs, so the count of examples per (class, pattern) is a
sufficient statistic, and drawing examples with replacement is a multinomial draw of those counts:
exact, and O(resamples x patterns) for acc1 / hits (at most 4**seeds patterns, whatever the number of
examples). Per-class recall draws within each class, O(resamples x min(cells, examples)).
Definitions and limitations: docs/statistics.md. Pure numpy, no I/O.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from pisweep.errors import PisweepError

#: metric name -> whether examples are resampled within class (stratified).
METRICS: dict[str, bool] = {"acc1": False, "hits": False, "mean_per_class_recall": True}
_MAX_RUNS = 62  # seeds of both arms together; a pattern is an int64 bit mask
_CHUNK_CELLS = 1 << 22  # resamples x cells (or examples) per block, to bound memory (~32 MB per array)
_BINOMIAL_COST = 10  # one binomial draw costs about as much as drawing this many examples by index


class StatsError(PisweepError, ValueError):
    """Inputs to the statistics are inconsistent (shapes, metric name, seed lists, level)."""


@dataclasses.dataclass(frozen=True)
class PairedCounts:
    """2x2 table per class for one seed of arm A and one of arm B: both right, only A, only B, both wrong."""

    classes: np.ndarray  # (C,) original class labels
    n11: np.ndarray
    n10: np.ndarray
    n01: np.ndarray
    n00: np.ndarray


@dataclasses.dataclass(frozen=True)
class JointCounts:
    """Sufficient statistic of one example set: examples per (class, joint correctness pattern).

    Bit s of a pattern (s < n_seeds_a) is seed s of arm A being right; bit n_seeds_a + t is seed t of
    arm B. Seeds are in the order of `seeds_a` / `seeds_b` (sorted when given).
    """

    metric: str
    n_seeds_a: int
    n_seeds_b: int
    classes: np.ndarray  # (C,) original labels of the classes present
    class_sizes: np.ndarray  # (C,) examples per class, all > 0
    cell_class: np.ndarray  # (P,) index into classes
    cell_pattern: np.ndarray  # (P,) int64 bit mask
    cell_count: np.ndarray  # (P,) examples with that class and pattern, all > 0
    seeds_a: tuple[int, ...] | None = None
    seeds_b: tuple[int, ...] | None = None

    @property
    def n_examples(self) -> int:
        return int(self.class_sizes.sum())

    @property
    def paired(self) -> bool:
        """Seeds are resampled as pairs only when both arms ran exactly the same seed ids."""
        return self.seeds_a is not None and self.seeds_a == self.seeds_b

    def pair(self, i: int = 0, j: int = 0) -> PairedCounts:
        """The 2x2 table per class of seed i of arm A against seed j of arm B (a marginal of the patterns)."""
        a = (self.cell_pattern >> i) & 1
        b = (self.cell_pattern >> (self.n_seeds_a + j)) & 1
        C = len(self.classes)
        cells = [np.bincount(self.cell_class, self.cell_count * m, C).astype(np.int64)
                 for m in (a & b, a & (1 - b), (1 - a) & b, (1 - a) & (1 - b))]
        return PairedCounts(self.classes, *cells)

    def seed_metrics(self) -> np.ndarray:
        """Observed metric of every run, arm A's seeds then arm B's, shape (n_seeds_a + n_seeds_b,)."""
        return (self.cell_count[None, :] @ _cell_weights(self))[0]


def paired_counts(correct_a: np.ndarray, correct_b: np.ndarray, classes: np.ndarray | None = None) -> PairedCounts:
    """2x2 table per class for one run of each arm on the same examples (same order)."""
    jc = joint_counts(np.asarray(correct_a)[None], np.asarray(correct_b)[None], classes)
    return jc.pair(0, 0)


def joint_counts(correct_a: np.ndarray, correct_b: np.ndarray, classes: np.ndarray | None = None,
                 metric: str = "acc1", *, seeds_a: Sequence[int] | None = None,
                 seeds_b: Sequence[int] | None = None) -> JointCounts:
    """Pattern histogram of per-example correctness, (seeds, N) per arm or (N,) for a single seed.

    `classes` (N,) is the true class of each example; required for mean_per_class_recall. Only the
    classes present count, as in balanced accuracy. Seed ids, when both are given and equal as sets,
    make the seeds resample as pairs; the rows are then reordered to sorted seed order.
    """
    if metric not in METRICS:
        raise StatsError(f"unknown metric {metric!r}; allowed: {sorted(METRICS)}")
    a, b = _as_runs(correct_a, "correct_a"), _as_runs(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise StatsError(f"arms were scored on different example counts: {a.shape[1]} vs {b.shape[1]}")
    n = a.shape[1]
    if n == 0:
        raise StatsError("no examples")
    if a.shape[0] + b.shape[0] > _MAX_RUNS:
        raise StatsError(f"at most {_MAX_RUNS} runs (seeds of both arms) are supported, got {a.shape[0] + b.shape[0]}")
    a, seeds_a = _sort_seeds(a, seeds_a, "seeds_a")
    b, seeds_b = _sort_seeds(b, seeds_b, "seeds_b")
    if classes is None:
        if METRICS[metric]:
            raise StatsError(f"metric {metric!r} needs the class of every example")
        classes = np.zeros(n, dtype=np.int64)
    classes = np.asarray(classes)
    if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
        raise StatsError(f"classes must be an integer array of shape ({n},), got {classes.dtype} {classes.shape}")
    labels, cls = np.unique(classes, return_inverse=True)
    runs = np.concatenate([a, b]).astype(np.int64)
    pattern = (runs << np.arange(runs.shape[0], dtype=np.int64)[:, None]).sum(axis=0)
    # Group examples by (class, pattern); cells sorted by class, then by count ascending: the binomial chain
    # then draws small cells (cheap inversion) and gives the largest cell the remainder.
    uniq, pat_idx = np.unique(pattern, return_inverse=True)
    keys, counts = np.unique(cls.astype(np.int64) * len(uniq) + pat_idx, return_counts=True)
    cell_class, cell_pattern = keys // len(uniq), uniq[keys % len(uniq)]
    order = np.lexsort((counts, cell_class))
    return JointCounts(metric=metric, n_seeds_a=a.shape[0], n_seeds_b=b.shape[0], classes=labels,
                       class_sizes=np.bincount(cls, minlength=len(labels)).astype(np.int64),
                       cell_class=cell_class[order], cell_pattern=cell_pattern[order],
                       cell_count=counts[order].astype(np.int64), seeds_a=seeds_a, seeds_b=seeds_b)


@dataclasses.dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates of each arm's seed-mean metric (the delta is a - b), and the observed values."""

    a: np.ndarray  # (resamples,)
    b: np.ndarray
    observed_a: float
    observed_b: float
    method: str  # what was resampled: "examples", "examples+seeds", "examples+paired-seeds", "seeds", ...
    n_seeds_a: int
    n_seeds_b: int

    @property
    def delta(self) -> np.ndarray:
        return self.a - self.b


@dataclasses.dataclass(frozen=True)
class Interval:
    """Point estimates and percentile intervals of arm A, arm B and their delta (A - B) for one (task, epoch).

    p_value is the two-sided bootstrap p of delta = 0, NaN when nothing could be resampled.
    """

    mean_a: float
    lo_a: float
    hi_a: float
    mean_b: float
    lo_b: float
    hi_b: float
    delta: float
    lo: float
    hi: float
    p_value: float
    level: float
    resamples: int
    method: str
    n_seeds_a: int
    n_seeds_b: int


def bootstrap_replicates(counts: JointCounts | Sequence[JointCounts], *, resamples: int = 1000, seed: int = 0,
                         rescale_seeds: bool = True) -> Replicates:
    """Resample seeds and examples jointly; several parts form a composite metric (their plain mean).

    A composite is e.g. mean_recall@1 = (image R@1 over text queries + text R@1 over image queries) / 2:
    one part per query set, each resampled on its own, the same seed draw for all.
    """
    parts = [counts] if isinstance(counts, JointCounts) else list(counts)
    if not parts:
        raise StatsError("no example sets to bootstrap")
    first = parts[0]
    for p in parts[1:]:
        if (p.n_seeds_a, p.n_seeds_b, p.seeds_a, p.seeds_b) != (first.n_seeds_a, first.n_seeds_b,
                                                                 first.seeds_a, first.seeds_b):
            raise StatsError("the parts of a composite metric must come from the same runs (seeds)")
    _check_resamples(resamples)
    rng = np.random.default_rng(seed)
    per_seed = sum(_resampled_seed_metrics(p, rng, resamples) for p in parts) / len(parts)
    observed = sum(p.seed_metrics() for p in parts) / len(parts)
    method = "examples" if first.n_seeds_a == first.n_seeds_b == 1 else (
        "examples+paired-seeds" if first.paired else "examples+seeds")
    return _combine(per_seed, observed, first.n_seeds_a, first.paired, rng, method, rescale_seeds)


def bootstrap_delta(counts: JointCounts | Sequence[JointCounts], *, resamples: int = 1000, seed: int = 0,
                    level: float = 0.95, rescale_seeds: bool = True) -> Interval:
    """Intervals of both arms and of their delta from a joint (seeds x examples) paired bootstrap."""
    return summarize(bootstrap_replicates(counts, resamples=resamples, seed=seed, rescale_seeds=rescale_seeds),
                     level)


def bootstrap_from_metrics(values_a: Sequence[float], values_b: Sequence[float], *,
                           seeds_a: Sequence[int] | None = None, seeds_b: Sequence[int] | None = None,
                           resamples: int = 1000, seed: int = 0, level: float = 0.95,
                           rescale_seeds: bool = True) -> Interval:
    """Seed-level bootstrap from per-run aggregate metrics only (weaker: example noise is not resampled).

    With one seed per arm nothing varies, so the intervals and p are NaN rather than falsely certain.
    """
    a, seeds_a = _sort_seeds(_as_values(values_a, "values_a"), seeds_a, "seeds_a")
    b, seeds_b = _sort_seeds(_as_values(values_b, "values_b"), seeds_b, "seeds_b")
    _check_resamples(resamples)
    paired = seeds_a is not None and seeds_a == seeds_b
    per_seed = np.broadcast_to(np.concatenate([a, b]), (resamples, len(a) + len(b)))
    rep = _combine(per_seed, np.concatenate([a, b]), len(a), paired, np.random.default_rng(seed),
                   "paired-seeds" if paired else "seeds", rescale_seeds)
    iv = summarize(rep, level)
    if len(a) == len(b) == 1:
        nan = math.nan
        iv = dataclasses.replace(iv, lo_a=nan, hi_a=nan, lo_b=nan, hi_b=nan, lo=nan, hi=nan, p_value=nan)
    return iv


def summarize(rep: Replicates, level: float = 0.95) -> Interval:
    """Percentile intervals at `level` and the two-sided bootstrap p of delta = 0.

    p = min(1, 2 * min(1 + #{delta* <= 0}, 1 + #{delta* >= 0}) / (R + 1)): the smallest two-sided
    level at which the percentile interval would exclude 0, with the +1 that keeps p above 0.
    """
    if not 0.0 < level < 1.0:
        raise StatsError(f"level must be in (0, 1), got {level}")
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    d = rep.delta
    lo_a, hi_a = np.quantile(rep.a, q)
    lo_b, hi_b = np.quantile(rep.b, q)
    lo, hi = np.quantile(d, q)
    tail = min(int(np.count_nonzero(d <= 0.0)), int(np.count_nonzero(d >= 0.0)))
    p = min(1.0, 2.0 * (tail + 1) / (len(d) + 1))
    return Interval(mean_a=rep.observed_a, lo_a=float(lo_a), hi_a=float(hi_a), mean_b=rep.observed_b,
                    lo_b=float(lo_b), hi_b=float(hi_b), delta=rep.observed_a - rep.observed_b, lo=float(lo),
                    hi=float(hi), p_value=p, level=level, resamples=len(d), method=rep.method,
                    n_seeds_a=rep.n_seeds_a, n_seeds_b=rep.n_seeds_b)


# ----------------------------------------------------------------------------------------------- internals

def _combine(per_seed: np.ndarray, observed: np.ndarray, n_a: int, paired: bool, rng: np.random.Generator,
             method: str, rescale: bool) -> Replicates:
    """Apply one seed draw per resample to per-run metrics on resampled examples, (R, n_a + n_b)."""
    R, n_b = per_seed.shape[0], per_seed.shape[1] - n_a
    v_a = _seed_draw(rng, R, n_a)
    v_b = v_a if paired else _seed_draw(rng, R, n_b)
    a = _arm_mean(per_seed[:, :n_a], v_a, rescale)
    b = _arm_mean(per_seed[:, n_a:], v_b, rescale)
    return Replicates(a=a, b=b, observed_a=float(observed[:n_a].mean()), observed_b=float(observed[n_a:].mean()),
                      method=method, n_seeds_a=n_a, n_seeds_b=n_b)


def _seed_draw(rng: np.random.Generator, R: int, S: int) -> np.ndarray:
    """How often each of S seeds is picked when S are drawn with replacement, (R, S)."""
    if S == 1:
        return np.ones((R, 1))
    return rng.multinomial(S, np.full(S, 1.0 / S), size=R).astype(np.float64)


def _arm_mean(m: np.ndarray, v: np.ndarray, rescale: bool) -> np.ndarray:
    """Seed-mean per resample. Rescaling widens the seed deviations by sqrt(S/(S-1)), which makes the
    bootstrap variance of a mean of S seeds unbiased (plain resampling shrinks it by (S-1)/S)."""
    S = m.shape[1]
    drawn = (m * v).sum(axis=1) / S
    if not rescale or S == 1:
        return drawn
    center = m.mean(axis=1)
    return center + math.sqrt(S / (S - 1)) * (drawn - center)


def _cell_weights(jc: JointCounts) -> np.ndarray:
    """(P, runs): what one example of each cell adds to each run's metric."""
    runs = jc.n_seeds_a + jc.n_seeds_b
    bits = ((jc.cell_pattern[:, None] >> np.arange(runs, dtype=np.int64)) & 1).astype(np.float64)
    if METRICS[jc.metric]:
        per_example = 1.0 / (len(jc.classes) * jc.class_sizes[jc.cell_class])
    else:
        per_example = np.full(len(jc.cell_count), 1.0 / jc.n_examples)
    return bits * per_example[:, None]


def _resampled_seed_metrics(jc: JointCounts, rng: np.random.Generator, R: int) -> np.ndarray:
    """Every run's metric on R resamples of the examples (one draw shared by all runs), (R, runs)."""
    if not METRICS[jc.metric]:  # examples are drawn from the whole set: pool the cells of all classes
        patterns, inv = np.unique(jc.cell_pattern, return_inverse=True)
        jc = dataclasses.replace(jc, classes=jc.classes[:1], class_sizes=np.array([jc.n_examples]),
                                 cell_class=np.zeros(len(patterns), np.int64), cell_pattern=patterns,
                                 cell_count=np.bincount(inv, jc.cell_count).astype(np.int64))
    draw, weights = _sampler(jc, rng), _cell_weights(jc)
    step = max(1, _CHUNK_CELLS // max(weights.shape[0], jc.n_examples))
    return np.concatenate([draw(min(step, R - r0)) @ weights for r0 in range(0, R, step)])


def _sampler(jc: JointCounts, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """A function rows -> (rows, P) draws of every class's cells with replacement, each class keeping its size.

    Two exact samplers of the same multinomials; the cheaper is used. The binomial chain gives cell j of
    a class Binomial(left, count_j / count of cells j..K-1) and its last cell what is left, costing a
    binomial per cell that is not the last of its class. Index sampling draws each class's examples
    uniformly (one float per example) and counts them, cheaper when most examples have a cell of their own.
    """
    cls, cnt, sizes = jc.cell_class, jc.cell_count, jc.class_sizes
    C, P = len(jc.classes), len(cnt)
    if (P - C) * _BINOMIAL_COST <= jc.n_examples:
        if C == 1:
            return lambda rows: rng.multinomial(jc.n_examples, cnt / jc.n_examples, size=rows)
        return _binomial_chain(cls, cnt, sizes, rng)
    slot_cell = np.repeat(np.arange(P), cnt)  # cells are sorted by class, so slots are grouped by class
    slot_start = np.repeat(np.cumsum(sizes) - sizes, sizes)
    slot_size = np.repeat(sizes, sizes).astype(np.float64)
    slot_last = slot_start + np.repeat(sizes, sizes) - 1

    def draw(rows: int) -> np.ndarray:
        u = rng.random((rows, len(slot_cell)))
        u *= slot_size
        u += slot_start
        idx = u.astype(np.int64)  # floor, as u >= 0
        np.minimum(idx, slot_last, out=idx)  # guards u * size rounding up to size
        picked = slot_cell[idx]
        picked += (np.arange(rows, dtype=np.int64) * P)[:, None]
        return np.bincount(picked.ravel(), minlength=rows * P).reshape(rows, P)
    return draw


def _binomial_chain(cls: np.ndarray, cnt: np.ndarray, sizes: np.ndarray,
                    rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    C, P = len(sizes), len(cnt)
    start = np.searchsorted(cls, np.arange(C))
    pos = np.arange(P) - start[cls]
    k = np.bincount(cls, minlength=C)
    before = np.cumsum(cnt) - cnt
    before -= before[start][cls]
    q = cnt / (sizes[cls] - before)
    last = pos == k[cls] - 1
    steps = [np.flatnonzero((pos == j) & ~last) for j in range(int(k.max()) - 1)]
    last_cells = np.flatnonzero(last)

    def draw(rows: int) -> np.ndarray:
        out = np.empty((rows, P), dtype=np.int64)
        left = np.repeat(sizes[None, :], rows, axis=0)
        for cells in steps:
            c = cls[cells]
            x = rng.binomial(left[:, c], q[cells])
            out[:, cells] = x
            left[:, c] -= x
        out[:, last_cells] = left[:, cls[last_cells]]
        return out
    return draw


def _check_resamples(resamples: int) -> None:
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise StatsError(f"resamples must be a positive integer, got {resamples!r}")


def _as_runs(x: np.ndarray, name: str) -> np.ndarray:
    """(runs, N) bool from a (runs, N) or (N,) array of booleans or 0/1 values."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise StatsError(f"{name} must have shape (seeds, examples) or (examples,), got {arr.shape}")
    if arr.dtype != bool:
        if not np.all((arr == 0) | (arr == 1)):
            raise StatsError(f"{name} must hold per-example correctness (booleans or 0/1)")
        arr = arr.astype(bool)
    return arr


def _as_values(x: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise StatsError(f"{name} must be a non-empty list of finite per-seed metrics, got {x!r}")
    return arr


def _sort_seeds(rows: np.ndarray, seeds: Sequence[int] | None, name: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Rows in sorted seed order, so seed s of both arms lines up; unchanged when seeds are unknown."""
    if seeds is None:
        return rows, None
    ids = [int(s) for s in seeds]
    if len(ids) != len(rows) or len(set(ids)) != len(ids):
        raise StatsError(f"{name} must name each of the {len(rows)} runs once, got {list(seeds)}")
    order = np.argsort(ids, kind="stable")
    return rows[order], tuple(sorted(ids))
