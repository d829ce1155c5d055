"""The NIGHTS section of the report's document: human alignment (2AFC) per arm through stage 2, epoch 0 being the
weights each run starts from, with the same intervals as every benchmark. Pure."""
from __future__ import annotations

from typing import Any

from pisweep.report.docmodel import DIM, Block, Cell, Table, arm_cells, arm_columns, noise_note


def nights_blocks(rep: dict[str, Any], gr: dict[str, Any], figures: bool) -> list[Block]:
    """The table (every epoch in full mode; the start and the last epoch in the terminal) and its figure slot."""
    series = gr.get("nights") or {}
    if not series:
        return []
    cmps = rep["comparisons"]
    arms = [a for a in gr["arms"] if any(r["arms"][a]["n"] for s in series.values() for r in s["rows"])]
    shown = sorted({r["epoch"] for s in series.values() for r in s["rows"]})  # all in full mode, else start and last
    cols = [("epoch", "right"), ("set", "left")] + arm_columns(arms, cmps)
    note = noise_note([d for s in series.values() for r in s["rows"] for d in r["deltas"].values()],
                      rep["settings"]["assume_no_seed_noise"])
    t = Table(f"NIGHTS 2AFC through stage 2: mean over seeds [{int(rep['settings']['level'] * 100)}% interval]; "
              f"epoch 0 = the weights each run starts from" + (f" · {note}" if note else ""), cols)
    for e in shown:
        for s in series.values():
            row = next((r for r in s["rows"] if r["epoch"] == e), None)
            if row is None:
                continue
            t.rows.append([Cell(str(e)), Cell(s["name"])] + arm_cells(row, arms, cmps))
    out = [Block("h3", "Human alignment: NIGHTS 2AFC per epoch"), Block("table", table=t)]
    if not rep["settings"]["full"]:
        out.append(Block("p", "every epoch in the HTML, Markdown and --json reports", DIM))
    pending = sorted({e for s in series.values() for e in s["pending_epochs"]})
    if 0 in pending:
        out.append(Block("p", "epoch 0 (the starting weights) not evaluated for every run: runs trained before "
                              "pisweep saved them have none", DIM))
    if figures:
        out.append(Block("figure", figure=f"nights:{gr['key']}"))
    return out
