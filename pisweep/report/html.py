"""The report as one self-contained HTML file: inline CSS, every plot embedded as a base64 PNG, no scripts and no
links to fetch, so it can be mailed or attached to a paper's supplement as it is."""
from __future__ import annotations

import base64
import html
from typing import Any

from pisweep.eval import registry
from pisweep.report import figures
from pisweep.report.analysis import has_curve
from pisweep.report.doc import BAD, DIM, GOOD, WARN, Block, document
from pisweep.report.doc_matrix import matrix

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:32px}
h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:12.5px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ddd;padding:3px 7px}th{background:#f4f4f4}
td.r{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00}.dim{color:#666}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
"""
TONE = {GOOD: "good", BAD: "bad", WARN: "warn", DIM: "dim"}


def to_html(rep: dict[str, Any]) -> str:
    """Everything of the terminal report, plus (when ``rep`` was built in full mode) the plots."""
    figs = _figures(rep)
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>pisweep report: {html.escape(rep['study'])}</title><style>{CSS}</style></head><body>"]
    for b in document(rep, figures=True):
        parts.append(_block(b, figs))
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures(rep: dict[str, Any]) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {}
    if any(g.get("main") and g["main"]["rows"] for g in rep["groups"]):
        out["answer"] = [("delta per epoch of the main benchmark", figures.main_figure(rep))]
    for g in rep["groups"]:
        if g.get("series") and any(s["rows"] for s in g["series"].values()):
            out[f"curves:{g['key']}"] = [(f"small multiples {g['key']}", figures.curves(g))]
            out[f"heatmap:{g['key']}"] = [(f"delta heatmap {g['key']} {c}", figures.heatmap(g, c))
                                          for c in rep["comparisons"]
                                          if has_curve(tuple(c.split("-", 1)))]  # (posthoc: the arm matrix)
        if g.get("nights"):
            out[f"nights:{g['key']}"] = [(f"NIGHTS 2AFC {g['key']}", figures.nights(g))]
        m = matrix(g)
        if m is not None:
            out[f"matrix:{g['key']}"] = [(f"arm x benchmark {g['key']}", figures.arm_matrix(m, g))]
        if g.get("dose"):
            name = registry.get_task(rep["main_task"]).display_name
            out[f"dose:{g['key']}"] = [(f"NIGHTS dose {g['key']}", figures.dose(g, name, rep["main_metric"]))]
    points = [p for p in rep.get("emergence_by_scale", [])]
    if points:
        out["emergence"] = [("emergence epoch against data scale", figures.emergence_vs_scale(points))]
    return out


def _img(alt: str, png: bytes) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}"></figure>')


def _block(b: Block, figs: dict[str, list[tuple[str, bytes]]]) -> str:
    cls = f' class="{TONE[b.tone]}"' if b.tone in TONE else ""
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{html.escape(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p{cls}>{html.escape(b.text)}</p>"
    if b.kind == "figure":
        imgs = figs.get(b.figure or "", [])
        return "\n".join(_img(alt, png) for alt, png in imgs) or '<p class="dim">(no data to plot yet)</p>'
    if b.kind == "table" and b.table is not None:
        t = b.table
        rows = ["<table>", f"<caption>{html.escape(t.title)}</caption>",
                "<tr>" + "".join(f"<th>{html.escape(n)}</th>" for n, _ in t.columns) + "</tr>"]
        for row in t.rows:
            cells = []
            for (_, align), c in zip(t.columns, row):
                classes = " ".join(x for x in ("r" if align == "right" else "", TONE.get(c.tone, "")) if x)
                attr = f' class="{classes}"' if classes else ""
                cells.append(f"<td{attr}>{html.escape(c.text)}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        rows.append("</table>")
        return "\n".join(rows)
    return ""
