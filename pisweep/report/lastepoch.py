"""Every benchmark at a group's last complete epoch, for one comparison: the DataComp main metric with Holm and
win counts, every metric (acc1, acc5, mean per-class recall; retrieval recall@k both ways) as the paper counts
its wins, and a DataComp-style average over the main metrics with its joint interval. Definitions:
docs/statistics.md. The intervals come from the report's one Estimator (one interval per number).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from pisweep.eval import registry
from pisweep.report.data import Group, StudyData, metric_values, run_index
from pisweep.report.emergence import sign_test, tally
from pisweep.report.estimate import Estimator, interval_dict
from pisweep.report.inference import Interval

CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
#: the paper's metric types (the authors' tests/final_table.py counts wins per type over every task)
PAPER_TYPES = {"acc1": "top-1", "acc5": "top-5", "mean_per_class_recall": "per-class recall",
               **{f"{d}_retrieval_recall@{k}": f"R@{k}" for k in registry.RECALL_K for d in ("image", "text")},
               "mean_recall@1": "mean R@1"}


def column(m: np.ndarray, idx: np.ndarray, epoch: int) -> np.ndarray:
    """The values of runs ``idx`` at ``epoch`` (NaN where missing)."""
    if epoch >= m.shape[1] or len(idx) == 0:
        return np.full(len(idx), np.nan)
    return m[idx, epoch]


def last_table(data: StudyData, est: Estimator, g: Group, epoch: int, c: tuple[str, str], values: Any,
               wanted: set[int], full: bool = True) -> Callable[[float], dict[str, Any]]:
    """Ask for every interval of the last-epoch tables now; the returned function assembles them after the
    Estimator's flush. ``values``: the report's main-value cache (``.at(task, epochs)``); ``full``: also every
    classification metric (acc1, acc5, per-class recall) for the paper's view."""
    a_runs, b_runs = data.runs_of(g, c[0]), data.runs_of(g, c[1])
    idx_a, idx_b = run_index(a_runs), run_index(b_runs)
    rows, retrieval, metrics, mains = [], [], [], {}

    def ask(task: str, metric: str, va: np.ndarray, vb: np.ndarray, done: Callable[[Interval], None]) -> None:
        ia, ib = np.flatnonzero(np.isfinite(va)), np.flatnonzero(np.isfinite(vb))
        if len(ia) and len(ib):
            est.request(task, metric, epoch, [a_runs[i] for i in ia], [b_runs[i] for i in ib], va[ia].tolist(),
                        vb[ib].tolist(), done)

    def keep(target: dict[str, Any], key: str = "interval") -> Callable[[Interval], None]:
        return lambda iv: target.__setitem__(key, interval_dict(iv))

    for task in data.tasks:
        meta = registry.get_task(task)
        va, vb = column(values.at(task, wanted), idx_a, epoch), column(values.at(task, wanted), idx_b, epoch)
        mains[task] = (va, vb)
        row = {"task": task, "name": meta.display_name, "kind": meta.kind, "metric": meta.main_metric,
               "n_a": int(np.isfinite(va).sum()), "n_b": int(np.isfinite(vb).sum()), "planned_a": len(a_runs),
               "planned_b": len(b_runs), "interval": None}
        rows.append(row)
        ask(task, meta.main_metric, va, vb,
            lambda iv, row=row: row.__setitem__("interval", interval_dict(iv, row["n_a"], row["n_b"])))
        if meta.kind == registry.RETRIEVAL:
            names = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in registry.RECALL_K]
            both = metric_values(data, task, names, epoch)
            for name in names:
                rrow = {"task": task, "name": meta.display_name, "metric": name,
                        "direction": "text→image" if name.startswith("image") else "image→text",
                        "k": int(name.rsplit("@", 1)[1]), "interval": None}
                retrieval.append(rrow)
                ask(task, name, both[name][idx_a], both[name][idx_b], keep(rrow))
        elif full:  # the paper's view reads every metric row of the epoch: the full report's, not the terminal's
            per = metric_values(data, task, list(CLASSIFICATION_METRICS), epoch)
            for name in CLASSIFICATION_METRICS:
                mrow = {"task": task, "name": meta.display_name, "metric": name, "interval": None}
                metrics.append(mrow)
                ask(task, name, per[name][idx_a], per[name][idx_b], keep(mrow))
    average = _ask_average(data, est, epoch, a_runs, b_runs, mains)

    def finalize(alpha: float) -> dict[str, Any]:
        """The table, its verdicts from Holm over its own tasks (:func:`adjust_family` then widens that to its
        family's comparisons)."""
        mean_r1 = [{"task": r["task"], "metric": r["metric"], "interval": r["interval"]} for r in rows
                   if r["kind"] == registry.RETRIEVAL]
        table = {"epoch": epoch, "final": epoch == g.epochs, "tasks": rows, "alpha": alpha,
                 "retrieval": retrieval, "metrics": metrics,
                 "paper_tally": paper_tally([*metrics, *retrieval, *mean_r1]), "average": average()}
        adjust_family({"table": table}, alpha, None)
        return table
    return finalize


#: The two families of comparisons the report's verdicts hold their error rate in (docs/statistics.md): Holm over
#: every (comparison, benchmark) of a family at once.
FAMILIES = {"vs_random": "every arm against random",
            "vs_perceptual": "perceptual against each control and against posthoc"}


def family_of(comparison: tuple[str, str]) -> str:
    return "vs_random" if comparison[1] == "random" else "vs_perceptual"


def _decided(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["task"]: r["interval"] for r in table["tasks"] if r["interval"] and math.isfinite(r["interval"]["delta"])}


def adjust_family(tables: dict[str, dict[str, Any]], alpha: float, family: str | None) -> None:
    """Holm over every (comparison, task) of ``tables`` (comparison key -> last-epoch table) together: each task's
    ``p_holm`` and ``outcome``, each table's counts, and ``holm``: the family, its comparisons, how many tests."""
    ivs = {(k, task): iv for k, t in tables.items() for task, iv in _decided(t).items()}
    t = tally({key: (v["delta"], v["p"], v["decides"]) for key, v in ivs.items()}, alpha=alpha)
    tests = sum(1 for v in ivs.values() if v["decides"])
    for k, table in tables.items():
        for r in table["tasks"]:
            if (k, r["task"]) in ivs:
                r["p_holm"], r["outcome"] = t.p_adjusted[(k, r["task"])], t.outcome[(k, r["task"])]
        table["tally"] = _counts(table)
        table["holm"] = {"family": family, "name": FAMILIES.get(family, "this table's tasks"),
                         "comparisons": list(tables) if family else [], "tests": tests}


def _counts(table: dict[str, Any]) -> dict[str, Any]:
    rows, ivs = table["tasks"], _decided(table)
    counts: dict[str, Any] = {}
    for kind in (registry.CLASSIFICATION, registry.RETRIEVAL, "all"):
        sel = [r for r in rows if r["task"] in ivs and (kind == "all" or r["kind"] == kind)]
        w = sum(ivs[r["task"]]["delta"] > 0 for r in sel)
        lo = sum(ivs[r["task"]]["delta"] < 0 for r in sel)
        planned = sum(1 for r in rows if kind == "all" or r["kind"] == kind)
        counts[kind] = {"wins": w, "losses": lo, "ties": len(sel) - w - lo, "with_results": len(sel),
                        "planned": planned, "sign_p": sign_test(w, lo),
                        "significant": {o: sum(1 for r in sel if r.get("outcome") == o)
                                        for o in ("win", "loss", "tie", "no verdict")}}
    return counts


def paper_tally(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Point wins per metric type over every metric of every task (as the paper counts them), and overall."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        iv = r["interval"]
        if not iv or not math.isfinite(iv["delta"]):
            continue
        for kind in (PAPER_TYPES[r["metric"]], "overall"):
            k = out.setdefault(kind, {"wins": 0, "losses": 0, "ties": 0, "with_results": 0})
            k["with_results"] += 1
            k["wins" if iv["delta"] > 0 else "losses" if iv["delta"] < 0 else "ties"] += 1
    order = [*dict.fromkeys(PAPER_TYPES.values()), "overall"]
    return {k: out[k] for k in order if k in out}


def _ask_average(data: StudyData, est: Estimator, epoch: int, a_runs: list, b_runs: list,
                 mains: dict[str, tuple[np.ndarray, np.ndarray]]) -> Callable[[], dict[str, Any] | None]:
    """The DataComp-style average of the main metrics over the tasks with results, on the runs that have a result
    of every one of them (their intervals are asked for on exactly those runs, so the covariances line up)."""
    tasks = [t for t, (va, vb) in mains.items() if np.isfinite(va).any() and np.isfinite(vb).any()]
    if not tasks:
        return lambda: None
    ok_a = np.logical_and.reduce([np.isfinite(mains[t][0]) for t in tasks])
    ok_b = np.logical_and.reduce([np.isfinite(mains[t][1]) for t in tasks])
    ia, ib = np.flatnonzero(ok_a), np.flatnonzero(ok_b)
    if not len(ia) or not len(ib):
        return lambda: {"tasks": tasks, "planned": len(mains), "interval": None,
                        "reason": "no run of each arm has a result of every benchmark"}
    runs_a, runs_b = [a_runs[i] for i in ia], [b_runs[i] for i in ib]
    items = [(t, registry.get_task(t).main_metric) for t in tasks]
    va = np.array([mains[t][0][ia] for t in tasks])
    vb = np.array([mains[t][1][ib] for t in tasks])
    for (task, metric), x, y in zip(items, va, vb):
        est.request(task, metric, epoch, runs_a, runs_b, x.tolist(), y.tolist(), lambda iv: None)

    def finish() -> dict[str, Any]:
        iv = est.average(items, epoch, runs_a, runs_b, va, vb)
        return {"tasks": tasks, "planned": len(mains), "interval": interval_dict(iv, len(ia), len(ib))}
    return finish
