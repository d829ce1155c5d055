"""What each job of a plan will do, in optimizer steps: a run's steps per epoch, total and warmup steps, and its
learning rate at chosen epochs; a recipe comparison of one study file. Pure."""
from __future__ import annotations

from typing import Any

from pisweep.study.plan import Plan
from pisweep.study.schedule import Schedule, stage2_global_batch, stage2_schedule
from pisweep.study.spec import Study

LR_EPOCHS = (1, 15, 32)  # the epochs a recipe comparison shows the LR at (§1.1: gains emerge after ~15 epochs)


def run_schedule(study: Study, scale: str, epochs: int) -> Schedule:
    return stage2_schedule(study.stage2, study.data.samples(scale), epochs)


def schedule_json(sched: Schedule) -> dict[str, Any]:
    return {"schedule": sched.name, "optimizer_steps_per_epoch": sched.steps_per_epoch,
            "total_steps": sched.total_steps, "warmup_steps": sched.warmup_steps,
            "warmup_epochs": round(sched.warmup_epochs, 3), "warmup_share": round(
                sched.warmup_steps / max(sched.total_steps, 1), 4), "horizon_steps": sched.horizon}


def plan_steps(study: Study, plan: Plan) -> dict[str, dict[str, Any]]:
    """Each run's steps (uid -> schedule_json), computed once per (scale, epochs)."""
    cache: dict[tuple[str, int], dict[str, Any]] = {}
    out = {}
    for r in plan.runs:
        if r.source is not None:  # a NIGHTS fine-tune: its steps depend on the NIGHTS rows read when it runs
            ph = study.posthoc
            out[r.uid] = {"schedule": ph.optim.schedule, "finetune_epochs": ph.epochs,
                          "global_batch": ph.global_batch_size, "warmup_steps": ph.optim.warmup_steps,
                          "source": r.source, "source_epoch": r.source_epoch}
            continue
        key = (r.scale, r.epochs)
        if key not in cache:
            cache[key] = schedule_json(run_schedule(study, r.scale, r.epochs))
        out[r.uid] = cache[key]
    return out


def compare_recipes(studies: dict[str, Study]) -> dict[str, Any]:
    """One study file under each recipe (``studies``: recipe name -> the study loaded with it): the fields where
    they differ, and per scale (at the grid's longest run) the steps, warmup and LR of each."""
    names = list(studies)
    dumps = {n: {sec: getattr(st, sec).model_dump(mode="json") for sec in ("model", "stage1", "stage2", "posthoc")}
             for n, st in studies.items()}
    for n, st in studies.items():
        dumps[n]["data"] = {"subset": st.data.subset, "subset_seed": st.data.subset_seed}
    fields = []
    for path in sorted(set().union(*(_paths(d) for d in dumps.values()))):
        values = {n: _at(dumps[n], path) for n in names}
        if len({repr(v) for v in values.values()}) > 1:
            fields.append({"field": path, **values})
    first = studies[names[0]]
    epochs = max(first.grid.epochs)
    lr_epochs = sorted({e for e in LR_EPOCHS if e <= epochs} | {epochs})
    scales = []
    for scale in first.grid.scale:
        row: dict[str, Any] = {"scale": scale, "samples": first.data.samples(scale), "epochs": epochs}
        for n, st in studies.items():
            sched = run_schedule(st, scale, epochs)
            row[n] = {**schedule_json(sched), "global_batch": stage2_global_batch(st.stage2, st.data.samples(scale)),
                      "lr_after_epoch": {str(e): sched.lr_after_epoch(e) for e in lr_epochs},
                      "lr_peak": sched.lr}
        scales.append(row)
    return {"recipes": names, "fields": fields, "scales": scales, "lr_epochs": lr_epochs}


def _paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _paths(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def _at(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree
