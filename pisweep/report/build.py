"""One study's report as a JSON-able dict: the analysis, coverage, cost, and the per-benchmark curves."""
from __future__ import annotations

from typing import Any

from pisweep.ledger.db import Ledger
from pisweep.report import answer
from pisweep.report.analysis import Options, analyze
from pisweep.report.cost import cost
from pisweep.report.coverage import coverage
from pisweep.report.data import load_study
from pisweep.report.dose import dose_rows
from pisweep.study.datapaths import resolve
from pisweep.study.plan import Plan
from pisweep.study.spec import Study


def build_report(ledger: Ledger, study: Study, plan: Plan, suite_version: str, opts: Options,
                 now: float | None = None) -> dict[str, Any]:
    data = load_study(ledger, study, plan, suite_version, opts.main_task)
    rep: dict[str, Any] = {"study": plan.study, "ledger": str(ledger.path), "suite_version": suite_version,
                           "runs_planned": len(plan.runs), "tasks_planned": list(plan.tasks)}
    rep.update(analyze(data, opts))
    paths = resolve(study, generate=False)
    rep["coverage"] = coverage(data, rep, paths.eval_root, dict(study.eval.folders))
    rep["cost"] = cost(data, now)
    rep["curves"] = curves(rep)
    rep["emergence_by_scale"] = emergence_by_scale(rep)
    for gr in rep["groups"]:
        gr["dose"] = dose_rows(gr)
    rep["answer"] = answer.sentences(rep)
    rep["world"] = synthetic_world(study)
    return rep


WORLDS = {
    "task-aligned": "a positive control: its simulated human judgments weigh shape, then colour and texture, which "
                    "the zero-shot tasks classify, so the synthetic world is built for perceptual init to help",
    "pose-only": "a negative control: its simulated human judgments weigh only position, size and rotation, which no "
                 "zero-shot task asks about, so the synthetic world is built for perceptual init NOT to help; a win "
                 "or an emergence here is a false positive",
}


def synthetic_world(study: Study) -> dict[str, str] | None:
    """What a synthetic study's world is built to show (None for real data)."""
    synth = study.data.synthetic
    if synth is None:
        return None
    return {"judgments": synth.judgments, "text": f"synthetic data, {WORLDS[synth.judgments]}."}


def curves(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Arm means over seeds per epoch, and each arm's delta against random (every task in full mode, else the
    main one), plus each NIGHTS 2AFC set when recorded (from epoch 0): the walking skeleton's table, kept for
    scripts."""
    out = []
    for gr in rep["groups"]:
        series = gr.get("series") or ({rep["main_task"]: gr["main"]} if gr.get("main") else {})
        for task, s in series.items():
            rows = [(r["epoch"], {a: (v["mean"], v["n"]) for a, v in r["arms"].items()}) for r in s["rows"]]
            out.append(_curve(task, s["metric"], gr, rows))
    for gr in rep["groups"]:
        for metric, s in (gr.get("nights") or {}).items():
            rows = [(r["epoch"], {a: (v["mean"], v["n"]) for a, v in r["arms"].items()}) for r in s["rows"]]
            out.append(_curve(s["task"], metric, gr, rows))
    return out


def _curve(task: str, metric: str, gr: dict[str, Any], rows: list[tuple[int, dict[str, tuple]]]) -> dict[str, Any]:
    arms = [a for a in gr["arms"] if any(per.get(a, (None, 0))[1] for _, per in rows)]
    out_rows = []
    for epoch, per in rows:
        row: dict[str, Any] = {"epoch": epoch}
        for arm in arms:
            row[arm], row[f"{arm}_n"] = per.get(arm, (None, 0))
        for arm in arms:
            if arm != "random" and "random" in arms:
                base = row["random"]
                row[f"delta_{arm}"] = row[arm] - base if row[arm] is not None and base is not None else None
        out_rows.append(row)
    return {"task": task, "metric": metric, "scale": gr["scale"], "epochs": gr["epochs"], "arms": arms,
            "rows": out_rows}


def emergence_by_scale(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Emergence and crossover epochs per group, comparison and task (the main task first): the data for
    "improvements manifest at different stages depending on the data"."""
    out = []
    for gr in rep["groups"]:
        series = gr.get("series") or ({rep["main_task"]: gr["main"]} if gr.get("main") else {})
        for task, s in sorted(series.items(), key=lambda kv: kv[0] != rep["main_task"]):
            if not s["rows"]:
                continue
            for k, e in s["emergence"].items():
                out.append({"group": gr["key"], "scale": gr["scale"], "samples": gr["samples"],
                            "epochs": gr["epochs"], "comparison": k, "task": task,
                            "main": task == rep["main_task"], "emergence_epoch": e.get("emergence_epoch"),
                            "crossover_epoch": e.get("crossover_epoch"), "through_epoch": e.get("through_epoch"),
                            "provisional": e.get("provisional", False)})
    return out
