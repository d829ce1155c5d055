"""Intervals for (group, task, metric, epoch, comparison): the paired per-example bootstrap when every run's
per-example file is there, else the seed-level bootstrap from the ledger's values (batched; see seedboot.py).

The reason for every fallback is counted, so the report can say what was resampled and why.
"""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pisweep.report.bootstrap import Interval, StatsError, bootstrap_delta
from pisweep.report.data import Run, per_example_path
from pisweep.report.examples import OrderMismatch, metric_counts
from pisweep.report.seedboot import intervals_from_metrics

Done = Callable[[Interval], None]


@dataclass
class _Pending:
    values_a: list[float]
    values_b: list[float]
    done: Done


@dataclass
class Estimator:
    """Collects interval requests; per-example ones are computed at once, seed-level ones on :meth:`flush`."""

    seed: int = 0
    level: float = 0.95
    per_example: bool = True  # False: seed-level only (faster; the report says so)
    fallbacks: Counter = field(default_factory=Counter)  # reason -> requests
    fallback_example: dict[str, str] = field(default_factory=dict)  # reason -> one path or detail
    methods: Counter = field(default_factory=Counter)  # Interval.method -> requests
    _queue: dict[tuple, list[_Pending]] = field(default_factory=dict)
    _cache: dict[tuple[str, int, str], dict[str, np.ndarray] | None] = field(default_factory=dict)
    _scope: Any = None

    def request(self, task: str, metric: str, epoch: int, runs_a: Sequence[Run], runs_b: Sequence[Run],
                values_a: Sequence[float], values_b: Sequence[float], resamples: int, done: Done) -> None:
        """Ask for the interval of A - B; ``done`` receives it (now, or at the next flush)."""
        scope = (epoch, task, tuple(r.uid for r in (*runs_a, *runs_b)))
        if scope[:2] != (self._scope or (None, None))[:2]:
            self._cache.clear()
        self._scope = scope
        iv = self._per_example(task, metric, epoch, runs_a, runs_b, resamples) if self.per_example else None
        if iv is not None:
            self.methods[iv.method] += 1
            done(iv)
            return
        if not self.per_example:
            self._fallback("seed-level only (asked for)", "")
        key = (tuple(r.seed for r in runs_a), tuple(r.seed for r in runs_b), resamples)
        self._queue.setdefault(key, []).append(_Pending(list(values_a), list(values_b), done))

    def flush(self) -> None:
        """Compute every queued seed-level interval, one seed draw per (seed sets, resamples)."""
        queue, self._queue = self._queue, {}
        for (seeds_a, seeds_b, resamples), items in queue.items():
            try:
                ivs = intervals_from_metrics(np.array([p.values_a for p in items]),
                                             np.array([p.values_b for p in items]),
                                             list(seeds_a) if _distinct(seeds_a) else None,
                                             list(seeds_b) if _distinct(seeds_b) else None,
                                             resamples=resamples, seed=self.seed, level=self.level)
            except StatsError as e:
                self._fallback("no interval (seed-level bootstrap refused)", str(e))
                continue
            for p, iv in zip(items, ivs):
                self.methods[iv.method] += 1
                p.done(iv)

    def _per_example(self, task: str, metric: str, epoch: int, runs_a: Sequence[Run], runs_b: Sequence[Run],
                     resamples: int) -> Interval | None:
        arrays = []
        for run in (*runs_a, *runs_b):
            got = self._load(run, epoch, task)
            if got is None:
                return None
            arrays.append(got)
        n_a = len(runs_a)
        try:
            counts = metric_counts(arrays[:n_a], arrays[n_a:], metric, [r.seed for r in runs_a],
                                   [r.seed for r in runs_b])
        except OrderMismatch as e:
            self._fallback("per-example files of different examples or order", f"{task} epoch {epoch}: {e}")
            return None
        except (KeyError, StatsError) as e:
            self._fallback("per-example files unusable for this metric", f"{task} {metric}: {e}")
            return None
        return bootstrap_delta(counts, resamples=resamples, seed=self.seed, level=self.level)

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


def interval_dict(iv: Interval | None, n_a: int = 0, n_b: int = 0) -> dict[str, Any] | None:
    """The JSON form of an Interval (NaN stays NaN here; export turns it into null)."""
    if iv is None:
        return None
    return {"mean_a": iv.mean_a, "lo_a": iv.lo_a, "hi_a": iv.hi_a, "mean_b": iv.mean_b, "lo_b": iv.lo_b,
            "hi_b": iv.hi_b, "delta": iv.delta, "lo": iv.lo, "hi": iv.hi, "p": iv.p_value, "method": iv.method,
            "resamples": iv.resamples, "n_a": n_a or iv.n_seeds_a, "n_b": n_b or iv.n_seeds_b}
