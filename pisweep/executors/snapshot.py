"""A snapshot of pisweep's code taken at submit time, so jobs that queue for hours run the code that was
submitted, whatever happens to the checkout meanwhile. Content-addressed: unchanged code is not copied twice."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # .../pisweep


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo"))


def code_hash(root: Path = PACKAGE) -> str:
    h = hashlib.sha256()
    for p in _files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def take_snapshot(dest_root: Path, package: Path = PACKAGE) -> Path:
    """Copy the package to ``dest_root/<hash>/pisweep`` (atomically); return the folder to put on PYTHONPATH."""
    digest = code_hash(package)
    final = Path(dest_root) / digest
    if (final / "pisweep" / "__init__.py").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=final.parent))
    try:
        for src in _files(package):
            dst = tmp / "pisweep" / src.relative_to(package)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        try:
            os.rename(tmp, final)
        except OSError:  # another submit made the same snapshot first: identical content, keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
