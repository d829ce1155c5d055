"""One output folder has one ledger: ``<output_root>/ledger.json`` names the ledger that records its jobs.

Two ledgers for one output root would each think they own its job folders and run every job twice. The first
submit claims the folder; a submit with another ledger path is refused while the claimed ledger exists.
"""
from __future__ import annotations

import json
from pathlib import Path

from pisweep.atomic import atomic_write_json
from pisweep.errors import LedgerError

OWNER_FILE = "ledger.json"


def owner_path(output_root: str | Path) -> Path:
    return Path(output_root) / OWNER_FILE


def claimed_ledger(output_root: str | Path) -> Path | None:
    """The ledger that owns ``output_root``, or None when it is not claimed yet."""
    try:
        return Path(json.loads(owner_path(output_root).read_text())["ledger"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim_output_root(output_root: str | Path, ledger: str | Path) -> None:
    """Record ``ledger`` as the one ledger of ``output_root``; refuse if another existing ledger owns it."""
    ledger = Path(ledger).resolve()
    owner = claimed_ledger(output_root)
    if owner is not None and owner.resolve() == ledger:
        return
    if owner is not None and owner.exists():
        raise LedgerError(f"output root {output_root} already belongs to the ledger {owner} (see "
                          f"{owner_path(output_root)}); one output folder has one ledger: use that ledger "
                          f"(drop --ledger, or --ledger {owner}) or another output_root")
    atomic_write_json(owner_path(output_root), {"ledger": str(ledger)})
