"""What the report reads from the ledger, as numpy arrays indexed by the plan's runs (no row objects kept).

The SQL is in ledger/results.py; here its rows become matrices indexed by the plan's runs. Per-example results are read from the files the evaluator writes next to each run's checkpoints.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pisweep.eval import registry
from pisweep.job.paths import JobPaths
from pisweep.ledger import results
from pisweep.ledger.db import Ledger
from pisweep.ledger.queries import jobs_of
from pisweep.study.arms import POSTHOC, arm_order
from pisweep.study.plan import Plan
from pisweep.study.spec import Study



@dataclass(frozen=True)
class Run:
    """One stage-2 run of the plan, with its ledger state; ``index`` is its row in every value matrix."""

    index: int
    uid: str
    label: str
    init: str  # its arm: the init method, with the NIGHTS dose when not all (study/arms.py arm_name)
    scale: str
    epochs: int
    seed: int
    folder: str
    state: str
    reason: str | None
    eval_epochs: tuple[int, ...]

    def evaluates(self, epoch: int, start: bool = False) -> bool:
        """Whether the plan evaluates this run at ``epoch`` (``start``: epoch 0 too, the weights a training starts
        from; a post-hoc cell has only its source epoch)."""
        return epoch in self.eval_epochs or (start and epoch == 0 and self.init != POSTHOC)


@dataclass(frozen=True)
class Group:
    """A (data scale, epoch budget) cell group: the unit of every comparison."""

    scale: str
    epochs: int
    samples: int | None  # samples per epoch at this scale, for "emergence against data scale"

    @property
    def key(self) -> str:
        return f"{self.scale}/e{self.epochs}"


@dataclass
class StudyData:
    name: str
    ledger: Ledger
    study: Study
    suite_version: str
    main_task: str
    tasks: tuple[str, ...]
    arms: tuple[str, ...]
    groups: list[Group]
    runs: list[Run]
    index: dict[str, int] = field(default_factory=dict)  # run uid -> row
    cache: dict[tuple, Any] = field(default_factory=dict)  # loaded matrices, by query

    def runs_of(self, group: Group, arm: str | None = None) -> list[Run]:
        key = ("runs", group.scale, group.epochs, arm)
        if key not in self.cache:
            self.cache[key] = [r for r in self.runs if r.scale == group.scale and r.epochs == group.epochs
                               and (arm is None or r.init == arm)]
        return self.cache[key]


def run_index(runs: Sequence[Run]) -> np.ndarray:
    """The rows of ``runs`` in every value matrix."""
    return np.array([r.index for r in runs], dtype=np.int64)


def load_study(ledger: Ledger, study: Study, plan: Plan, suite_version: str, main_task: str) -> StudyData:
    """The plan's runs (in plan order) with their ledger states, the groups and arms in the grid's order."""
    jobs = jobs_of(ledger, plan.study)
    runs = []
    for i, r in enumerate(plan.runs):
        row = jobs.get(r.uid)
        folder = row.folder if row is not None else str(Path(study.output_root) / "runs" / r.uid)
        runs.append(Run(i, r.uid, r.label, r.arm, r.scale, r.epochs, r.seed, folder,
                        row.state if row else "planned", row.reason if row else None, tuple(r.eval_epochs)))
    arms = tuple(sorted({r.arm for r in plan.runs}, key=arm_order))
    groups = [Group(sc, ep, _samples(study, sc)) for sc in study.grid.scale for ep in study.grid.epochs]
    return StudyData(plan.study, ledger, study, suite_version, main_task, tuple(plan.tasks), arms, groups, runs,
                     {r.uid: r.index for r in runs})


def _samples(study: Study, scale: str) -> int | None:
    if study.data.synthetic is not None:
        return study.data.synthetic.train_scales.get(scale)
    spec = study.data.train.get(scale)
    return spec.samples if spec else None


def main_values(data: StudyData, task: str, epochs: Iterable[int] | None = None,
                suite_version: str | None = None) -> np.ndarray:
    """(runs, max epoch + 1) matrix of ``task``'s main value per run and epoch; NaN where there is none.

    One range of the covering index evals_done_by_task, fetched as plain tuples (no row objects); cached.
    """
    version = suite_version or data.suite_version
    wanted = None if epochs is None else tuple(sorted({int(e) for e in epochs}))
    key = ("main", task, version, wanted)
    if key in data.cache:
        return data.cache[key]
    if ("main", task, version, None) in data.cache:
        return data.cache[("main", task, version, None)]
    data.cache[key] = out = _matrix(data, results.main_value_rows(data.ledger, task, version, wanted))
    return out


def task_metric_values(data: StudyData, task: str, suite_version: str) -> dict[str, np.ndarray]:
    """Per metric of ``task``, a (runs, max epoch + 1) matrix of its value per run and epoch; NaN where there is none
    (a pseudo-task with a few metrics: NIGHTS 2AFC). Cached."""
    key = ("task metrics", task, suite_version)
    if key not in data.cache:
        by_metric: dict[str, list[tuple[str, int, float | None]]] = {}
        for uid, epoch, metric, value in results.task_metric_rows(data.ledger, task, suite_version):
            by_metric.setdefault(metric, []).append((uid, epoch, value))
        data.cache[key] = {metric: _matrix(data, rows) for metric, rows in by_metric.items()}
    return data.cache[key]


def metric_values(data: StudyData, task: str, metrics: Sequence[str], epoch: int) -> dict[str, np.ndarray]:
    """Per metric, a (runs,) vector of its value at ``epoch`` for every run; NaN where there is none.

    The metrics table's primary key (job, epoch, task, ...) makes this one index lookup per run; cached.
    """
    key = ("metrics", task, int(epoch), tuple(metrics))
    if key in data.cache:
        return data.cache[key]
    out = {m: np.full(len(data.runs), np.nan) for m in metrics}
    for uid, metric, value in results.metric_rows_at(data.ledger, data.name, task, epoch, data.suite_version):
        i = data.index.get(uid)
        if metric in out and i is not None and value is not None:
            out[metric][i] = value
    data.cache[key] = out
    return out


def _matrix(data: StudyData, rows: list[tuple[str, int, float | None]]) -> np.ndarray:
    index = data.index
    picked = [(index[uid], epoch, value) for uid, epoch, value in rows if value is not None and uid in index]
    width = max((p[1] for p in picked), default=0) + 1
    out = np.full((len(data.runs), width), np.nan)
    if picked:
        arr = np.array(picked, dtype=np.float64)
        out[arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)] = arr[:, 2]
    return out


def eval_problems(data: StudyData) -> dict[str, dict[str, Any]]:
    """Per task: failed and missing-data evals (count, runs, one reason)."""
    out: dict[str, dict[str, Any]] = {}
    for task, state, n, runs, reason in results.eval_problem_rows(data.ledger, data.name, data.suite_version):
        out.setdefault(task, {})[state] = {"evals": n, "runs": runs, "reason": reason}
    return out


def open_evals(data: StudyData) -> int:
    return results.open_eval_count(data.ledger, data.name, data.suite_version)


# -- cost ------------------------------------------------------------------------------------------------------------
def job_costs(data: StudyData, now: float | None = None) -> dict[str, dict[str, float]]:
    """Per job (runs and inits): attempts, preemptions, wall hours, rank-hours (wall x ranks) and the rank-hours
    lost: for an attempt that ended without saving and was followed by another, the time after its last recorded
    checkpoint (weights or resume state), which the next attempt did again."""
    rows = results.job_cost_rows(data.ledger, data.name, time.time() if now is None else now)
    counts = ("attempts", "preemptions", "unsaved_restarts", "without_end")
    return {r["job_uid"]: {k: (int(r[k] or 0) if k in counts else float(r[k] or 0.0)) for k in r.keys()
                           if k != "job_uid"} for r in rows}


def init_jobs(data: StudyData) -> dict[str, dict[str, Any]]:
    return {uid: {"label": label, "method": method} for uid, label, method in results.init_job_rows(data.ledger, data.name)}


# -- every metric row (csv) ------------------------------------------------------------------------------------------
CSV_COLUMNS = ("study", "run", "label", "init", "scale", "epochs", "seed", "epoch", "task", "metric",
               "suite_version", "value")


def write_metric_rows(data: StudyData, path: Path) -> int:
    """Every metric row of the study's runs (train metrics, each benchmark's metrics, NIGHTS), streamed to CSV in
    (scale, epochs, arm, seed) order, each run's rows in primary-key order (no sort of 30 M rows)."""
    n = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for job, rows in results.metric_rows_by_run(data.ledger, data.name):
            for epoch, task, metric, version, value in rows:
                missing = value is None or (isinstance(value, float) and math.isnan(value))
                w.writerow((data.name, *job, epoch, task, metric, version, "" if missing else repr(float(value))))
            n += len(rows)
    tmp.replace(path)
    return n


# -- per-example results ---------------------------------------------------------------------------------------------
def per_example_path(run: Run, epoch: int, task: str) -> Path:
    """Where the evaluator wrote the per-example arrays of ``task`` at ``epoch``."""
    return JobPaths(run.folder).per_example(epoch, registry.get_task(task).file_stem)


def tasks_with_results(data: StudyData) -> set[str]:
    """Tasks with at least one done eval in this study."""
    return results.tasks_with_done_evals(data.ledger, data.name, data.suite_version, data.tasks)
