"""The negative control at CI size: experiments/ci.yaml in the synthetic world whose simulated human judgments
weigh pose only (experiments/null.yaml's world), with 3 seeds so that the report may draw verdicts. Perceptual
init is built not to help there: the report must find no emergence and no Holm win, and say which world it is."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pisweep.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_null_world_study_shows_no_emergence_and_no_win(tmp_path, monkeypatch, capsys):
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    null = yaml.safe_load((ROOT / "experiments/null.yaml").read_text())
    spec["name"] = "null-ci"
    spec["output_root"] = str(tmp_path / "out")
    spec["data"]["synthetic"].update(root=str(tmp_path / "data"), judgments=null["data"]["synthetic"]["judgments"])
    spec["grid"]["seed"] = null["grid"]["seed"]
    assert spec["data"]["synthetic"]["judgments"] == "pose-only" and len(spec["grid"]["seed"]) == 3
    path = tmp_path / "null-ci.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("PISWEEP_HOME", str(tmp_path / "home"))
    assert main(["submit", str(path)]) == 0
    capsys.readouterr()
    assert main(["report", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["world"]["judgments"] == "pose-only" and "negative control" in rep["world"]["text"]
    group = rep["groups"][0]
    emergence = group["main"]["emergence"]["perceptual-random"]
    assert emergence["decides"] and emergence["emergence_epoch"] is None
    last = group["last"]["perceptual-random"]
    judged = [r for r in last["tasks"] if r.get("outcome")]
    assert judged and all(r["outcome"] != "win" for r in judged)
    assert last["tally"]["all"]["significant"]["win"] == 0
    assert rep["answer"][0]["text"].endswith("(3 seeds).")
    # NIGHTS 2AFC through stage 2, from the starting weights on, with intervals over seeds and triplets
    nights = group["nights"]
    assert list(nights) == ["nights_val_2afc", "nights_test_imagenet_2afc", "nights_test_no_imagenet_2afc",
                            "nights_total_2afc"]
    for series in nights.values():
        assert [r["epoch"] for r in series["rows"]] == [0, 1, 2]
        for row in series["rows"]:
            assert row["arms"]["random"]["n"] == row["arms"]["perceptual"]["n"] == 3
            assert row["deltas"]["perceptual-random"]["method"] == "examples+seeds"
