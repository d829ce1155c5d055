"""Rendering for the terminal (rich). Only the CLI and this module print."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

STATE_STYLE = {"completed": "green", "running": "cyan", "queued": "blue", "planned": "dim", "failed": "red",
               "blocked": "magenta", "preempted": "yellow", "stopped": "yellow", "timeout": "yellow", "cancelled": "dim red",
               "vanished": "red"}


def _console(stderr: bool = False) -> Console:
    """A console; when the output is not a terminal (a pipe, a log, CI), tables get room instead of 80 columns."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)


out = _console()
err = _console(stderr=True)


def waiting(what: str) -> None:
    err.print(f"[yellow]waiting for the ledger lock held by {what}[/]")


def say_err(text: str) -> None:
    """One line to stderr if it is still open (after SIGHUP a write raises EIO)."""
    try:
        err.print(text, style="yellow", highlight=False, markup=False)
    except (OSError, ValueError):
        pass


def fmt_metric(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class DataProgress:
    """A progress callback for synthetic-data generation."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "DataProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"data: {stage}", total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


class RunReporter:
    """What the local executor shows while it runs: one line per finished job and a live summary."""

    def __init__(self, console: Console, total_jobs: int, total_evals: int):
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.jobs = self.progress.add_task("jobs", total=max(1, total_jobs))
        self.evals = self.progress.add_task("evals (epoch × task)", total=max(1, total_evals))
        self.running = self.progress.add_task("running: —", total=None, start=False)
        self.t0 = time.time()

    def __enter__(self) -> "RunReporter":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.progress.__exit__(*exc)
        except (OSError, ValueError):  # the terminal hung up (SIGHUP) or stderr was closed
            pass

    def _line(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False)

    def started(self, kind: str, label: str, log: Path) -> None:
        self._line(f"[cyan]start    [/] {kind:5s} {label}  [dim]{log}[/]")

    def finished(self, kind: str, label: str, outcome: str, detail: str | None) -> None:
        style = {"completed": "green", "failed": "red", "stopped": "yellow"}.get(outcome, "white")
        self._line(f"[{style}]{outcome:9s}[/] {kind:5s} {label}" + (f"  [dim]{detail}[/]" if detail else ""))

    def tick(self, state: dict[str, Any]) -> None:
        done_jobs = state.get("jobs_done")
        if done_jobs is not None:
            self.progress.update(self.jobs, completed=done_jobs)
        if state.get("evals_done") is not None:
            self.progress.update(self.evals, completed=state["evals_done"])
        running = state.get("running") or []
        self.progress.update(self.running, description="running: " + (", ".join(running) or "—"))


def status_table(data: dict[str, Any]) -> Table:
    cov = data["coverage"]
    table = Table(title=f"study {data['study']}  ·  eval coverage {cov['present']}/{cov['total']} tasks",
                  title_justify="left")
    table.add_column("cell", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("att", justify="right", no_wrap=True)
    table.add_column("main metric", no_wrap=True)
    table.add_column("evals", justify="right", no_wrap=True)
    table.add_column("disk", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for c in data["cells"]:
        style = STATE_STYLE.get(c["state"], "white")
        mm = c.get("main_metric")
        metric = f"{fmt_metric(mm['value'])} @{mm['epoch']}" if mm and mm.get("value") is not None else "—"
        evals = c.get("evals")
        evals_txt = f"{evals.get('done', 0) + evals.get('missing_data', 0)}/{c['evals_planned']}" if evals is not None else ""
        if evals and evals.get("failed"):
            evals_txt += f" [red]({evals['failed']} failed)[/]"
        note = ""
        if c["state"] in ("failed", "blocked") and c.get("reason"):
            note = c["reason"] + (f"  (log: {c['log']})" if c.get("log") else "")
        elif c.get("waits_for") and c["kind"] == "posthoc":
            note = f"waits for {c['waits_for']}: it fine-tunes those weights"
        elif c.get("waits_for") and c.get("init") == "norm_matched":
            note = f"waits for {c['waits_for']}: it takes that init's norms"
        elif c.get("waits_for"):
            note = f"waits for {c['waits_for']}: it hands on the epoch that init hands on (stage1.handoff best_val)"
        elif c["kind"] == "posthoc":
            note = f"fine-tunes {c['source']} at epoch {c['source_epoch']}"
        live = c.get("live") or {}
        if live:
            note = " ".join(f"{'training' if role == 'job' else 'evals'}: pid {pid}" for role, pid in live.items()) \
                + (f"  {note}" if note else "")
        table.add_row(c["label"], f"[{style}]{c['state']}[/]", f"{c['epoch']}/{c['epochs']}", str(c["attempts"]),
                      metric, evals_txt, fmt_bytes(c["disk_bytes"]) if c["disk_bytes"] else "", note)
    return table

def plan_table(plan_json: dict[str, Any]) -> Table:
    t = Table(title=f"plan for study {plan_json['study']}: {plan_json['counts']}", title_justify="left")
    for col in ("kind", "uid", "label", "depends on", "steps/epoch", "steps", "warmup", "evaluated epochs"):
        t.add_column(col, no_wrap=True, justify="right" if col.startswith(("steps", "warmup")) else "left")
    for i in plan_json["inits"]:
        what = "norms" if i["method"] == "norm_matched" else "epoch"
        after = f"{i['hands_on_epoch_of']}'s {what}" if i.get("hands_on_epoch_of") else ""
        t.add_row("init", i["uid"], i["label"], after, "", "", "", "")
    for r in plan_json["runs"]:
        ep = r["eval_epochs"]
        eps = ",".join(map(str, ep)) if len(ep) <= 8 else f"{ep[0]},{ep[1]},…,{ep[-1]} ({len(ep)})"
        if r.get("source"):  # a NIGHTS fine-tune of its source's weights at one epoch
            t.add_row("posthoc", r["uid"], r["label"], f"{r['source']} @{r['source_epoch']}",
                      f"(NIGHTS, batch {r['global_batch']})", f"{r['finetune_epochs']} ep", _plain(r["warmup_steps"]),
                      eps)
            continue
        warm = f"{r['warmup_steps']:,} ({r['warmup_epochs']:.2g} ep)"
        t.add_row("train", r["uid"], r["label"], r["init_uid"] or "", f"{r['optimizer_steps_per_epoch']:,}",
                  f"{r['total_steps']:,}", warm, eps)
    return t


def recipe_tables(data: dict[str, Any]) -> list[Table]:
    """`pisweep plan --compare-recipes`: the fields that differ, then each scale's steps and learning rates."""
    names = data["recipes"]
    fields = Table(title="fields where the recipes differ (the study file's own settings apply to both)",
                   title_justify="left")
    fields.add_column("field", no_wrap=True)
    for n in names:
        fields.add_column(n, no_wrap=True)
    for row in data["fields"]:
        fields.add_row(row["field"], *(_plain(row[n]) for n in names))
    steps = Table(title="per scale, at the grid's longest run: optimizer steps, warmup, and the LR at the end of "
                        "epoch N as a share of the peak (--json: the values)", title_justify="left")
    for col in ("scale", "recipe", "batch", "steps/ep", "steps", "warmup", "warmup ep", "warmup %",
                *(f"LR ep {e}" for e in data["lr_epochs"])):
        steps.add_column(col, no_wrap=True, justify="left" if col in ("scale", "recipe") else "right")
    for row in data["scales"]:
        for i, n in enumerate(names):
            r = row[n]
            lrs = [f"{r['lr_after_epoch'][str(e)] / r['lr_peak']:.1%}" for e in data["lr_epochs"]]
            steps.add_row(f"{row['scale']} ({row['samples']:,} × {row['epochs']})" if i == 0 else "", n,
                          str(r["global_batch"]), f"{r['optimizer_steps_per_epoch']:,}", f"{r['total_steps']:,}",
                          f"{r['warmup_steps']:,}", f"{r['warmup_epochs']:.2f}", f"{r['warmup_share']:.1%}", *lrs)
    return [fields, steps]


def _plain(value: Any) -> str:
    return "—" if value is None else str(value)
