"""The report's plots as PNG bytes (matplotlib, headless): small multiples per benchmark with interval bands,
the delta heatmap (benchmark x epoch), the emergence epoch against data scale, the main benchmark's curves, and
NIGHTS 2AFC per arm through stage 2."""
from __future__ import annotations

import io
import math
from typing import Any

from pisweep.report.docmodel import epoch_range, noise_note
from pisweep.study.arms import POSTHOC

COLORS = {"random": "#7f7f7f", "perceptual": "#d62728", "shuffled": "#1f77b4", "posthoc": "#2ca02c",
          "pixel": "#bcbd22", "norm_matched": "#17becf"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _title(head: str, note: str, width_in: float, fontsize: float) -> str:
    """``head`` and, wrapped to the figure's width, what its intervals leave out (see doc.noise_note)."""
    import textwrap

    if not note:
        return head
    per_line = max(30, int(width_in * 130 / fontsize))  # characters per line at this font size
    return "\n".join([head, *textwrap.wrap(note, per_line)])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


#: comparisons after the first take these (none is an arm's colour)
OTHER_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#393b79", "#7b4173")
def _finite(values: list) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _yerr(y: list[float], lo: list, hi: list) -> list[list[float]] | None:
    """Error bars from interval bounds (None when a bound is unknown)."""
    return [[v - a for v, a in zip(y, lo)], [b - v for v, b in zip(y, hi)]] if _finite(lo + hi) else None


def _points(ax, x: list[int], y: list[float], lo: list, hi: list, color: str | None, label: str,
            shift: float = 0.15) -> None:
    """Points with their intervals as error bars (where the intervals are known), ``shift`` epochs to the right
    of the curves they sit beside."""
    ax.errorbar([e + shift for e in x], y, yerr=_yerr(y, lo, hi), fmt="D", ms=5, color=color, capsize=3, lw=1, label=label, zorder=3)


def _band(ax, series: dict[str, Any], arm: str) -> None:
    rows = [r for r in series["rows"] if r["arms"][arm]["n"]]
    if not rows:
        return
    x = [r["epoch"] for r in rows]
    y = [r["arms"][arm]["mean"] for r in rows]
    lo = [r["arms"][arm]["lo"] for r in rows]
    hi = [r["arms"][arm]["hi"] for r in rows]
    if arm == POSTHOC:  # beside the random arm's curve, at the epochs its cells fine-tuned
        _points(ax, x, y, lo, hi, COLORS.get(arm), f"{arm} (at its source epoch)")
        return
    ax.plot(x, y, marker="o", ms=2.5, lw=1.2, color=COLORS.get(arm), label=arm)
    if _finite(lo + hi):
        ax.fill_between(x, lo, hi, color=COLORS.get(arm), alpha=0.18, lw=0)


def curves(group: dict[str, Any], tasks: list[str] | None = None, cols: int = 4) -> bytes:
    """One panel per benchmark with results in this group: each arm's mean per epoch and its interval band."""
    plt = _plt()
    series = [s for t, s in group["series"].items() if s["rows"] and (tasks is None or t in tasks)]
    n = max(1, len(series))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False)
    for ax, s in zip(axes.flat, series):
        for arm in group["arms"]:
            _band(ax, s, arm)
        ax.set_title(s["name"], fontsize=8)
        ax.tick_params(labelsize=6)
        _integer_axis(ax.xaxis)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    if series:
        axes.flat[0].legend(fontsize=6)
    title = _title(f"scale {group['scale']}, {group['epochs']} epochs: main metric per epoch (band: interval)",
                   noise_note([d for s in series for r in s["rows"] for d in r["deltas"].values()]), 3.3 * cols, 9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()  # it leaves room for the suptitle itself
    return _png(fig)


def nights(group: dict[str, Any]) -> bytes:
    """NIGHTS 2AFC through stage 2: one panel per set (val, both test subsets, their total), each arm's mean per
    epoch from epoch 0 (the starting weights) with its interval band, and the 0.5 of chance."""
    plt = _plt()
    series = [s for s in group["nights"].values() if s["rows"]]
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(3.0 * max(1, len(series)), 2.7), squeeze=False)
    for ax, s in zip(axes.flat, series):
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        for arm in group["arms"]:
            _band(ax, s, arm)
        ax.set_title(s["name"], fontsize=8)
        ax.set_xlabel("epoch (0: start)", fontsize=7)
        ax.tick_params(labelsize=6)
        _integer_axis(ax.xaxis)
        ax.grid(alpha=0.3)
    if series:
        axes.flat[0].set_ylabel("2AFC", fontsize=7)
        axes.flat[0].legend(fontsize=6)
    title = _title(f"scale {group['scale']}, {group['epochs']} epochs: NIGHTS 2AFC per arm (band: interval; "
                   f"dotted: chance)", noise_note([d for s in series for r in s["rows"] for d in r["deltas"].values()]),
                   3.0 * max(1, len(series)), 9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def heatmap(group: dict[str, Any], comparison: str) -> bytes:
    """Delta (A - B) per benchmark (rows) and epoch (columns); a dot marks an interval that excludes zero."""
    import numpy as np

    plt = _plt()
    series = [s for s in group["series"].values() if s["rows"]]
    epochs = sorted({r["epoch"] for s in series for r in s["rows"]}) or [0]
    grid = np.full((max(1, len(series)), len(epochs)), np.nan)
    sig = []
    for i, s in enumerate(series):
        for r in s["rows"]:
            d = r["deltas"].get(comparison)
            if d and d["delta"] is not None:
                j = epochs.index(r["epoch"])
                grid[i, j] = d["delta"]
                if d.get("decides") and (d["lo"] > 0 or d["hi"] < 0):
                    sig.append((j, i))
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(epochs) + 3.0), max(2.4, 0.26 * len(series) + 1.6)))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, aspect="auto", interpolation="nearest")
    if sig:
        ax.scatter([p[0] for p in sig], [p[1] for p in sig], s=6, c="k")
    ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=6)
    ax.set_yticks(range(len(series)), [s["name"] for s in series], fontsize=6)
    ax.set_xlabel("epoch", fontsize=7)
    fig.colorbar(im, ax=ax, label=f"Δ {comparison.replace('-', ' − ')}")
    width = max(4.0, 0.28 * len(epochs) + 3.0)
    ax.set_title(_title(f"scale {group['scale']}, {group['epochs']} epochs (dot: a verdict, the interval excludes 0)",
                        noise_note([r["deltas"].get(comparison) for s in series for r in s["rows"]]), width, 8),
                 fontsize=8)
    fig.tight_layout()
    return _png(fig)


def emergence_vs_scale(points: list[dict[str, Any]]) -> bytes:
    """Emergence epoch per group against its samples per epoch; 'none' above the top when not yet."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    top = max([p["epochs"] for p in points] or [1]) + 1
    keys = sorted({(p["comparison"], p["epochs"]) for p in points})
    for k, (cmp, budget) in enumerate(keys):
        sel = [p for p in points if p["comparison"] == cmp and p["epochs"] == budget]
        sel.sort(key=lambda p: p["samples"] or 0)
        for main in (False, True):
            pts = [p for p in sel if p["main"] == main]
            if not pts:
                continue
            x = [p["samples"] or (i + 1) for i, p in enumerate(pts)]
            y = [p["emergence_epoch"] if p["emergence_epoch"] is not None else top for p in pts]
            style = dict(marker="o", ms=5, lw=1.5, label=f"{cmp} · {budget} ep (main)") if main else \
                dict(marker=".", ms=4, lw=0, alpha=0.35)
            ax.plot(x, y, color=f"C{k}", **style)
    ax.axhline(top, color="k", lw=0.5, ls=":")
    ax.set_ylim(0.5, top + 0.9)
    _integer_axis(ax.yaxis)
    if any(p["samples"] for p in points):
        ax.set_xscale("log")
    ax.text(ax.get_xlim()[0], top, " none yet", va="bottom", fontsize=7)
    ax.set_xlabel("samples per epoch (data scale)")
    ax.set_ylabel("emergence epoch")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def main_figure(rep: dict[str, Any]) -> bytes:
    """The answer as a figure (the report's default PNG, and the first of the HTML): per group, the main
    benchmark's delta per epoch with its interval band, the zero line and the emergence epoch with its interval
    (text when not yet); beside it, each arm's mean with its band."""
    plt = _plt()
    groups = [g for g in rep["groups"] if g.get("main") and g["main"]["rows"]]
    n = max(1, len(groups))
    fig, axes = plt.subplots(n, 2, figsize=(9.6, 3.1 * n), squeeze=False)
    notes = []
    for (ax_d, ax_a), g in zip(axes, groups):
        _delta_panel(ax_d, g, rep["comparisons"])
        for arm in g["arms"]:
            _band(ax_a, g["main"], arm)
        ax_a.set_title(f"{g['main']['name']} per arm [{g['scale']}, {g['epochs']} ep]", fontsize=9)
        ax_a.set_ylabel(g["main"]["metric"])
        for ax in (ax_d, ax_a):
            ax.set_xlabel("epoch")
            _integer_axis(ax.xaxis)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        notes += [d for r in g["main"]["rows"] for d in r["deltas"].values()]
    for ax in list(axes.flat)[2 * len(groups):]:
        ax.axis("off")
    title = _title(f"{rep['study']}: {rep['main_task']}, {' and '.join(c.replace('-', ' − ') for c in rep['comparisons'])}",
                   noise_note(notes, rep["settings"].get("assume_no_seed_noise", False)), 9.6, 10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()  # it leaves room for the suptitle itself
    return _png(fig)


def _delta_panel(ax, g: dict[str, Any], comparisons: list[str]) -> None:
    main = g["main"]
    ax.axhline(0.0, color="k", lw=0.8)
    lines = []
    for k, c in enumerate(comparisons):
        rows = [r for r in main["rows"] if r["deltas"].get(c)]
        if not rows:
            continue
        color = COLORS.get(c.split("-", 1)[0]) if k == 0 else OTHER_COLORS[(k - 1) % len(OTHER_COLORS)]
        x = [r["epoch"] for r in rows]
        y = [r["deltas"][c]["delta"] for r in rows]
        lo = [r["deltas"][c]["lo"] for r in rows]
        hi = [r["deltas"][c]["hi"] for r in rows]
        e = main["emergence"].get(c, {})
        if e.get("at_source_epochs"):
            _points(ax, x, y, lo, hi, color, c.replace("-", " − "), shift=0.15 * k)
            lines.append(f"{c.replace('-', ' − ')}: at epoch {', '.join(map(str, x))} only (a fine-tune)")
            continue
        ax.plot(x, y, marker="o", ms=2.5, lw=1.2, color=color, label=c.replace("-", " − "))
        if _finite(lo + hi):
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        dist = (e.get("distribution") or {}).get("emergence") or {}
        if e.get("emergence_epoch") is not None:
            ax.axvline(e["emergence_epoch"], color=color, ls="--", lw=0.9)
            last = max(x)
            lo_e, hi_e = dist.get("lo"), dist.get("hi")
            if lo_e is not None:
                ax.axvspan(lo_e - 0.5, (hi_e if hi_e is not None else last) + 0.5, color=color, alpha=0.08, lw=0)
            span = f" {epoch_range(dist)}" if dist else ""
            lines.append(f"{c.replace('-', ' − ')}: emergence epoch {e['emergence_epoch']}{span}")
        elif not e.get("decides", True):
            lines.append(f"{c.replace('-', ' − ')}: emergence: no verdict (1 seed per arm)")
        else:
            lines.append(f"{c.replace('-', ' − ')}: emergence: not yet")
    ax.text(0.02, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    ax.set_title(f"Δ {main['name']} per epoch (band: interval) [{g['scale']}, {g['epochs']} ep]", fontsize=9)
    ax.set_ylabel(f"Δ {main['metric']}")


def dose(group: dict[str, Any], main_name: str, metric: str) -> bytes:
    """The main benchmark's delta against random at the last epoch against the share of NIGHTS the init trained on
    (one line per dose method, intervals as error bars), and the emergence epoch beside it."""
    plt = _plt()
    fig, (ax_d, ax_e) = plt.subplots(1, 2, figsize=(9.6, 3.1))
    ax_d.axhline(0.0, color="k", lw=0.8)
    for method in dict.fromkeys(r["method"] for r in group["dose"]):
        rows = [r for r in group["dose"] if r["method"] == method and r["delta"] is not None]
        if not rows:
            continue
        x = [r["fraction"] for r in rows]
        y = [r["delta"] for r in rows]
        ax_d.errorbar(x, y, yerr=_yerr(y, [r["lo"] for r in rows], [r["hi"] for r in rows]), marker="o", ms=4, capsize=3, lw=1.2, color=COLORS.get(method), label=method)
        done = [(r["fraction"], r["emergence_epoch"]) for r in rows if r["emergence_epoch"] is not None]
        if done:
            ax_e.plot(*zip(*done), marker="o", lw=1.2, color=COLORS.get(method), label=method)
    for ax in (ax_d, ax_e):
        ax.set_xscale("log")
        ax.set_xlabel("share of NIGHTS' train triplets")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_d.set_ylabel(f"Δ {metric} vs random")
    ax_d.set_title(f"Δ {main_name} at epoch {group.get('last_epoch')} [{group['scale']}, {group['epochs']} ep]",
                   fontsize=9)
    ax_e.set_ylabel("emergence epoch")
    ax_e.set_title("emergence epoch (none plotted: not yet)", fontsize=9)
    _integer_axis(ax_e.yaxis)
    fig.tight_layout()
    return _png(fig)


def arm_matrix(m: dict[str, Any], group: dict[str, Any]) -> bytes:
    """Arm × benchmark: each arm's delta against random (diverging colours, white at 0), ▲/▼ where the family's Holm
    calls a win or a loss; blank where there is no result."""
    import numpy as np

    plt = _plt()
    arms, tasks = m["arms"], m["tasks"]
    z = np.full((len(arms), len(tasks)), np.nan)
    for i, arm in enumerate(arms):
        for j, (task, _) in enumerate(tasks):
            c = m["cells"].get((arm, task))
            if c is not None:
                z[i, j] = c["delta"]
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(tasks) + 2), 0.45 * len(arms) + 2.2))
    im = ax.imshow(np.ma.masked_invalid(z), cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    for i, arm in enumerate(arms):
        for j, (task, _) in enumerate(tasks):
            mark = {"win": "▲", "loss": "▼"}.get((m["cells"].get((arm, task)) or {}).get("outcome"))
            if mark:
                ax.text(j, i, mark, ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(arms)), [f"{a} − random" for a in arms], fontsize=8)
    ax.set_xticks(range(len(tasks)), [name for _, name in tasks], rotation=60, ha="right", fontsize=7)
    fig.colorbar(im, ax=ax, label="Δ main metric", shrink=0.8)
    ax.set_title(f"every arm against random at the last epoch [{group['scale']}, {group['epochs']} ep] "
                 f"(▲/▼: Holm over the family)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
