"""The report's document model and its formatting: headings, paragraphs, tables, figure slots (rendered by
render_terminal.py, export.py and html.py), numbers and intervals as text, and what an interval leaves out. Pure."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GOOD, BAD, DIM, WARN, PLAIN = "good", "bad", "dim", "warn", ""


@dataclass
class Cell:
    text: str
    tone: str = PLAIN


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (name, "left" | "right")
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure"
    text: str = ""
    tone: str = PLAIN
    table: Table | None = None
    figure: str | None = None  # figure slot: "curves:<group key>", "heatmap:<group key>", "emergence"
    group: dict[str, Any] | None = None


def num(v: float | None, digits: int = 4) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def signed(v: float | None, digits: int = 4) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def interval(lo: float | None, hi: float | None, sign: bool = False) -> str:
    f = signed if sign else num
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return ""
    return f"[{f(lo, 3)}, {f(hi, 3)}]"


def hours(v: float) -> str:
    return f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def pval(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def tone_of(d: dict[str, Any] | None) -> str:
    """Green or red only for an interval that may decide (it holds seed noise) and excludes 0."""
    if not d or not d.get("decides") or d.get("lo") is None or (isinstance(d["lo"], float) and math.isnan(d["lo"])):
        return PLAIN
    return GOOD if d["lo"] > 0 else BAD if d["hi"] < 0 else PLAIN


def epochs_text(epochs: list[int]) -> str:
    """1, 2, 3, 5, 6 -> "1–3, 5–6"."""
    if not epochs:
        return "none"
    parts, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(parts)


def arm_columns(arms: list[str], cmps: list[str]) -> list[tuple[str, str]]:
    """The columns of an epoch row after its key columns: each arm, each delta with its p, the runs."""
    cols = [(a, "right") for a in arms]
    for c in cmps:
        cols += [(f"Δ {c.replace('-', '−')}", "right"), ("p", "right")]
    return cols + [("runs", "right")]


def arm_cells(row: dict[str, Any], arms: list[str], cmps: list[str]) -> list[Cell]:
    """An epoch row's cells under :func:`arm_columns`: means with intervals, deltas with intervals and p, and the
    runs with a result of the planned ones per arm."""
    cells = []
    for a in arms:
        v = row["arms"][a]
        cells.append(Cell(f"{num(v['mean'])} {interval(v['lo'], v['hi'])}".strip() if v["n"] else "—"))
    for c in cmps:
        d = row["deltas"].get(c)
        cells += [Cell(f"{signed(d['delta'])} {interval(d['lo'], d['hi'], True)}".strip() if d else "—", tone_of(d)),
                  Cell(pval(d["p"]) if d else "—")]
    cells.append(Cell(" ".join(f"{row['arms'][a]['n']}/{row['arms'][a]['planned']}" for a in arms)))
    return cells


def arm_names(cmp: str) -> tuple[str, str]:
    a, b = cmp.split("-", 1)
    return a, b


METHODS = {"examples+seeds": "seeds and test set",
           "examples": "test set only (1 seed per arm: training randomness not included)",
           "seeds": "seeds only (no per-example files: test-set noise not included)",
           "none": "none (1 seed per arm and no per-example files)"}


def noise_note(ivs: list[dict[str, Any] | None], assumed: bool = False) -> str:
    """What a table's or a plot's intervals leave out, said where they are shown ('' when nothing is)."""
    methods = {iv["method"] for iv in ivs if iv}
    notes = []
    if "examples" in methods:
        notes.append("1 seed per arm: training randomness is NOT in these intervals"
                     + (" (assumed none: --assume-no-seed-noise)" if assumed else ", so no verdict is drawn"))
    if "seeds" in methods:
        notes.append("seed-level only: the test set's noise is NOT in these intervals")
    if "none" in methods:
        notes.append("1 seed per arm without per-example files: no interval")
    return "; ".join(notes)


def epoch_range(d: dict[str, Any]) -> str:
    """An epoch's 95% interval from its distribution: "[11, 18]", "[11, not yet]"."""
    def one(x: int | None) -> str:
        return "not yet" if x is None else str(x)
    return f"[{one(d.get('lo'))}, {one(d.get('hi'))}]"
