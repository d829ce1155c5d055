"""The dose view: how much NIGHTS is needed. Per group and dose method (perceptual, shuffled: grid.nights_fraction),
the main benchmark's delta against random at the last epoch and the emergence epoch, against the share of NIGHTS'
train triplets the init trained on. Pure: read from the report's dict (the comparisons are analyze's own)."""
from __future__ import annotations

from typing import Any

from pisweep.study.arms import DOSE_INITS, arm_fraction


def dose_rows(gr: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (dose method, fraction) of the group that has a comparison against random (none when the study
    has one fraction): the delta at the group's last epoch and the emergence and crossover epochs."""
    main = gr.get("main") or {}
    emergence = main.get("emergence", {})
    last = next((r for r in main.get("rows", []) if r["epoch"] == gr.get("last_epoch")), None)
    rows = []
    for arm in gr["arms"]:
        method, fraction = arm_fraction(arm)
        key = f"{arm}-random"
        if method not in DOSE_INITS or key not in emergence:
            continue
        d = (last or {}).get("deltas", {}).get(key) or {}
        e = emergence[key]
        rows.append({"method": method, "fraction": fraction, "arm": arm, "comparison": key,
                     "epoch": gr.get("last_epoch"), "delta": d.get("delta"), "lo": d.get("lo"), "hi": d.get("hi"),
                     "p": d.get("p"), "decides": d.get("decides"), "emergence_epoch": e.get("emergence_epoch"),
                     "crossover_epoch": e.get("crossover_epoch"), "through_epoch": e.get("through_epoch")})
    methods = {r["method"] for r in rows if r["fraction"] != 1.0}
    return sorted((r for r in rows if r["method"] in methods), key=lambda r: (DOSE_INITS.index(r["method"]),
                                                                                r["fraction"]))
