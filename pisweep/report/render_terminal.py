"""The report (and status's per-group summary) as rich renderables for the terminal. Printing is the CLI's."""
from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from pisweep.report.doc import BAD, DIM, GOOD, WARN, Block, document
from pisweep.states import PROBLEM_STATES

STYLE = {GOOD: "green", BAD: "red", DIM: "dim", WARN: "yellow", "": ""}


def report_renderables(rep: dict[str, Any]) -> list[RenderableType]:
    return [_render(b) for b in document(rep, figures=False)]


def _render(b: Block) -> RenderableType:
    if b.kind == "h1":
        return Text(b.text, style="bold")
    if b.kind == "h2":
        return Rule(Text(b.text, style="bold"), align="left")
    if b.kind == "h3":
        return Text(b.text, style="bold")
    if b.kind == "table" and b.table is not None:
        t = Table(title=b.table.title, title_justify="left")
        for name, align in b.table.columns:
            t.add_column(name, justify=align, no_wrap=align == "right")
        for row in b.table.rows:
            t.add_row(*[Text(c.text, style=STYLE.get(c.tone, "")) for c in row])
        return t
    return Text(b.text, style=STYLE.get(b.tone, ""))


def status_groups_table(data: dict[str, Any]) -> Table:
    """Cells counted per (kind, init, scale, epochs): shown by `pisweep status` when there are many cells."""
    t = Table(title=f"study {data['study']} · {data['cells_total']} cells by group", title_justify="left")
    for col, align in (("kind", "left"), ("arm", "left"), ("scale", "left"), ("epochs", "right"),
                       ("cells", "right"), ("states", "left"), ("epoch reached", "right"), ("evals open", "right"),
                       ("evals failed", "right")):
        t.add_column(col, justify=align, no_wrap=True)
    for g in data["groups"]:
        states = ", ".join(f"{n} {k}" for k, n in sorted(g["states"].items(), key=lambda kv: -kv[1]))
        style = "red" if any(k in g["states"] for k in PROBLEM_STATES) else ""
        ev = g["evals"]
        t.add_row(g["kind"], g["init"] or "", g["scale"] or "", str(g["epochs"] or ""), str(g["cells"]),
                  Text(states, style=style),
                  f"{g['epoch_min']}–{g['epoch_max']}" if g["epoch_min"] != g["epoch_max"] else str(g["epoch_min"]),
                  str(ev.get("queued", 0) + ev.get("running", 0)), Text(str(ev.get("failed", 0)),
                                                                       style="red" if ev.get("failed") else ""))
    return t
