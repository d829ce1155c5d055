"""The answer first: one sentence per (data scale, epoch budget) group and comparison, from the report's numbers.

    ImageNet 1k acc1: perceptual − random = +1.2 pts [+0.4, +2.0] at epoch 32 [scale full, 32 epochs]; sustained
    from epoch 14 [11, 18]; interval above 0 from epoch 16 [12, 20] (3 seeds).

"Sustained from" is the crossover epoch (the mean delta stays above 0 from there on; the closer analogue of the
paper's "gains emerge after about 15 epochs"), "interval above 0 from" the emergence epoch; each with the 95 %
interval of its distribution (inference.Curve, emergence.onset_distribution). Pure: text from the report's dict.
"""
from __future__ import annotations

import math
from typing import Any

from pisweep.eval import registry
from pisweep.report.docmodel import epoch_range


def sentences(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per group and comparison: {"group", "comparison", "text", "decides"} (the main benchmark)."""
    meta = registry.get_task(rep["main_task"])
    out = []
    for gr in rep["groups"]:
        main = gr.get("main")
        for c in rep["comparisons"]:
            a, b = c.split("-", 1)
            head = f"{meta.display_name} {rep['main_metric']}: {a} − {b}"
            e = (main or {}).get("emergence", {}).get(c, {})
            at_source = bool(e.get("at_source_epochs"))  # posthoc: its source epochs, no curve
            row = _row_at(main, max(e.get("epochs_used") or [None], key=lambda x: x or 0) if at_source
                          else gr.get("last_epoch"), c)
            where = f"[scale {gr['scale']}, {gr['epochs']} epochs]"
            if row is None:
                out.append({"group": gr["key"], "comparison": c, "decides": False,
                            "text": f"{head} {where}: no epoch evaluated for every run yet."})
                continue
            d = row["deltas"][c]
            text = f"{head} = {_pts(d['delta'])} pts {_bounds(d)} at epoch {row['epoch']} {where}; "
            if at_source:
                text += (f"the posthoc cells fine-tune the random runs' weights of epoch "
                         f"{', '.join(map(str, e['epochs_used']))} on NIGHTS, so the comparison is drawn there, "
                         f"not along a curve ({_seeds(d)}" + ("" if d.get("decides") else
                                                               ": training randomness is not in this interval") + ").")
            elif not d.get("decides"):
                text += (_sustained(e, with_interval=False)
                         + f" ({_seeds(d)}: training randomness is not in this interval, so no verdict).")
            else:
                text += f"{_sustained(e)}; {_emerges(e)} ({_seeds(d)})."
            out.append({"group": gr["key"], "comparison": c, "decides": bool(d.get("decides")), "text": text})
    return out


def _row_at(main: dict[str, Any] | None, epoch: int | None, c: str) -> dict[str, Any] | None:
    if not main or epoch is None:
        return None
    for r in main["rows"]:
        if r["epoch"] == epoch and r["deltas"].get(c):
            return r
    return None


def _pts(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def _bounds(d: dict[str, Any]) -> str:
    if d.get("lo") is None or (isinstance(d["lo"], float) and math.isnan(d["lo"])):
        return "[no interval]"
    return f"[{_pts(d['lo'])}, {_pts(d['hi'])}]"


def _seeds(d: dict[str, Any]) -> str:
    n_a, n_b = d.get("n_a", 0), d.get("n_b", 0)
    if n_a == n_b:
        return "1 seed per arm" if n_a == 1 else f"{n_a} seeds"
    return f"{n_a} vs {n_b} seeds"


def _epoch_interval(dist: dict[str, Any] | None) -> str:
    return f" {epoch_range(dist)}" if dist else ""


def _sustained(e: dict[str, Any], with_interval: bool = True) -> str:
    through = e.get("through_epoch")
    if e.get("crossover_epoch") is None:
        return f"not sustained yet: the mean delta is not above 0 through epoch {through}"
    dist = (e.get("distribution") or {}).get("crossover") if with_interval else None
    return f"sustained from epoch {e['crossover_epoch']}{_epoch_interval(dist)}"


def _emerges(e: dict[str, Any]) -> str:
    dist = (e.get("distribution") or {}).get("emergence")
    if e.get("emergence_epoch") is None:
        return "no emergence yet: the interval is not above 0 through the last epoch"
    prov = ", provisional" if e.get("provisional") else ""
    return f"interval above 0 from epoch {e['emergence_epoch']}{_epoch_interval(dist)}{prov}"
