"""`pisweep plan`: what a study would run, with each run's optimizer steps, and its recipes compared."""
from __future__ import annotations

import argparse
import json
from typing import Any

from pisweep.cli.console import out


def cmd_plan(args: argparse.Namespace) -> int:
    from pisweep.commands.studyref import resolve
    from pisweep.study.plan import check_grid_size, make_plan
    from pisweep.study.steps import plan_steps

    ref = resolve(args.study)
    check_grid_size(ref.study, args.max_jobs, args.max_evals)
    if args.compare_recipes:
        return _compare_recipes(args, ref)
    plan = make_plan(ref.study, ref.identity_version)
    data = plan_json(plan, plan_steps(ref.study, plan))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from pisweep.cli.console import plan_table

        out.print(plan_table(data))
        out.print(f"evals: {plan.n_evals} (runs × evaluated epochs × {len(plan.tasks)} tasks); recipe "
                  f"{ref.study.recipe!r} (`pisweep plan {args.study} --compare-recipes` compares)")
    return 0


def _compare_recipes(args: argparse.Namespace, ref) -> int:
    from pisweep.errors import SpecError
    from pisweep.study.load import load_study
    from pisweep.study.recipe import RECIPES
    from pisweep.study.steps import compare_recipes

    if not ref.from_file:
        raise SpecError("--compare-recipes reads a study file (the recipes differ in defaults the file leaves out)")
    data = compare_recipes({name: load_study(ref.spec_path, None, name) for name in RECIPES})
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from pisweep.cli.console import recipe_tables

        for table in recipe_tables(data):
            out.print(table)
    return 0


def plan_json(plan, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    labels = {i.uid: i.label for i in plan.inits}
    return {"study": plan.study, "counts": plan.counts(), "tasks": list(plan.tasks),
            "inits": [{"uid": i.uid, "label": i.label, "method": i.method, "seed": i.seed,
                       "hands_on_epoch_of": labels.get(i.after)} for i in plan.inits],
            "runs": [{"uid": r.uid, "label": r.label, "init": r.init, "init_uid": r.init_uid, "scale": r.scale,
                      "epochs": r.epochs, "seed": r.seed, "eval_epochs": list(r.eval_epochs), **steps[r.uid]}
                     for r in plan.runs]}
