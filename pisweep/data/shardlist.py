"""Which shards a training pattern names and how many samples each declares: one rule for preflight, the plan's
data identity and training.

A pattern is webdataset's / open_clip's: brace ranges and lists (``{00000..01023}``, ``{a,b}``, via braceexpand),
and several sources joined with ``::``. A shard's sample count comes from the ``sizes.json`` of its folder
(open_clip's convention) or, failing that, from img2dataset's ``<shard stem>_stats.json`` ("successes")."""
from __future__ import annotations

import json
from pathlib import Path

from braceexpand import braceexpand

from pisweep.errors import DataError


def expand_shards(pattern: str) -> list[str]:
    """The shard paths of a pattern, in order."""
    paths = [p for part in pattern.split("::") if part.strip() for p in braceexpand(part.strip())]
    if not paths:
        raise DataError(f"shard pattern {pattern!r} names no shards")
    return paths


class DeclaredSizes:
    """Sample counts declared next to the shards (each folder's sizes.json read once)."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict | None] = {}

    def _sizes_json(self, folder: Path) -> dict | None:
        if folder not in self._folders:
            f = folder / "sizes.json"
            try:
                self._folders[folder] = json.loads(f.read_text()) if f.exists() else None
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"unreadable shard sizes file {f}: {exc}") from exc
        return self._folders[folder]

    def of(self, shard: str) -> int | None:
        """The sample count a sizes file declares for one shard, or None when no file says."""
        p = Path(shard)
        sizes = self._sizes_json(p.parent)
        if sizes is not None and p.name in sizes:
            return int(sizes[p.name])
        stats = p.parent / f"{p.name.split('.')[0]}_stats.json"
        if stats.exists():
            try:
                return int(json.loads(stats.read_text())["successes"])
            except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
                raise DataError(f"unreadable img2dataset stats {stats}: {exc}") from exc
        return None

    def all_of(self, shards: list[str]) -> dict[str, int] | None:
        """The declared counts of the shards that have one; None when none has."""
        out = {s: n for s in shards if (n := self.of(s)) is not None}
        return out or None
