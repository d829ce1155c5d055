"""pisweep's command line. The only place (with console.py) that prints; everything else raises typed errors.

Commands take a study's YAML file or, once submitted, its name; ``--ledger`` overrides where its ledger lies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import PisweepError

def _console(stderr: bool = False) -> Console:
    """A console; when the output is not a terminal (a pipe, a log, CI), tables get room instead of 80 columns."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)


out = _console()
err = _console(stderr=True)


def _waiting(what: str) -> None:
    err.print(f"[yellow]waiting for the ledger lock held by {what}[/]")


def _ledger_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", help="ledger file (default: the spec's ledger, inside its output root)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pisweep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("submit", help="record a study and run (or submit) every job it still needs")
    p.add_argument("study", help="the study's YAML file (or the name of a submitted study)")
    _ledger_arg(p)
    p.add_argument("--executor", choices=["local", "slurm"], help="override the spec's executor")
    p.add_argument("--force", action="store_true",
                   help="accept a spec whose result-affecting fields differ from the recorded one (replaces it; "
                        "jobs whose uid changed are new jobs, old results stay in the ledger)")

    p = sub.add_parser("resume", help="continue an interrupted study without redoing finished work")
    p.add_argument("study")
    _ledger_arg(p)

    p = sub.add_parser("status", help="show the grid: state, epoch, attempts, main metric, evals, disk")
    p.add_argument("study")
    _ledger_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", help="only cells in this state (e.g. failed)")

    p = sub.add_parser("report", help="per-benchmark, per-epoch perceptual vs random, and a plot")
    p.add_argument("study")
    _ledger_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="PNG path (default: <output_root>/reports/<study>-main.png)")

    p = sub.add_parser("plan", help="show what would be run, without running it")
    p.add_argument("study")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", help="print a job's log (by uid prefix or label)")
    p.add_argument("study")
    p.add_argument("job", help="uid (or prefix) or label, e.g. perceptual-tiny-e2-s0")
    _ledger_arg(p)

    p = sub.add_parser("data", help="data utilities")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("synth", help="write small synthetic data in the real formats")
    q.add_argument("out", help="output folder")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--nights-triplets", type=int)
    q.add_argument("--train-samples", type=int, help="samples of the single scale 'tiny'")

    p = sub.add_parser("eval", help="run the zero-shot suite on any open_clip checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--model", required=True, help="open_clip model name")
    p.add_argument("--model-config", help="inline model config JSON file (for models open_clip does not know)")
    p.add_argument("--eval-root", required=True)
    p.add_argument("--tasks", nargs="*", help="task keys or folder names under the eval root (default: the suite)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="folder for per-task JSON results")
    p.add_argument("--json", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args) or 0
    except PisweepError as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted", style="yellow")
        return 130


# -- commands -------------------------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import make_plan
    from .studyref import resolve

    ref = resolve(args.study)
    plan = make_plan(ref.study)
    data = plan_json(plan)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from .console import plan_table

        out.print(plan_table(data))
        out.print(f"evals: {len(plan.evals)} (runs × evaluated epochs × {len(plan.tasks)} tasks)")
    return 0


def plan_json(plan) -> dict[str, Any]:
    return {"study": plan.study, "counts": plan.counts(), "tasks": list(plan.tasks),
            "inits": [{"uid": i.uid, "label": i.label, "method": i.method, "seed": i.seed} for i in plan.inits],
            "runs": [{"uid": r.uid, "label": r.label, "init": r.init, "init_uid": r.init_uid, "scale": r.scale,
                      "epochs": r.epochs, "seed": r.seed, "eval_epochs": list(r.eval_epochs)} for r in plan.runs]}


def cmd_submit(args: argparse.Namespace, resume: bool = False) -> int:
    from .studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=_waiting)
    if getattr(args, "executor", None) and args.executor != ref.study.executor.name:
        study = ref.study.model_copy(update={"executor": ref.study.executor.model_copy(update={"name": args.executor})})
        ref.study, ref.study_json = study, study.model_dump(mode="json")
    if ref.study.executor.name == "slurm":
        from .errors import ExecutorError

        raise ExecutorError("the slurm executor is not available in this version yet; use executor: local")
    from . import app
    from .console import DataProgress, RunReporter

    s = app.open_session(ref, on_wait=_waiting)
    try:
        with DataProgress(err) as progress:
            prepared = app.prepare(s, progress=progress, force=getattr(args, "force", False))
        pf = prepared.preflight
        out.print(f"study [bold]{s.name}[/]: {len(s.plan.inits)} inits, {len(s.plan.runs)} runs, "
                  f"{len(s.plan.evals)} evals · eval coverage {len(pf.coverage_present)}/{len(s.plan.tasks)} tasks"
                  + (f" (missing data: {len(pf.coverage_missing)})" if pf.coverage_missing else "")
                  + f" · ledger {s.ledger.path}")
        with RunReporter(err, len(s.plan.inits) + len(s.plan.runs), len(s.plan.evals)) as reporter:
            result = app.run_local(s, prepared, reporter, on_wait=_waiting)
        if result.nothing_to_do:
            out.print(f"nothing to do: study {s.name} is complete ({len(s.plan.runs)} runs, {len(s.plan.evals)} "
                      f"evals recorded). See `pisweep status {s.name}` and `pisweep report {s.name}`.")
            return 0
        o = result.outcome
        line = (f"{'interrupted' if o.interrupted else 'finished'} in {result.wall_s:.0f}s: {o.completed} jobs "
                f"completed, {o.failed} failed, {o.stopped} stopped, {o.evals} evals run")
        out.print(line)
        if o.interrupted:
            out.print(f"state saved; continue with `pisweep resume {s.name}`")
            return 130
        return 1 if o.failed else 0
    finally:
        s.close()


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_submit(args, resume=True)


def cmd_status(args: argparse.Namespace) -> int:
    from . import app
    from .studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=_waiting)
    s = app.open_session(ref, on_wait=_waiting)
    try:
        data = app.status(s).to_json()
    finally:
        s.close()
    if args.state:
        data["cells"] = [c for c in data["cells"] if c["state"] == args.state]
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from .console import status_table

    out.print(status_table(data))
    summary = ", ".join(f"{n} {k}" for k, n in sorted(data["summary"].items()))
    out.print(f"{summary}  ·  main metric: {ref.study.eval.main_task}  ·  ledger {data['ledger']}")
    if data["coverage"]["tasks_missing"]:
        out.print(f"[dim]tasks without data ({len(data['coverage']['tasks_missing'])}): "
                  + ", ".join(sorted(data["coverage"]["tasks_missing"])) + "[/]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import app
    from .ledger.queries import main_metric_curves
    from .report.curves import build_curves
    from .report.plot import plot_curves
    from .studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=_waiting)
    s = app.open_session(ref, on_wait=_waiting)
    try:
        app.reconcile(s)
        from .eval_job import NIGHTS_VERSION

        curves = build_curves(main_metric_curves(s.ledger, s.name, (s.suite_version, NIGHTS_VERSION)))
    finally:
        s.close()
    main_task = ref.study.eval.main_task
    plot_path = Path(args.plot) if args.plot else s.layout.reports / f"{s.name}-main.png"
    main_curves = [c for c in curves if c.task == main_task] or curves
    plotted = plot_curves(main_curves, plot_path, f"{s.name}: {main_task}") if curves else None
    data = {"study": s.name, "main_task": main_task, "plot": str(plotted) if plotted else None,
            "tasks_evaluated": sorted({c.task for c in curves}), "tasks_planned": len(s.plan.tasks),
            "curves": [{"task": c.task, "metric": c.metric, "scale": c.scale, "epochs": c.epochs, "arms": c.arms(),
                        "rows": c.rows()} for c in curves]}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from .console import report_tables

    if not curves:
        out.print(f"no evaluation results yet for study {s.name}")
        return 0
    for table in report_tables(data["curves"]):
        out.print(table)
    out.print(f"coverage: {len(data['tasks_evaluated'])}/{len(s.plan.tasks)} tasks have results · plot: {plotted}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from . import app
    from .errors import StudyNotFound
    from .studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=_waiting)
    s = app.open_session(ref, on_wait=_waiting)
    try:
        app.reconcile(s)
        job = app.find_job(s, args.job)
    finally:
        s.close()
    if job is None:
        raise StudyNotFound(f"study {ref.study.name!r} has no job {args.job!r} (give a uid prefix or a label)")
    log = job.get("log_path")
    if not log or not Path(log).exists():
        raise StudyNotFound(f"job {job['label']} has no log yet")
    err.print(f"== {log}", style="dim")
    sys.stdout.write(Path(log).read_text(errors="replace"))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .console import DataProgress
    from .data.synth import SynthConfig, synthesize

    kw: dict[str, Any] = {"seed": args.seed}
    if args.nights_triplets:
        kw["nights_triplets"] = args.nights_triplets
    if args.train_samples:
        kw["train_scales"] = {"tiny": args.train_samples}
    with DataProgress(err) as progress:
        lay = synthesize(Path(args.out), SynthConfig(**kw), progress)
    out.print(f"synthetic data in {lay.root}: nights {lay.nights_root}, eval {lay.eval_root}, "
              + ", ".join(f"train/{k}: {v.num_samples} samples in {v.num_shards} shards" for k, v in lay.train.items()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.registry import SUITE_KEYS
    from .eval.runner import evaluate_checkpoint

    config = json.loads(Path(args.model_config).read_text()) if args.model_config else None
    tasks = args.tasks or list(SUITE_KEYS)
    results = evaluate_checkpoint(Path(args.checkpoint), args.model, config, Path(args.eval_root), tasks,
                                  out_dir=Path(args.out) if args.out else None, batch_size=args.batch_size)
    rows = [{"task": r.task, "status": r.status, "main_metric": r.main_metric,
             "value": r.metrics.get(r.main_metric) if r.metrics else None, "reason": r.reason,
             "metrics": r.metrics} for r in results]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.table import Table

    t = Table(title=f"{args.checkpoint} · {sum(r['status'] == 'done' for r in rows)}/{len(rows)} tasks evaluated")
    for col in ("task", "status", "main metric", "value", "note"):
        t.add_column(col)
    for r in rows:
        v = r["value"]
        t.add_row(r["task"], r["status"], r["main_metric"] or "", "—" if v is None else f"{v:.4f}", r["reason"] or "")
    out.print(t)
    return 0


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "resume": cmd_resume, "status": cmd_status,
            "report": cmd_report, "logs": cmd_logs, "data": cmd_data, "eval": cmd_eval}

if __name__ == "__main__":
    sys.exit(main())
