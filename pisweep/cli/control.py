"""The commands that control a study: submit, resume (in the foreground or detached), attach, cancel."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pisweep.cli.console import err, out, say_err, waiting


def cmd_submit(args: argparse.Namespace, resume: bool = False) -> int:
    from pisweep.commands.studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=waiting)
    update = {}
    if getattr(args, "executor", None) and args.executor != ref.study.executor.name:
        update["name"] = args.executor
    if getattr(args, "profile", None):
        update["profile"] = str(Path(args.profile).resolve())
    if update:  # resources and executors never change a result: the recorded spec may differ here
        study = ref.study.model_copy(update={"executor": ref.study.executor.model_copy(update=update)})
        ref.study, ref.study_json = study, study.model_dump(mode="json")
    from pisweep.commands import session as app
    from pisweep.study.plan import check_grid_size

    check_grid_size(ref.study, args.max_jobs, args.max_evals)
    if args.detach and ref.study.executor.name == "local":
        return _detach(ref, args)
    with app.controlling(ref, "resuming" if resume else "submitting"):
        return _submit(app, ref, args)


def _submit(app, ref, args: argparse.Namespace) -> int:
    from pisweep.cli.console import DataProgress, RunReporter
    from pisweep.executors.stopping import StopRequest
    from pisweep.study.plan import make_plan

    with DataProgress(err) as progress:
        prepared = app.check(ref, progress=progress)
    plan = make_plan(ref.study, ref.identity_version)
    if not args.ignore_disk:
        app.check_disk(ref, plan)
    with app.open_session(ref, on_wait=waiting, plan=plan) as s:
        app.record(s, force=getattr(args, "force", False))
        pf = prepared.preflight
        if ref.study.executor.name == "slurm":
            return _submit_slurm(app, s, prepared)
        out.print(f"study [bold]{s.name}[/]: {len(s.plan.inits)} inits, {len(s.plan.runs)} runs, "
                  f"{s.plan.n_evals} evals · eval coverage {len(pf.coverage_present)}/{len(s.plan.tasks)} tasks"
                  + (f" (missing data: {len(pf.coverage_missing)})" if pf.coverage_missing else "")
                  + f" · ledger {s.ledger.path}")
        with RunReporter(err, len(s.plan.inits) + len(s.plan.runs), s.plan.n_evals) as reporter:
            result = app.run_local(s, prepared, reporter, stop=StopRequest(watch_stdout=True))
        if result.nothing_to_do:
            out.print(f"nothing to do: study {s.name} is complete ({len(s.plan.runs)} runs, {s.plan.n_evals} "
                      f"evals recorded). See `pisweep status {s.name}` and `pisweep report {s.name}`.")
            return 0
        o = result.outcome
        if o.interrupted:  # stdout may be closed and the terminal gone: the scheduler's log has this line too
            say_err(o.message)
            return o.exit_code
        out.print(f"finished in {result.wall_s:.0f}s: {o.completed} jobs completed, {o.failed} failed, "
                  f"{o.stopped} stopped, {o.evals} evals run")
        return 1 if o.failed else 0


def _detach(ref, args: argparse.Namespace) -> int:
    from pisweep.executors.controller import describe, live_controller
    from pisweep.executors.local_control import start_detached
    from pisweep.executors.schedlog import scheduler_log_path

    root = Path(ref.study.output_root)
    busy = live_controller(root)
    if busy:  # refused at once, as the scheduler itself would
        from pisweep.errors import StudyBusy

        raise StudyBusy(f"study {ref.study.name!r} is already being run by {describe(busy)}; follow it with "
                        f"`pisweep attach {ref.study.name}`")
    err.print("starting the scheduler in the background (data and preflight first) ...", style="dim")
    d = start_detached([a for a in args.argv if a != "--detach"], root)
    if d.exit_code is not None:  # it ended before it got going: nothing to do, or an error; say what it said
        sys.stdout.write(d.output)
        return d.exit_code
    out.print(f"scheduler of study {ref.study.name} running in the background: pid {d.pid}; log "
              f"{scheduler_log_path(root)} (its console: {d.console}). Follow it with `pisweep attach "
              f"{ref.study.name}`, stop it with `pisweep cancel {ref.study.name}`.")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from pisweep.commands.studyref import resolve
    from pisweep.executors.controller import describe, live_controller
    from pisweep.executors.local_control import follow, last_line
    from pisweep.executors.schedlog import scheduler_log_path

    ref = resolve(args.study, args.ledger, submitted=True)
    root = Path(ref.study.output_root)
    log = scheduler_log_path(root)
    info = live_controller(root)
    if info is None:
        said = last_line(log)
        out.print(f"no scheduler is running for study {ref.study.name}"
                  + (f"; its last line: {said}" if said else "") + f". `pisweep resume {ref.study.name}` continues.")
        return 1
    err.print(f"following the scheduler: {describe(info)}; Ctrl-C leaves it running", style="dim")
    try:
        for line in follow(root, int(info["pid"])):
            out.print(line, highlight=False, markup=False)
    except KeyboardInterrupt:
        say_err(f"detached; the scheduler goes on (pid {info['pid']})")
        return 0
    return 0


def _submit_slurm(app, s, prepared) -> int:
    result = app.submit_slurm(s, prepared)
    if result.nothing_to_do:
        out.print(f"nothing to do: study {s.name} has nothing left to submit (every cell is completed, running, "
                  f"queued or blocked). See `pisweep status {s.name}`.")
        return 0
    sub = result.outcome
    out.print(f"submitted {len(sub.jobs)} SLURM jobs ({', '.join(sorted(set(sub.jobs.values()))) or '-'}) and "
              f"{sub.evals} eval jobs; {len(sub.skipped)} cells already queued or running. "
              f"Evals are submitted by the training jobs as checkpoints appear. Follow with `pisweep status {s.name}`.")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from pisweep.commands import session as app
    from pisweep.commands.studyref import resolve

    ref = resolve(args.study, args.ledger, on_wait=waiting, submitted=True)
    with app.open_session(ref, on_wait=waiting) as s:
        app.reconcile_slurm(s)
        done = app.cancel(s, args.job)
    what = f"job {args.job}" if args.job else f"study {ref.study.name}"
    if not done.anything:
        out.print(f"nothing to cancel: {what} has no live local scheduler or job"
                  + (" and no SLURM job queued or running" if ref.study.executor.name == "slurm" else ""))
        return 1
    loc = done.local
    if loc.scheduler:
        out.print(f"local: stopped the scheduler (pid {loc.scheduler.get('pid')}): {loc.scheduler_said or ''}")
    if loc.jobs:
        out.print(f"local: cancelled {len(loc.jobs)} live job{'s' * (len(loc.jobs) != 1)} (each saved its state): "
                  + ", ".join(f"{label} (pid {pid})" for label, pid in loc.jobs))
    if loc.still_live:
        out.print(f"local: still running after the wait: {', '.join(loc.still_live)}")
    if done.slurm:
        out.print(f"slurm: cancelled {len(done.slurm)} jobs: {', '.join(done.slurm)}")
    out.print(f"`pisweep resume {ref.study.name}` continues from the saved states")
    return 1 if loc.still_live else 0


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_submit(args, resume=True)
