"""Ctrl-C during a local study leaves a consistent ledger, and `pisweep resume` finishes without redoing work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pisweep.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_ctrl_c_then_resume(tmp_path, capsys):
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec["name"] = "ci-interrupt"
    spec["output_root"] = str(tmp_path / "out")
    spec["data"]["synthetic"]["root"] = str(tmp_path / "data")
    spec["grid"]["init"] = ["random"]
    spec["grid"]["epochs"] = [3]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "pisweep.cli", "submit", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 240
    while not list(runs.glob("*/events/*-checkpoint.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "pisweep resume ci-interrupt" in out

    capsys.readouterr()
    assert main(["status", "ci-interrupt", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (cell,) = [c for c in status["cells"] if c["kind"] == "train"]
    assert cell["state"] in ("stopped", "completed")  # never left "running" by a dead scheduler
    interrupted = cell["state"] == "stopped"

    assert main(["resume", "ci-interrupt"]) == 0
    capsys.readouterr()
    assert main(["status", "ci-interrupt", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (cell,) = [c for c in status["cells"] if c["kind"] == "train"]
    assert cell["state"] == "completed" and cell["epoch"] == 3
    assert cell["attempts"] == (2 if interrupted else 1)
    assert cell["evals"].get("done", 0) + cell["evals"].get("missing_data", 0) == cell["evals_planned"]
    # Nothing was redone: each epoch finished once; every (epoch, task) has its result.
    (run_dir,) = list(runs.iterdir())
    epochs = [json.loads(p.read_text())["data"]["epoch"] for p in sorted(run_dir.glob("events/*-epoch_done.json"))]
    assert epochs == [1, 2, 3]
    done = [json.loads(p.read_text())["data"] for p in run_dir.glob("events/*-eval_state.json")]
    keys = [(d["epoch"], d["task"]) for d in done if d["state"] == "done" and d["task"] != "nights_2afc"]
    assert len(set(keys)) == 3 * 6
