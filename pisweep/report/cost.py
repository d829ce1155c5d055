"""The study's price from its attempts: device-hours per run and per arm (wall time x ranks; a rank is a GPU
when the executor gives the job GPUs), and the hours lost to interrupted attempts (work redone after a requeue).

Stage-1 inits are counted with the arm that uses them (perceptual, shuffled). Eval jobs record no attempts, so
evaluation time is not in these figures.
"""
from __future__ import annotations

from typing import Any

from pisweep.report.data import StudyData, init_jobs, job_costs

_FIELDS = ("attempts", "preemptions", "unsaved_restarts", "without_end", "wall_h", "rank_h", "lost_rank_h")


def cost(data: StudyData, now: float | None = None) -> dict[str, Any]:
    ex = data.study.executor
    gpu = {"train": ex.train.gpus_per_node > 0, "init": ex.init.gpus_per_node > 0}
    costs = job_costs(data, now)
    zero = {k: 0 if k in ("attempts", "preemptions", "unsaved_restarts", "without_end") else 0.0 for k in _FIELDS}
    runs = []
    for r in data.runs:
        c = costs.get(r.uid, zero)
        runs.append({"label": r.label, "arm": r.init, "scale": r.scale, "epochs": r.epochs, "seed": r.seed,
                     **{k: c[k] for k in _FIELDS}})
    inits = []
    for uid, info in init_jobs(data).items():
        c = costs.get(uid, zero)
        inits.append({"label": info["label"], "arm": info["method"], **{k: c[k] for k in _FIELDS}})
    arms: dict[str, dict[str, float]] = {}
    for arm in data.arms:
        a = {"runs": 0, "stage2_h": 0.0, "stage1_h": 0.0, "lost_h": 0.0, "attempts": 0, "preemptions": 0,
             "unsaved_restarts": 0}
        for row in runs:
            if row["arm"] == arm:
                a["runs"] += 1
                a["stage2_h"] += row["rank_h"]
                a["lost_h"] += row["lost_rank_h"]
                for k in ("attempts", "preemptions", "unsaved_restarts"):
                    a[k] += int(row[k])
        for row in inits:
            if row["arm"] == arm:
                a["stage1_h"] += row["rank_h"]
                a["lost_h"] += row["lost_rank_h"]
                for k in ("attempts", "preemptions", "unsaved_restarts"):
                    a[k] += int(row[k])
        a["total_h"] = a["stage2_h"] + a["stage1_h"]
        a["per_run_h"] = a["stage2_h"] / a["runs"] if a["runs"] else 0.0
        arms[arm] = a
    total = sum(a["total_h"] for a in arms.values())
    lost = sum(a["lost_h"] for a in arms.values())
    return {"unit": "GPU-hours" if gpu["train"] or gpu["init"] else "CPU rank-hours", "gpu": gpu,
            "total_h": total, "lost_h": lost, "arms": arms, "runs": runs, "inits": inits,
            "attempts_without_end": int(sum(r["without_end"] for r in runs + inits)),
            "note": "wall time x ranks of every training attempt (stage 1 counted with its arm); lost: time after "
                    "the last checkpoint of attempts that ended without saving and were run again; evals excluded"}
