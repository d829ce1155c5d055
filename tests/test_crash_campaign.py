"""The crash campaign at CI size: kill -9 of the controller (its process group, or the whole tree) at random
moments, then resume; nothing is run twice at once, no epoch is finished twice, no checkpoint is partial."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.mark.timeout(1500)
def test_three_trials_of_random_kills_complete_with_nothing_duplicated(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/crash_campaign.py"), "--trials", "3", "--seed", "1",
                           "--workdir", str(tmp_path), "--horizon", "25"], capture_output=True, text=True, timeout=1400)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert line == ("crash campaign: trials=3 completed=3 duplicate_rows=0 duplicate_epochs=0 partial_checkpoints=0 "
                    "overlapping_attempts=0"), proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0


def test_the_campaign_counts_what_it_is_shown(tmp_path):
    """Its evidence counter, on a folder holding each kind of damage once (so a zero above means something)."""
    import importlib.util
    import json
    import sqlite3

    spec = importlib.util.spec_from_file_location("crash_campaign", ROOT / "benchmarks/crash_campaign.py")
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)
    root = tmp_path / "out"
    folder = root / "runs" / "abc"
    (folder / "checkpoints").mkdir(parents=True)
    weights = folder / "checkpoints" / "epoch_1.pt"
    weights.write_bytes(b"what a killed writer left")
    lines = [  # attempt 1 (pid 10) still writes after attempt 2 (pid 20) started; epoch 1 finished by both
        {"t": 1.0, "pid": 10, "event": "attempt_started"}, {"t": 2.0, "pid": 10, "event": "epoch_done", "epoch": 1},
        {"t": 3.0, "pid": 20, "event": "attempt_started"}, {"t": 4.0, "pid": 10, "event": "checkpoint",
                                                           "path": str(weights), "sha256": "0" * 64},
        {"t": 5.0, "pid": 20, "event": "epoch_done", "epoch": 1}]
    (folder / "audit.log").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 6, "cut sh')
    con = sqlite3.connect(root / "ledger.sqlite")
    for table, key in campaign.NATURAL_KEYS.items():
        con.execute(f"CREATE TABLE {table} ({key})")  # no unique constraint: a duplicate can be planted
    con.execute("INSERT INTO attempts VALUES ('abc', '7', 0), ('abc', '7', 0)")
    con.commit()
    con.close()
    found = campaign.evidence(root)
    assert (found["duplicate_rows"], found["duplicate_epochs"], found["partial_checkpoints"],
            found["overlapping_attempts"]) == (1, 1, 1, 1)
