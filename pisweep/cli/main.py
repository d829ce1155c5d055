"""pisweep's command line. The only place (with cli_control.py and console.py) that prints; everything else raises
typed errors. Here: the parser, the entry point and the commands that read; cli_control.py: those that control a
study (submit, resume, attach, cancel).

Commands take a study's YAML file or, once submitted, its name; ``--ledger`` overrides where its ledger lies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pisweep.cli.console import err, out, say_err, waiting
from pisweep.cli.control import cmd_attach, cmd_cancel, cmd_resume, cmd_submit
from pisweep.cli.plan import cmd_plan
from pisweep.errors import PisweepError, ReportWriteError
from pisweep.states import JOB_STATES


def _ledger_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", help="ledger file (default: the spec's ledger, inside its output root)")


def _submit_args(p: argparse.ArgumentParser) -> None:
    _limit_args(p)
    p.add_argument("--detach", action="store_true",
                   help="local: run the scheduler in the background (its log under the output root); follow it with "
                        "`pisweep attach STUDY`, see it in `pisweep status`, stop it with `pisweep cancel`")
    p.add_argument("--ignore-disk", action="store_true",
                   help="submit even if the output root has less free space than the plan's checkpoints need")


def _limit_args(p: argparse.ArgumentParser) -> None:
    from pisweep.study.plan import MAX_EVALS, MAX_JOBS

    p.add_argument("--max-jobs", type=int, default=MAX_JOBS, metavar="N",
                   help=f"refuse a grid of more jobs than this before expanding it (default {MAX_JOBS:,})")
    p.add_argument("--max-evals", type=int, default=MAX_EVALS, metavar="N",
                   help=f"refuse a grid of more evals than this before expanding it (default {MAX_EVALS:,})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pisweep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("submit", help="record a study and run (or submit) every job it still needs")
    p.add_argument("study", help="the study's YAML file (or the name of a submitted study)")
    _ledger_arg(p)
    p.add_argument("--executor", choices=["local", "slurm"], help="override the spec's executor")
    p.add_argument("--profile", help="slurm: a site profile (YAML in slurm_templates/), overriding the spec's")
    p.add_argument("--force", action="store_true",
                   help="accept a spec whose result-affecting fields differ from the recorded one (replaces it; "
                        "jobs whose uid changed are new jobs, old results stay in the ledger)")
    _submit_args(p)

    p = sub.add_parser("resume", help="continue an interrupted study without redoing finished work "
                                      "(resubmits only preempted, failed and missing cells)")
    p.add_argument("study")
    _ledger_arg(p)
    _submit_args(p)

    p = sub.add_parser("attach", help="follow a study's running local scheduler (its log) until it ends; Ctrl-C "
                                      "leaves it running")
    p.add_argument("study")
    _ledger_arg(p)

    p = sub.add_parser("cancel", help="cancel a study's jobs, or one job (uid prefix or label)")
    p.add_argument("study")
    p.add_argument("job", nargs="?")
    _ledger_arg(p)

    p = sub.add_parser("status", help="show the grid: state, epoch, attempts, main metric, evals, disk")
    p.add_argument("study")
    _ledger_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", choices=JOB_STATES, metavar="STATE",
                   help="only cells in this state: " + ", ".join(JOB_STATES))
    p.add_argument("--limit", type=int, default=40,
                   help="cells listed one by one (default 40; 0: all); beyond it a summary per group is shown and "
                        "the most relevant cells (failed, blocked, running first)")

    p = sub.add_parser("report", help="perceptual vs random per benchmark and epoch: intervals, emergence epoch, "
                                      "wins with a sign test, coverage and cost (works while the study runs)")
    p.add_argument("study")
    _ledger_arg(p)
    p.add_argument("--json", action="store_true",
                   help="print the whole report as JSON (every benchmark at every epoch) instead of tables")
    p.add_argument("--html", metavar="FILE", help="also write one self-contained HTML file with every table and plot")
    p.add_argument("--md", metavar="FILE", help="also write the tables as Markdown")
    p.add_argument("--csv", metavar="FILE", help="also write every metric row (run, epoch, benchmark, metric, value)")
    p.add_argument("--plot", help="write a PNG of the main benchmark's delta per epoch and its arms here (with "
                                  "--json: by default <output_root>/reports/<study>-main.png)")
    p.add_argument("--main-task", help="main benchmark (default: the study's eval.main_task, ImageNet-1K)")
    p.add_argument("--resamples", type=int, default=2000, help="draws of each delta curve for the emergence and "
                                                               "crossover epochs' intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="their generator seed (default 0)")
    p.add_argument("--assume-no-seed-noise", action="store_true",
                   help="with one seed per arm, draw verdicts (wins, emergence) from test-set noise alone; the report "
                        "labels every such interval (by default one seed gives no verdict)")
    p.add_argument("--seed-level", action="store_true",
                   help="skip the per-example files: intervals from the ledger's per-seed values only (faster; "
                        "the test set's noise is then not in them)")

    p = sub.add_parser("plan", help="show what would be run, without running it")
    p.add_argument("study")
    p.add_argument("--json", action="store_true")
    p.add_argument("--compare-recipes", action="store_true",
                   help="show the study under each recipe side by side: the fields that differ, and per scale the "
                        "optimizer steps, warmup and learning rate (a study file only)")
    _limit_args(p)

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
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    finally:
        from pisweep.executors.stopping import stdout_closed

        if stdout_closed():  # the reader left: what is still buffered must not turn the exit status into 120
            _quiet_stdout()


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.cmd](args) or 0
    except PisweepError as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        return e.exit_code
    except KeyboardInterrupt:
        say_err("interrupted")
        return 130
    except BrokenPipeError:  # `pisweep ... | head`: the reader has what it wanted; no traceback
        _quiet_stdout()
        return 141


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not report the broken pipe again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- commands -------------------------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from pisweep.commands import session as app
    from pisweep.commands.status import status
    from pisweep.commands.studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=waiting, submitted=True)
    with app.open_session(ref, on_wait=waiting, read=True) as s:
        limit = None if args.limit == 0 else args.limit
        data = status(s, state=args.state, limit=limit).to_json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from pisweep.cli.console import fmt_bytes, status_table
    from pisweep.report.render_terminal import status_groups_table

    if data["cells_hidden"]:
        out.print(status_groups_table(data))
    if data["cells"]:
        out.print(status_table(data))
    if data["cells_hidden"]:
        out.print(f"[dim]{len(data['cells'])} of {data['cells_matching']} cells shown (failed, blocked, running "
                  f"first); --limit 0 lists all, --state STATE only one state[/]")
    elif args.state and not data["cells"]:
        out.print(f"no cell is {args.state}")
    ctl = data["controller"]
    if ctl:
        from pisweep.executors.controller import describe

        out.print(f"scheduler: {describe(ctl)}; follow it with `pisweep attach {ref.study.name}`")
    elif ref.study.executor.name == "local" and any(c["state"] not in ("completed",) for c in data["cells"]):
        out.print(f"[dim]scheduler: none running (`pisweep resume {ref.study.name}` continues)[/]")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(data["summary"].items()))
    evals = ", ".join(f"{n} {k}" for k, n in sorted(data["evals"].items()) if k != "missing_data")
    out.print(f"{summary}  ·  evals {evals or 'none open or failed'}  ·  disk {fmt_bytes(data['disk_bytes'])}  ·  "
              f"main metric: {ref.study.eval.main_task} (inits: NIGHTS val 2AFC of the epoch handed on)  ·  "
              f"ledger {data['ledger']}")
    if data["coverage"]["tasks_missing"]:
        out.print(f"[dim]tasks without data ({len(data['coverage']['tasks_missing'])}): "
                  + ", ".join(sorted(data["coverage"]["tasks_missing"])) + "[/]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pisweep.commands import session as app
    from pisweep.commands.studyref import resolve
    from pisweep.report.analysis import Options, check_options
    from pisweep.report.build import build_report
    from pisweep.report.data import write_metric_rows
    from pisweep.report.export import to_json, to_markdown, write_text

    ref = resolve(args.study, args.ledger, on_wait=waiting, submitted=True)
    full = bool(args.json or args.html or args.md)
    with app.open_session(ref, on_wait=waiting, read=True) as s:
        opts = check_options(Options(main_task=args.main_task or ref.study.eval.main_task, full=full,
                                     resamples=args.resamples, seed=args.seed,
                                     per_example=not args.seed_level,
                                     assume_no_seed_noise=args.assume_no_seed_noise), s.plan.tasks)
        app.reconcile(s)
        rep = build_report(s.ledger, ref.study, s.plan, s.suite_version, opts)
        rows = None
        if args.csv:
            from pisweep.report.data import load_study

            rows = write_metric_rows(load_study(s.ledger, ref.study, s.plan, s.suite_version, opts.main_task),
                                     Path(args.csv))
    from pisweep.report import figures

    # The PNG of the main benchmark: asked for, or with --json (scripts get its path); the terminal report
    # stays fast on large studies without it.
    has_main = any(g.get("main") and g["main"]["rows"] for g in rep["groups"])
    rep["plot"] = None
    if has_main and (args.plot or args.json):
        plot_path = Path(args.plot) if args.plot else s.layout.reports / f"{s.name}-main.png"
        try:
            rep["plot"] = str(write_bytes(plot_path, figures.main_figure(rep)))
        except OSError as e:
            if args.plot:
                raise ReportWriteError(f"--plot {plot_path}: cannot write ({e.strerror})") from None
            err.print(f"no plot: cannot write {plot_path} ({e.strerror}); give --plot FILE", style="yellow")
    written = []
    if args.html:
        from pisweep.report.html import to_html

        written.append(f"html {write_text(Path(args.html), to_html(rep))}")
    if args.md:
        written.append(f"markdown {write_text(Path(args.md), to_markdown(rep))}")
    if args.csv:
        written.append(f"csv {args.csv} ({rows} metric rows)")
    if args.json:
        print(to_json(rep))
        for line in written:
            err.print(f"wrote {line}")
        return 0
    from pisweep.report.render_terminal import report_renderables

    for item in report_renderables(rep):
        out.print(item)
    plot = rep["plot"] or ("--plot FILE for a PNG, --html FILE for every plot" if has_main
                           else "(no result of the main benchmark yet)")
    out.print(f"plot: {plot}" + "".join(f" · wrote {line}" for line in written))
    return 0


def write_bytes(path: Path, data: bytes) -> Path:
    from pisweep.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def cmd_logs(args: argparse.Namespace) -> int:
    from pisweep.commands import session as app
    from pisweep.commands.studyref import resolve
    from pisweep.errors import StudyNotFound

    ref = resolve(args.study, args.ledger, on_wait=waiting, submitted=True)
    with app.open_session(ref, on_wait=waiting, read=True) as s:  # reads only: never waits for a scheduler
        job = app.find_job(s, args.job)
    if job is None:
        raise StudyNotFound(f"study {ref.study.name!r} has no job {args.job!r} (give a uid prefix or a label)")
    log = job.get("log_path")
    if not log or not Path(log).exists():
        raise StudyNotFound(f"job {job['label']} has no log yet")
    err.print(f"== {log}", style="dim")
    sys.stdout.write(Path(log).read_text(errors="replace"))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from pisweep.cli.console import DataProgress
    from pisweep.data.synth import SynthConfig, synthesize

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
    from pisweep.errors import SpecError
    from pisweep.eval.evaluator import evaluate_checkpoint
    from pisweep.eval.registry import SUITE_KEYS
    from pisweep.study.names import is_name

    config = json.loads(Path(args.model_config).read_text()) if args.model_config else None
    tasks = args.tasks or list(SUITE_KEYS)
    bad = [t for t in tasks if not is_name(t)]
    if bad:
        raise SpecError(f"--tasks: {bad} are not task names (a task key, or a folder name under --eval-root)")
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


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "resume": cmd_resume, "attach": cmd_attach, "cancel": cmd_cancel,
            "status": cmd_status,
            "report": cmd_report, "logs": cmd_logs, "data": cmd_data, "eval": cmd_eval}

if __name__ == "__main__":
    sys.exit(main())
