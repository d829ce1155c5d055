"""Smoke test of benchmarks/train_throughput.py: both loops run under its hooks and it reports what it promises
(the numbers themselves are for the benchmark, not for CI)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains, or starts processes

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_benchmark_runs_both_loops_and_reports_rates_ratio_and_phases(tmp_path):
    pytest.importorskip("open_clip_train.main")
    pytest.importorskip("pandas")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--reps", "1",
                          "--warmup", "1", "--steps", "3", "--batch", "16", "--threads", "1",
                          "--work", str(tmp_path / "work"), "--json", str(tmp_path / "runs.json")],
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "pisweep command:" in text and "open_clip_train command:" in text
    assert "--train-data" in text and "--batch-size 16" in text and "--workers 1" in text
    assert re.search(r"ratio: \d+\.\d+x best/best", text)
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    for side in ("pisweep", "open_clip_train"):
        (run,) = runs[side]
        assert run["steps"] == 3 and run["samples_per_s"] > 0
        phases = run["phases_s"]
        assert set(phases) == {"data", "forward/backward", "optimizer", "logging"}
        assert phases["optimizer"] > 0 and phases["forward/backward"] > 0
        assert abs(sum(phases.values()) - run["wall_s"]) < 1e-6
