"""Intervals for (task, metric, epoch, runs of both arms): from the per-example files when every run has one (seeds
and test set), else from the ledger's per-run values (seeds only; batched at :meth:`Estimator.flush`).

Each interval is computed once per report and handed to every table and plot that asks for it, so a number never
appears twice with two intervals. The reason for every fallback is counted, so the report can say what each
interval includes and why.

A request made ``for_curve`` also keeps its runs' influence values, epoch by epoch, until the report moves on to
the next benchmark; they then become the covariances across epochs that :meth:`Estimator.curve` needs (the
emergence and crossover epochs' distribution), and only those small matrices are kept.
"""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pisweep.report.data import Run, per_example_path
from pisweep.report.inference import Curve, Interval, StatsError, curve, interval, intervals
from pisweep.report.influence import MetricUndefined, OrderMismatch, linearize

Done = Callable[[Interval], None]
Key = tuple[str, str, int, tuple[str, ...], tuple[str, ...]]
Series = tuple[str, str, tuple[str, ...], tuple[str, ...]]  # (task, metric, runs of A, runs of B)


@dataclass
class _Pending:
    values_a: list[float]
    values_b: list[float]
    key: Key
    done: list[Done]


@dataclass
class Estimator:
    """Collects interval requests; per-example ones are computed at once, seed-level ones on :meth:`flush`."""

    level: float = 0.95
    per_example: bool = True  # False: seed-level only (faster; the report says so)
    assume_no_seed_noise: bool = False  # one seed per arm: draw verdicts from test-set noise alone
    fallbacks: Counter = field(default_factory=Counter)  # reason -> requests
    fallback_example: dict[str, str] = field(default_factory=dict)  # reason -> one path or detail
    methods: Counter = field(default_factory=Counter)  # Interval.method -> intervals
    _done: dict[Key, Interval] = field(default_factory=dict)
    _queue: dict[tuple, dict[Key, _Pending]] = field(default_factory=dict)
    _cache: dict[tuple[str, int, str], dict[str, np.ndarray] | None] = field(default_factory=dict)
    _scope: Any = None
    _psi: dict[Series, dict[int, np.ndarray]] = field(default_factory=dict)  # this benchmark's, per epoch
    _gram: dict[Series, tuple[tuple[int, ...], np.ndarray]] = field(default_factory=dict)  # (epochs, R x E x R x E)
    _cov: dict[Key, np.ndarray] = field(default_factory=dict)  # each per-example interval's runs x runs covariance

    def request(self, task: str, metric: str, epoch: int, runs_a: Sequence[Run], runs_b: Sequence[Run],
                values_a: Sequence[float], values_b: Sequence[float], done: Done, for_curve: bool = False) -> None:
        """Ask for the interval of A - B; ``done`` receives it (now, or at the next flush)."""
        key: Key = (task, metric, int(epoch), tuple(r.uid for r in runs_a), tuple(r.uid for r in runs_b))
        if key in self._done:
            done(self._done[key])
            return
        seeds = (tuple(r.seed for r in runs_a), tuple(r.seed for r in runs_b))
        queued = self._queue.get(seeds, {}).get(key)
        if queued is not None:
            queued.done.append(done)
            return
        if (epoch, task) != self._scope:  # per-example arrays are kept for one (epoch, task) at a time
            self._cache.clear()
            if self._scope is not None and self._scope[1] != task:
                self._close_curves()
            self._scope = (epoch, task)
        iv = (self._per_example(task, metric, epoch, runs_a, runs_b, values_a, values_b, for_curve)
              if self.per_example else None)
        if iv is not None:
            self._finish(key, iv, [done])
            return
        if not self.per_example:
            self._fallback("seed-level only (asked for)", "")
        self._queue.setdefault(seeds, {})[key] = _Pending(list(values_a), list(values_b), key, [done])

    def flush(self) -> None:
        """Compute every queued seed-level interval, one vectorized call per (seed sets)."""
        self._close_curves()
        queue, self._queue = self._queue, {}
        for (seeds_a, seeds_b), pending in queue.items():
            items = list(pending.values())
            try:
                ivs = intervals(np.array([p.values_a for p in items]), np.array([p.values_b for p in items]),
                                seeds_a=list(seeds_a) if _distinct(seeds_a) else None,
                                seeds_b=list(seeds_b) if _distinct(seeds_b) else None, level=self.level,
                                assume_no_seed_noise=self.assume_no_seed_noise)
            except StatsError as e:
                self._fallback("no interval (seed-level values refused)", str(e))
                continue
            for p, iv in zip(items, ivs):
                self._finish(p.key, iv, p.done)

    def _finish(self, key: Key, iv: Interval, done: list[Done]) -> None:
        self._done[key] = iv
        self.methods[iv.method] += 1
        for d in done:
            d(iv)

    def curve(self, task: str, metric: str, epochs: Sequence[int], runs_a: Sequence[Run], runs_b: Sequence[Run],
              values_a: np.ndarray, values_b: np.ndarray) -> Curve:
        """The delta curve of these runs over ``epochs`` (values (S, E) per arm), with the covariances across epochs
        kept by for_curve requests; seed-level only when some epoch had no usable per-example files."""
        key: Series = (task, metric, tuple(r.uid for r in runs_a), tuple(r.uid for r in runs_b))
        if self._scope is not None and self._scope[1] == task:
            self._close_curves()
        cov = None
        stored = self._gram.get(key)
        if stored is not None and set(epochs) <= set(stored[0]):
            idx = [stored[0].index(int(e)) for e in epochs]
            cov = stored[1][:, idx][:, :, :, idx]
        return curve(values_a, values_b, cov, epochs=epochs, seeds_a=_ids(runs_a), seeds_b=_ids(runs_b))

    def average(self, items: Sequence[tuple[str, str]], epoch: int, runs_a: Sequence[Run], runs_b: Sequence[Run],
                values_a: np.ndarray, values_b: np.ndarray) -> Interval:
        """The interval of the mean over tasks of A - B (``items``: (task, metric) pairs, values (T, S) per arm):
        each run's value is its mean over the tasks, and the tasks' test sets are independent, so the example
        covariance is the tasks' summed over T^2. Seed-level only when one task had no usable per-example files."""
        ua, ub = tuple(r.uid for r in runs_a), tuple(r.uid for r in runs_b)
        covs = [self._cov.get((task, metric, int(epoch), ua, ub)) for task, metric in items]
        cov = None if any(c is None for c in covs) else sum(covs) / len(items) ** 2
        return interval(np.mean(values_a, axis=0), np.mean(values_b, axis=0), cov, seeds_a=_ids(runs_a),
                        seeds_b=_ids(runs_b), level=self.level, assume_no_seed_noise=self.assume_no_seed_noise)

    def _close_curves(self) -> None:
        """Turn the kept influence values into covariances across epochs (R x E x R x E), and drop them."""
        for key, per_epoch in self._psi.items():
            epochs = tuple(sorted(per_epoch))
            stacked = np.stack([per_epoch[e] for e in epochs], axis=1)  # (R, E, units)
            R, E, U = stacked.shape
            flat = stacked.reshape(R * E, U)
            self._gram[key] = (epochs, (flat @ flat.T).reshape(R, E, R, E))
        self._psi.clear()

    def _per_example(self, task: str, metric: str, epoch: int, runs_a: Sequence[Run], runs_b: Sequence[Run],
                     values_a: Sequence[float], values_b: Sequence[float], for_curve: bool) -> Interval | None:
        arrays = []
        for run in (*runs_a, *runs_b):
            got = self._load(run, epoch, task)
            if got is None:
                return None
            arrays.append(got)
        try:
            _, psi = linearize(arrays, metric)
            cov = psi @ psi.T
            iv = interval(values_a, values_b, cov, seeds_a=_ids(runs_a), seeds_b=_ids(runs_b),
                          level=self.level, assume_no_seed_noise=self.assume_no_seed_noise)
        except OrderMismatch as e:
            self._fallback("per-example files of different examples or order", f"{task} epoch {epoch}: {e}")
            return None
        except (KeyError, MetricUndefined, StatsError) as e:
            self._fallback("per-example files unusable for this metric", f"{task} {metric}: {e}")
            return None
        series: Series = (task, metric, tuple(r.uid for r in runs_a), tuple(r.uid for r in runs_b))
        self._cov[(task, metric, int(epoch), series[2], series[3])] = cov
        if for_curve:
            self._psi.setdefault(series, {})[int(epoch)] = psi
        return iv

    def _load(self, run: Run, epoch: int, task: str) -> dict[str, np.ndarray] | None:
        key = (run.uid, epoch, task)
        if key not in self._cache:
            path = per_example_path(run, epoch, task)
            if not path.is_file():
                self._fallback("per-example files missing", str(path))
                self._cache[key] = None
            else:
                self._cache[key] = _read(path, self)
        return self._cache[key]

    def _fallback(self, reason: str, example: str) -> None:
        self.fallbacks[reason] += 1
        self.fallback_example.setdefault(reason, example)


def _read(path: Path, est: Estimator) -> dict[str, np.ndarray] | None:
    """eval.evaluator.read_per_example without importing the evaluator (which imports torch: seconds)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        est._fallback("per-example files unreadable", f"{path}: {e}")
        return None


def _distinct(seeds: Sequence[int]) -> bool:
    return len(set(seeds)) == len(seeds)


def _ids(runs: Sequence[Run]) -> list[int] | None:
    seeds = [r.seed for r in runs]
    return seeds if _distinct(seeds) else None


def interval_dict(iv: Interval | None, n_a: int = 0, n_b: int = 0) -> dict[str, Any] | None:
    """The JSON form of an Interval (NaN stays NaN here; export turns it into null)."""
    if iv is None:
        return None
    return {"mean_a": iv.mean_a, "lo_a": iv.lo_a, "hi_a": iv.hi_a, "mean_b": iv.mean_b, "lo_b": iv.lo_b,
            "hi_b": iv.hi_b, "delta": iv.delta, "lo": iv.lo, "hi": iv.hi, "p": iv.p_value, "method": iv.method,
            "includes": iv.includes, "decides": iv.decides, "se": iv.se, "df": iv.df, "se_seeds": iv.se_seeds,
            "se_examples": iv.se_examples, "sign_flip_p": iv.sign_flip_p,
            "n_a": n_a or iv.n_seeds_a, "n_b": n_b or iv.n_seeds_b}
