"""The dose section of the report's document: the main benchmark's delta against random at the last epoch, and the
emergence epoch, per share of NIGHTS' train triplets (grid.nights_fraction). Pure."""
from __future__ import annotations

from typing import Any

from pisweep.eval import registry
from pisweep.report.docmodel import Block, Cell, Table, interval, pval, signed, tone_of


def dose_blocks(rep: dict[str, Any], gr: dict[str, Any], figures: bool) -> list[Block]:
    rows = gr.get("dose") or []
    if not rows:
        return []
    meta = registry.get_task(rep["main_task"])
    t = Table(f"{meta.display_name} ({rep['main_metric']}) against the share of NIGHTS' train triplets the init "
              f"trained on: Δ against random at epoch {gr.get('last_epoch')} and the emergence epoch",
              [("init", "left"), ("NIGHTS share", "right"), ("Δ vs random", "right"), ("p", "right"),
               ("emergence epoch", "right"), ("sustained from", "right")])
    for r in rows:
        delta = "—" if r["delta"] is None else f"{signed(r['delta'])} {interval(r['lo'], r['hi'], sign=True)}"
        emerge = r["emergence_epoch"] if r["emergence_epoch"] is not None else (
            "no verdict" if r["decides"] is False else "not yet")
        cross = r["crossover_epoch"] if r["crossover_epoch"] is not None else "not yet"
        t.rows.append([Cell(r["method"]), Cell(f"{r['fraction']:g}"), Cell(delta, tone_of(r)), Cell(pval(r["p"])),
                       Cell(str(emerge)), Cell(str(cross))])
    out = [Block("h3", "How much NIGHTS is needed (the dose axis)"), Block("table", table=t)]
    if figures:
        out.append(Block("figure", figure=f"dose:{gr['key']}"))
    return out
