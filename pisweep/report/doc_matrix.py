"""The arm matrix of the report's document: every arm against random on every benchmark at the group's last epoch
(posthoc at its source epoch), one row per benchmark, one column per arm: the delta, marked by its verdict in the
family "every arm against random". Pure."""
from __future__ import annotations

from typing import Any

from pisweep.report.docmodel import BAD, DIM, GOOD, PLAIN, Block, Cell, Table, arm_names, signed

MARK = {"win": " ▲", "loss": " ▼"}


def matrix(gr: dict[str, Any]) -> dict[str, Any] | None:
    """{"arms", "tasks": [(task, name)] with a result, "cells": {(arm, task): {"delta", "outcome", "epoch"}},
    "without": the tasks no arm has a result of} of the group's tables against random; None with fewer than two
    arms against random (the last-epoch table is the matrix then)."""
    tables = {arm_names(k)[0]: t for k, t in (gr.get("last") or {}).items() if arm_names(k)[1] == "random"}
    if len(tables) < 2:
        return None
    tasks: dict[str, str] = {}
    cells = {}
    for arm, t in tables.items():
        for r in t["tasks"]:
            tasks.setdefault(r["task"], r["name"])
            iv = r["interval"]
            if iv:
                cells[(arm, r["task"])] = {"delta": iv["delta"], "outcome": r.get("outcome"), "epoch": t["epoch"]}
    shown = {task for _, task in cells}
    return {"arms": list(tables), "tasks": [(k, v) for k, v in tasks.items() if k in shown], "cells": cells,
            "without": [k for k in tasks if k not in shown]}


def matrix_blocks(rep: dict[str, Any], gr: dict[str, Any], figures: bool) -> list[Block]:
    m = matrix(gr)
    if m is None:
        return []
    epochs = sorted({c["epoch"] for c in m["cells"].values()})
    t = Table(f"every arm against random at epoch {', '.join(map(str, epochs))}: Δ of each benchmark's main metric "
              f"(▲ win, ▼ loss after Holm over the family 'every arm against random')",
              [("benchmark", "left")] + [(arm, "right") for arm in m["arms"]])
    for task, name in m["tasks"]:
        row = [Cell(name)]
        for arm in m["arms"]:
            c = m["cells"].get((arm, task))
            if c is None:  # (this arm has no result here yet)
                row.append(Cell("—", DIM))
                continue
            o = c["outcome"]
            row.append(Cell(signed(c["delta"], 3) + MARK.get(o, ""), GOOD if o == "win" else BAD if o == "loss"
                            else PLAIN))
        t.rows.append(row)
    out = [Block("h3", "Arm × benchmark"), Block("table", table=t)]
    if m["without"]:
        out.append(Block("p", f"no result for any arm ({len(m['without'])}): {', '.join(m['without'])} "
                              "(reasons under Coverage)", DIM))
    if figures:
        out.append(Block("figure", figure=f"matrix:{gr['key']}"))
    return out
