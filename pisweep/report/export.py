"""The report as JSON (NaN -> null), Markdown (the terminal's tables) and files written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pisweep.atomic import atomic_write_bytes
from pisweep.report.doc import Block, document


def clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(rep: dict[str, Any]) -> str:
    return json.dumps(clean(rep), indent=2, allow_nan=False)


def to_markdown(rep: dict[str, Any]) -> str:
    lines: list[str] = []
    for b in document(rep, figures=False):
        lines += _md(b)
    return "\n".join(lines).rstrip() + "\n"


def _md(b: Block) -> list[str]:
    if b.kind in ("h1", "h2", "h3"):
        return ["#" * int(b.kind[1]) + " " + b.text, ""]
    if b.kind == "table" and b.table is not None:
        t = b.table
        head = "| " + " | ".join(_esc(n) for n, _ in t.columns) + " |"
        sep = "|" + "|".join("---:" if a == "right" else ":---" for _, a in t.columns) + "|"
        rows = ["| " + " | ".join(_esc(c.text) for c in row) + " |" for row in t.rows]
        return [f"**{_esc(t.title)}**", "", head, sep, *rows, ""]
    if b.kind == "p":
        return [_esc(b.text), ""]
    return []


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path
