"""PNG plots of main-metric curves (matplotlib, headless)."""
from __future__ import annotations

import math
from pathlib import Path

from .curves import Curve

COLORS = {"random": "#7f7f7f", "perceptual": "#d62728", "shuffled": "#1f77b4"}


def plot_curves(curves: list[Curve], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, curve in zip(axes.flat, curves):
        for arm in curve.arms():
            epochs = sorted(e for e in curve.values if curve.values[e].get(arm))
            means = [sum(curve.values[e][arm]) / len(curve.values[e][arm]) for e in epochs]
            ax.plot(epochs, means, marker="o", ms=3, color=COLORS.get(arm), label=f"{arm} (mean)")
            for e in epochs:
                ax.scatter([e] * len(curve.values[e][arm]), curve.values[e][arm], s=6, alpha=0.35, color=COLORS.get(arm))
        ax.set_title(f"{curve.task} [{curve.scale}, {curve.epochs} ep]", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(curve.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
