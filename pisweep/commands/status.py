"""The grid's state for `pisweep status`: every cell's state, epoch, attempts, main metric, evals, disk and live
processes, plus the study's live controller; computed without printing (the CLI renders it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisweep.commands.session import Session, reconcile_with_snapshot, slurm_executor
from pisweep.ledger.queries import (
    disk_total,
    disk_use,
    eval_counts,
    eval_state_counts_by_job,
    init_val_2afc,
    last_main_metric,
)
from pisweep.study.arms import arm_order
from pisweep.study.datapaths import resolve

STATUS_LIMIT = 40  # cells listed one by one; beyond that, a summary per group and the most relevant cells
_RELEVANCE = {"failed": 0, "blocked": 1, "vanished": 2, "running": 3, "preempted": 4, "stopped": 4, "timeout": 5,
              "queued": 6, "cancelled": 7, "planned": 8, "completed": 9}


@dataclass
class StatusData:
    study: str
    ledger: str
    tasks_total: int
    tasks_present: list[str]
    tasks_missing: dict[str, str]
    cells: list[dict[str, Any]] = field(default_factory=list)  # the cells shown (all of them up to the limit)
    summary: dict[str, int] = field(default_factory=dict)  # every cell, by state
    groups: list[dict[str, Any]] = field(default_factory=list)  # per (kind, init, scale, epochs): states, evals
    cells_total: int = 0
    cells_matching: int = 0  # after the state filter
    state_filter: str | None = None
    limit: int | None = None
    evals: dict[str, int] = field(default_factory=dict)  # open/failed/missing_data evals of the study
    disk_bytes: int = 0
    controller: dict[str, Any] | None = None  # the live scheduler or submission (pid, host, since, command)

    @property
    def hidden(self) -> int:
        return self.cells_matching - len(self.cells)

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study, "ledger": self.ledger,
                "coverage": {"present": len(self.tasks_present), "total": self.tasks_total,
                             "tasks_present": self.tasks_present, "tasks_missing": self.tasks_missing},
                "summary": self.summary, "cells": self.cells, "groups": self.groups,
                "cells_total": self.cells_total, "cells_matching": self.cells_matching, "cells_hidden": self.hidden,
                "filter": {"state": self.state_filter, "limit": self.limit}, "evals": self.evals,
                "disk_bytes": self.disk_bytes, "controller": self.controller}


def status(s: Session, state: str | None = None, limit: int | None = STATUS_LIMIT) -> StatusData:
    """The grid's state: every cell when there are at most ``limit`` (None: no limit) matching ``state``;
    otherwise counts per group and the ``limit`` most relevant cells (failed, blocked, running first).

    Only the cells shown are looked up one by one (evals, main metric, disk); the rest is counted from the jobs
    table and the small partial indexes of open and failed evals, so it stays fast at 10 000 runs.
    """
    paths = resolve(s.ref.study, generate=False)
    if s.ref.study.executor.name == "slurm" and not s.ledger.readonly:  # one sacct + one squeue; nothing submitted
        slurm_executor(s, paths).reconcile()
    jobs = reconcile_with_snapshot(s)[1].jobs
    from pisweep.eval.registry import coverage

    present, missing = (coverage(Path(paths.eval_root), list(s.plan.tasks), dict(s.ref.study.eval.folders))
                        if paths.eval_root else ([], {t: "(no eval_root)" for t in s.plan.tasks}))
    main_task = s.ref.study.eval.main_task
    data = StatusData(s.name, str(s.ledger.path), len(s.plan.tasks), list(present),
                      {k: str(v) for k, v in missing.items()}, state_filter=state, limit=limit)
    cells = []
    labels = {i.uid: i.label for i in s.plan.inits} | {r.uid: r.label for r in s.plan.runs}
    trainings = {"init": s.ref.study.stage1.epochs, "posthoc": s.ref.study.posthoc.epochs}  # (epochs of their own)
    for kind, job in [("init", i) for i in s.plan.inits] + [(r.kind, r) for r in s.plan.runs]:
        row = jobs.get(job.uid)
        cell = {"uid": job.uid, "kind": kind, "label": job.label, "state": row.state if row else "planned",
                "init": job.arm, "scale": getattr(job, "scale", None),  # its arm (a NIGHTS dose: perceptual@0.25)
                "seed": job.seed, "epoch": row.epoch_reached if row else 0,
                "epochs": trainings.get(kind, getattr(job, "epochs", None)),
                "attempts": row.attempts if row else 0, "reason": row.reason if row else None,
                "log": row.log_path if row else None}
        if kind != "init":
            cell["evals_planned"] = len(job.eval_epochs) * len(s.plan.tasks)
        if kind == "posthoc":  # it fine-tunes the weights of its source run's epoch
            cell["source"], cell["source_epoch"] = labels[job.source], job.source_epoch
            src = jobs.get(job.source)
            have = src is not None and (src.state == "completed" or src.epoch_reached >= job.source_epoch)
            if cell["state"] not in ("completed", "running") and not have:
                cell["waits_for"] = f"{labels[job.source]} epoch {job.source_epoch}"
        elif kind == "init" and job.after is not None:  # a control that hands on its seed's perceptual epoch
            cell["hands_on_epoch_of"] = labels[job.after]
            before = jobs.get(job.after)
            if cell["state"] not in ("completed", "running") and not (before and before.state == "completed"):
                cell["waits_for"] = labels[job.after]  # it starts once that init has chosen its epoch
        cells.append(cell)
        data.summary[cell["state"]] = data.summary.get(cell["state"], 0) + 1
    data.cells_total = len(cells)
    matching = [c for c in cells if state is None or c["state"] == state]
    data.cells_matching = len(matching)
    shown = matching if limit is None or len(matching) <= limit else sorted(
        matching, key=lambda c: (_RELEVANCE.get(c["state"], 5), c["kind"] != "init", c["label"]))[:limit]
    uids = [c["uid"] for c in shown]
    last = last_main_metric(s.ledger, s.name, main_task, uids)
    init_2afc = init_val_2afc(s.ledger, [c["uid"] for c in shown if c["kind"] == "init"])
    counts = eval_counts(s.ledger, s.name, s.suite_version, uids)
    disk = disk_use(s.ledger, s.name, uids)
    from pisweep.executors.controller import live_controller
    from pisweep.executors.local_control import live_jobs

    data.controller = live_controller(s.layout.root)
    live = {}
    for row, role, note in live_jobs([jobs[c["uid"]] for c in shown if c["uid"] in jobs]):
        live.setdefault(row.uid, {})[role] = note.get("pid")
    for cell in shown:
        cell["disk_bytes"] = disk.get(cell["uid"], 0)
        cell["live"] = live.get(cell["uid"])  # {"job": pid, "eval": pid} of its live local processes
        if cell["kind"] != "init":
            epoch_value = last.get(cell["uid"])
            cell["main_metric"] = ({"task": main_task, "epoch": epoch_value[0], "value": epoch_value[1]}
                                   if epoch_value else None)
            cell["evals"] = counts.get(cell["uid"], {})
        elif cell["kind"] == "init":
            epoch_value = init_2afc.get(cell["uid"])
            cell["main_metric"] = ({"task": "nights", "metric": "val_2afc", "epoch": epoch_value[0],
                                    "value": epoch_value[1]} if epoch_value else None)
    data.cells = shown
    open_counts = eval_state_counts_by_job(s.ledger, s.name, s.suite_version)
    data.groups = _status_groups(cells, open_counts)
    for per in open_counts.values():
        for k, n in per.items():
            data.evals[k] = data.evals.get(k, 0) + n
    data.disk_bytes = disk_total(s.ledger, s.name)
    return data


def _status_groups(cells: list[dict[str, Any]], open_counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Cells counted per (kind, init, scale, epochs): states, range of epochs reached, open and failed evals."""
    groups: dict[tuple, dict[str, Any]] = {}
    for c in cells:
        key = (c["kind"], c["init"], c["scale"] or "", c["epochs"])
        g = groups.setdefault(key, {"kind": c["kind"], "init": c["init"], "scale": c["scale"], "epochs": c["epochs"],
                                    "cells": 0, "states": {}, "epoch_min": None, "epoch_max": None,
                                    "evals": {}})
        g["cells"] += 1
        g["states"][c["state"]] = g["states"].get(c["state"], 0) + 1
        g["epoch_min"] = c["epoch"] if g["epoch_min"] is None else min(g["epoch_min"], c["epoch"])
        g["epoch_max"] = c["epoch"] if g["epoch_max"] is None else max(g["epoch_max"], c["epoch"])
        for k, n in open_counts.get(c["uid"], {}).items():
            g["evals"][k] = g["evals"].get(k, 0) + n
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "init", str(k[2]), k[3] or 0,
                                                             *arm_order(k[1] or ""), str(k[1])))]
