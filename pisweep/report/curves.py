"""Per-benchmark, per-epoch means over seeds of each arm, and the delta against random. Pure."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any, Iterable

BASELINE = "random"


@dataclass
class Curve:
    """One benchmark in one (scale, epochs) group: epoch -> arm -> values over seeds."""

    task: str
    metric: str
    scale: str
    epochs: int
    values: dict[int, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def arms(self) -> list[str]:
        found = {arm for per in self.values.values() for arm in per}
        return sorted(found, key=lambda a: (a != BASELINE, a))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for epoch in sorted(self.values):
            per = self.values[epoch]
            row: dict[str, Any] = {"epoch": epoch}
            for arm in self.arms():
                vals = per.get(arm, [])
                row[arm] = fmean(vals) if vals else None
                row[f"{arm}_n"] = len(vals)
            base = row.get(BASELINE)
            for arm in self.arms():
                if arm != BASELINE:
                    row[f"delta_{arm}"] = (row[arm] - base) if (row.get(arm) is not None and base is not None) else None
            out.append(row)
        return out


def build_curves(rows: Iterable[dict[str, Any]]) -> list[Curve]:
    """Rows as ledger.queries.main_metric_curves returns them."""
    curves: dict[tuple[str, str, int], Curve] = {}
    for r in rows:
        if r["main_value"] is None:
            continue
        key = (r["task"], r["scale"], r["epochs"])
        if key not in curves:
            curves[key] = Curve(r["task"], r["main_metric"], r["scale"], r["epochs"])
        curves[key].values[r["epoch"]][r["init"]].append(float(r["main_value"]))
    return [curves[k] for k in sorted(curves)]
