"""Where a result came from: the code revision (git SHA + a hash of any uncommitted diff) and the packages."""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent.parent


def git_revision(path: Path = SOURCE) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None, "diff_sha256": None}
    try:
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        diff = ""
    return {"sha": sha, "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def packages() -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}


def collect() -> dict[str, Any]:
    return {"code": git_revision(), "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": dict(sorted(packages().items(), key=lambda kv: kv[0].lower()))}
