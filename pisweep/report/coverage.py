"""What the report does not know yet, stated: missing cells, missing datasets, failed and pending evals.

A study that is still running gets a report of what is known so far; everything that is absent is listed here
(never silently skipped), and the tables mark partial epochs and a last epoch short of the budget.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pisweep.eval import registry
from pisweep.report.data import StudyData, eval_problems, main_values, open_evals, tasks_with_results

LIST_LIMIT = 200  # runs listed by name in the JSON; the count is always complete


def coverage(data: StudyData, report: dict[str, Any], eval_root: str | None,
             folders: dict[str, str]) -> dict[str, Any]:
    problems = eval_problems(data)
    with_results = tasks_with_results(data)
    if eval_root:
        _, absent = registry.coverage(Path(eval_root), list(data.tasks), folders)
        absent = {k: str(v) for k, v in absent.items()}
    else:
        absent = {t: "(no eval root)" for t in data.tasks}
    tasks: dict[str, dict[str, Any]] = {}
    for task in data.tasks:
        info: dict[str, Any] = {"results": task in with_results}
        if task in absent:
            info["data_missing"] = absent[task]
        for state, p in problems.get(task, {}).items():
            info[state] = p
        tasks[task] = info
    main = main_values(data, report["main_task"])
    has_main = np.isfinite(main).any(axis=1) if main.size else np.zeros(len(data.runs), bool)
    missing_runs = [{"label": r.label, "state": r.state, "reason": r.reason} for r in data.runs
                    if not has_main[r.index]]
    not_done = [r for r in data.runs if r.state != "completed"]
    short = [g for g in report["groups"] if g.get("last_epoch") is None or g["last_epoch"] < g["epochs"]]
    pending = open_evals(data)
    states: dict[str, int] = {}
    for r in data.runs:
        states[r.state] = states.get(r.state, 0) + 1
    return {
        "runs_planned": len(data.runs), "run_states": states,
        "runs_with_main_results": int(has_main.sum()),
        "runs_without_main_results": len(missing_runs), "runs_without_main_results_list": missing_runs[:LIST_LIMIT],
        "tasks_planned": len(data.tasks), "tasks_with_results": sorted(with_results, key=data.tasks.index),
        "tasks_without_results": [t for t in data.tasks if t not in with_results],
        # evals that found no data, or no result and no folder (a folder removed after its results is not missing)
        "datasets_missing": {t: (i.get("missing_data") or {}).get("reason") or i.get("data_missing")
                             for t, i in tasks.items() if "missing_data" in i or ("data_missing" in i
                                                                                   and not i["results"])},
        "evals_failed": {t: i["failed"] for t, i in tasks.items() if "failed" in i},
        "evals_open": pending,
        "groups_short_of_budget": [{"group": g["key"], "last_epoch": g.get("last_epoch"), "budget": g["epochs"]}
                                   for g in short],
        "still_running": bool(not_done or pending or short),
        "tasks": tasks,
    }
