"""End to end on the local executor: a tiny study with real open_clip, real shards, a real SQLite ledger."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from pisweep.cli.main import main
from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    """experiments/ci.yaml with its outputs moved into a temp folder, the controls added (the shuffled and pixel
    inits wait for the perceptual one, whose epoch they hand on; norm_matched is made of its norms) and the posthoc
    arm (the random run's last epoch fine-tuned on NIGHTS, one short epoch); shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("e2e")
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec["grid"]["init"] = ["random", "perceptual", "shuffled", "pixel", "norm_matched", "posthoc"]
    spec["posthoc"] = {"epochs": 1, "optim": {"lr": 1e-3, "warmup_steps": 1}, "workers": 0}
    spec["output_root"] = str(tmp / "out")
    spec["data"]["synthetic"]["root"] = str(tmp / "data")
    path = tmp / "ci.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def submitted(study_file, home):
    mp = pytest.MonkeyPatch()
    mp.setenv("PISWEEP_HOME", str(home))
    code = main(["submit", str(study_file)])
    mp.undo()
    return code


@pytest.fixture(autouse=True)
def _home(home, monkeypatch):
    monkeypatch.setenv("PISWEEP_HOME", str(home))


def cli_json(*args: str, capsys) -> dict:
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_submit_runs_the_study_to_completion(submitted, study_file, capsys):
    assert submitted == 0
    status = cli_json("status", "ci", capsys=capsys)
    assert status["coverage"]["present"] == 6 and status["coverage"]["total"] == 31
    states = {c["label"]: c["state"] for c in status["cells"]}
    assert set(states.values()) == {"completed"}, states
    assert {c["kind"] for c in status["cells"]} == {"init", "train", "posthoc"}
    for cell in status["cells"]:
        if cell["kind"] == "train":
            assert cell["epoch"] == cell["epochs"] == 2 and cell["attempts"] == 1
            assert cell["main_metric"]["task"] == "imagenet1k" and cell["main_metric"]["epoch"] == 2
            assert cell["evals"].get("done") == 2 * 6 and cell["evals"].get("missing_data") == 2 * 25
    # An init cell shows the NIGHTS val 2AFC of the epoch it handed on: the perceptual init's lowest validation
    # loss, which the shuffled control hands on too (stage1.handoff best_val, matched).
    out = Path(yaml.safe_load(study_file.read_text())["output_root"])
    led = Ledger(out / "ledger.sqlite")
    inits = {c["label"]: c for c in status["cells"] if c["kind"] == "init"}
    assert set(inits) == {"init-perceptual-s0", "init-shuffled-s0", "init-pixel-s0", "init-norm_matched-s0"}
    assert inits["init-norm_matched-s0"]["main_metric"] is None  # it does not train: no epoch of its own
    norm_matched = inits.pop("init-norm_matched-s0")
    with led.engine.connect() as conn:
        losses = dict(conn.execute(select(t.metrics.c.epoch, t.metrics.c.value).where(
            t.metrics.c.job_uid == inits["init-perceptual-s0"]["uid"], t.metrics.c.metric == "val_loss")).all())
        best = min(losses, key=lambda e: (losses[e], e))
        for cell in inits.values():
            value = conn.execute(select(t.metrics.c.value).where(
                t.metrics.c.job_uid == cell["uid"], t.metrics.c.epoch == best,
                t.metrics.c.metric == "nights_val_2afc")).scalar_one()
            assert cell["main_metric"] == {"task": "nights", "metric": "val_2afc", "epoch": best, "value": value}
            # The run's epoch 0 (its starting weights) scores what stage 1 scored on the epoch it handed on: the
            # same vision tower on the same triplets (both in fp32 on the CPU).
            handed = dict(conn.execute(select(t.metrics.c.metric, t.metrics.c.value).where(
                t.metrics.c.job_uid == cell["uid"], t.metrics.c.epoch == best,
                t.metrics.c.metric.like("nights_%"))).all())
            arm = cell["label"].removeprefix("init-").split("-s")[0]
            run = next(c for c in status["cells"] if c["label"] == f"{arm}-tiny-e2-s0")
            start = dict(conn.execute(select(t.metrics.c.metric, t.metrics.c.value).where(
                t.metrics.c.job_uid == run["uid"], t.metrics.c.epoch == 0, t.metrics.c.task == "nights_2afc")).all())
            assert len(start) == 4 and start == handed
        # norm_matched is made of the epoch the perceptual init handed on
        assert json.loads((out / "inits" / norm_matched["uid"] / "handoff.json").read_text())["epoch"] == best
        # The posthoc cell fine-tuned the random run's epoch-2 weights (the file the ledger records, by sha256),
        # and is evaluated as epoch 2: the whole suite and NIGHTS.
        (post,) = [c for c in status["cells"] if c["kind"] == "posthoc"]
        random_run = next(c for c in status["cells"] if c["label"] == "random-tiny-e2-s0")
        assert post["label"] == "posthoc-tiny-e2-s0-at2" and post["source"] == random_run["label"]
        assert post["epoch"] == post["epochs"] == 1 and post["evals"].get("done") == 6
        source_sha = conn.execute(select(t.checkpoints.c.sha256).where(
            t.checkpoints.c.job_uid == random_run["uid"], t.checkpoints.c.epoch == 2,
            t.checkpoints.c.kind == "weights")).scalar_one()
        handoff = json.loads((out / "runs" / post["uid"] / "handoff.json").read_text())
        assert handoff["source_sha256"] == source_sha and handoff["source_epoch"] == 2 and handoff["epoch"] == 1
        post_nights = conn.execute(select(func.count()).where(
            t.metrics.c.job_uid == post["uid"], t.metrics.c.epoch == 2, t.metrics.c.task == "nights_2afc")).scalar()
        assert post_nights == 4
        # every run of the scale trained on one manifest: the same seeded subset for every arm
        digests = {json.loads((out / "runs" / c["uid"] / "data" / "manifest.json").read_text())["sha256"]
                   for c in status["cells"] if c["kind"] == "train"}
        assert len(digests) == 1
    led.close()


def test_ledger_has_a_row_per_run_epoch_benchmark_metric(submitted, study_file):
    out = Path(yaml.safe_load(study_file.read_text())["output_root"])
    led = Ledger(out / "ledger.sqlite")
    with led.engine.connect() as conn:
        runs = conn.execute(select(t.jobs.c.uid).where(t.jobs.c.kind == "train")).scalars().all()
        assert len(runs) == 5
        for uid in runs:
            for epoch in (1, 2):
                tasks = conn.execute(select(t.metrics.c.task, func.count()).where(
                    t.metrics.c.job_uid == uid, t.metrics.c.epoch == epoch, t.metrics.c.task != "train")
                    .group_by(t.metrics.c.task)).all()
                counts = dict(tasks)
                assert counts["imagenet1k"] == 3  # acc1, acc5, mean_per_class_recall
                assert counts["retrieval/flickr_1k_test_image_text_retrieval"] == 7
                assert len([k for k in counts if k != "nights_2afc"]) == 6
        weights = conn.execute(select(t.checkpoints.c.path).where(t.checkpoints.c.kind == "weights")).scalars().all()
    led.close()
    assert len(weights) == 16  # epochs 0 (the starting weights, for NIGHTS), 1 and 2 of the five runs; posthoc's 2
    # A weights file loads with open_clip in a fresh process (the inline config lies next to it).
    code = ("import sys, open_clip; from pathlib import Path; p=Path(sys.argv[1]);"
            "open_clip.add_model_config(p.parent / 'pisweep-tiny.json');"
            "m,_,_=open_clip.create_model_and_transforms('pisweep-tiny', pretrained=str(p)); print('ok')")
    res = subprocess.run([sys.executable, "-c", code, weights[0]], capture_output=True, text=True)
    assert res.stdout.strip() == "ok", res.stderr


def test_second_submit_does_nothing(submitted, study_file, capsys):
    out = Path(yaml.safe_load(study_file.read_text())["output_root"])
    before = sorted(p.name for p in out.rglob("events/*.json"))
    capsys.readouterr()
    assert main(["submit", str(study_file)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.name for p in out.rglob("events/*.json")) == before


def test_report_has_the_arms_deltas_and_plot(submitted, capsys):
    rep = cli_json("report", "ci", capsys=capsys)
    main_curve = next(c for c in rep["curves"] if c["task"] == "imagenet1k")
    assert main_curve["arms"] == ["random", "perceptual", "shuffled", "pixel", "norm_matched", "posthoc"]
    assert [r["epoch"] for r in main_curve["rows"]] == [1, 2]
    row = main_curve["rows"][-1]
    assert row["delta_perceptual"] == pytest.approx(row["perceptual"] - row["random"])
    nights = next(c for c in rep["curves"] if c["metric"] == "nights_total_2afc")
    assert [r["epoch"] for r in nights["rows"]] == [0, 1, 2]
    (group,) = rep["groups"]
    total = group["nights"]["nights_total_2afc"]["rows"][0]["deltas"]["perceptual-random"]
    assert total["method"] == "examples" and not total["decides"] and total["lo"] <= total["delta"] <= total["hi"]
    # the posthoc arm is compared at its source epoch only, without an emergence curve
    post = group["main"]["emergence"]["posthoc-random"]
    assert post == {"epochs_used": [2], "at_source_epochs": True}
    assert group["last"]["perceptual-posthoc"]["epoch"] == 2
    png = Path(rep["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logs_prints_a_jobs_log(submitted, capsys):
    capsys.readouterr()
    assert main(["logs", "ci", "perceptual-tiny-e2-s0"]) == 0
    assert "pisweep" in capsys.readouterr().out


def test_status_by_name_and_unknown_name(submitted, capsys):
    assert main(["status", "no-such-study"]) == 2
    assert "no study named 'no-such-study'" in capsys.readouterr().err
