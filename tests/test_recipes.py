"""Recipes: the authors' fork and open_clip's conventions as named defaults, each field still the file's to set;
studies recorded before recipes keep what they ran; `pisweep plan` shows each run's steps and the recipes side by
side; a control's stage-1 hand-off waits for its seed's perceptual init."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pisweep.cli.main import main
from pisweep.errors import SpecError
from pisweep.ledger.queries import JobRow, Snapshot
from pisweep.study.load import load_study, study_from_json
from pisweep.study.plan import grid_size, make_plan
from pisweep.study.work import next_work

ROOT = Path(__file__).resolve().parent.parent

STUDY = """
name: r
output_root: out
{recipe}
data:
  nights: /data/nights
  train:
    s1m: {{shards: "/data/yfcc/{{00000..01539}}.tar", samples: 1000000}}
    s15m: {{shards: "/data/yfcc/{{00000..01539}}.tar", samples: 15000000}}
{extra}
grid: {{init: [random, perceptual, shuffled], scale: [s1m, s15m], seed: [0, 1]}}
"""


def write(tmp_path: Path, recipe: str = "", extra: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(STUDY.format(recipe=recipe, extra=extra))
    return path


def test_the_authors_recipe_is_the_fork_as_it_runs(tmp_path):
    s = load_study(write(tmp_path, "recipe: authors"))
    assert s.model.init_logit_scale == 4.60517  # vit_b_32.json init_logit_scale
    assert (s.stage2.global_batch_size, s.stage2.accumulation_steps) == (1024 * 8 * 6, 6)
    assert s.stage2.grad_clip is None and s.stage2.logit_scale_clamp == "in_loss"
    assert s.stage2.interpolation == "bilinear"
    assert (s.stage2.optim.warmup_steps, s.stage2.optim.warmup_fraction, s.stage2.optim.schedule) == (2500, None,
                                                                                                       "fork")
    assert s.stage1.handoff == "last" and s.stage1.optim.schedule == "fork" and s.stage1.optim.warmup_steps == 150
    assert s.stage1.drop_last
    plain = load_study(write(tmp_path))
    assert plain.recipe == "openclip" and plain.stage2.optim.warmup_fraction == 0.04267
    assert plain.stage2.grad_clip == 3.0 and plain.model.init_logit_scale is None


def test_what_the_file_sets_wins_over_the_recipe(tmp_path):
    s = load_study(write(tmp_path, "recipe: authors", "stage2: {grad_clip: 1.0, optim: {warmup_fraction: 0.1}}"))
    assert s.stage2.grad_clip == 1.0
    # one choice: a warmup fraction in the file replaces the recipe's step count
    assert (s.stage2.optim.warmup_fraction, s.stage2.optim.warmup_steps) == (0.1, None)
    assert s.stage2.accumulation_steps == 6 and s.stage2.optim.schedule == "fork"  # the rest is the recipe's
    assert load_study(write(tmp_path, "", "stage2: {optim: {lr: 1.0e-3}}")).stage2.optim.warmup_fraction == 0.04267


def test_bad_recipe_and_warmup_name_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"recipe.*'openclip' or 'authors'"):
        load_study(write(tmp_path, "recipe: mine"))
    both = "stage2: {optim: {warmup_steps: 10, warmup_fraction: 0.1}}"
    with pytest.raises(SpecError, match=r"stage2\.optim.*not both"):
        load_study(write(tmp_path, "", both))
    with pytest.raises(SpecError, match=r"stage1.*handoff epoch 40 is after the last epoch \(32\)"):
        load_study(write(tmp_path, "", "stage1: {handoff: 40}"))


def test_a_study_recorded_before_recipes_keeps_what_it_ran(tmp_path):
    path = write(tmp_path)
    old = load_study(path, 2)
    assert old.stage2.optim.warmup_steps == 2500 and old.stage2.optim.warmup_fraction is None
    assert old.data.subset == "prefix"
    dump = old.model_dump(mode="json")  # as a v2 ledger stored it: without the fields added since
    for section, key in (("stage2", "interpolation"), ("stage2", "logit_scale_clamp"), ("stage1", "handoff")):
        del dump[section][key]
    for section in ("stage1", "stage2"):
        del dump[section]["optim"]["warmup_fraction"], dump[section]["optim"]["schedule"]
    del dump["data"]["subset"], dump["recipe"], dump["model"]["init_logit_scale"]
    assert study_from_json(dump, 2) == old
    assert make_plan(study_from_json(dump, 2), 2).runs == make_plan(old, 2).runs
    new = load_study(path)
    assert {r.uid for r in make_plan(new).runs}.isdisjoint({r.uid for r in make_plan(old, 2).runs})
    assert all(i.after is None for i in make_plan(old, 2).inits)  # v2 controls chose their own epoch


def test_plan_json_gives_each_runs_steps(tmp_path, capsys):
    assert main(["plan", str(write(tmp_path)), "--json"]) == 0
    runs = {r["label"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    small, big = runs["random-s1m-e32-s0"], runs["random-s15m-e32-s0"]
    assert (small["optimizer_steps_per_epoch"], small["total_steps"]) == (122, 3904)  # 1M // 8192, x 32
    assert (big["optimizer_steps_per_epoch"], big["total_steps"]) == (1831, 58592)
    assert (small["warmup_steps"], big["warmup_steps"]) == (167, 2500)  # 4.267 % of each
    assert small["warmup_epochs"] == pytest.approx(big["warmup_epochs"], abs=0.01)  # 1.37 epochs at both
    assert main(["plan", str(write(tmp_path, "", "stage2: {optim: {warmup_steps: 2500}}")), "--json"]) == 0
    fixed = {r["label"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert fixed["random-s1m-e32-s0"]["warmup_steps"] == 2500  # 64 % of the 1M run: the confound a fraction removes


def test_compare_recipes_shows_fields_steps_and_lr(tmp_path, capsys):
    assert main(["plan", str(write(tmp_path)), "--compare-recipes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fields = {f["field"]: (f["openclip"], f["authors"]) for f in data["fields"]}
    assert fields["stage2.grad_clip"] == (3.0, None) and fields["stage1.handoff"] == ("best_val", "last")
    assert "stage2.optim.lr" not in fields  # the same in both
    big = next(r for r in data["scales"] if r["scale"] == "s15m")
    assert big["authors"]["optimizer_steps_per_epoch"] == 305 and big["openclip"]["optimizer_steps_per_epoch"] == 1831
    assert big["authors"]["lr_after_epoch"]["32"] / 5e-4 > 0.99  # the fork's LR has hardly decayed at epoch 32
    assert big["openclip"]["lr_after_epoch"]["32"] < 1e-9
    assert data["lr_epochs"] == [1, 15, 32]
    assert main(["plan", str(write(tmp_path)), "--compare-recipes"]) == 0
    assert "stage2.logit_scale_clamp" in capsys.readouterr().out


def test_a_control_hands_on_its_seeds_perceptual_epoch(tmp_path):
    plan = make_plan(load_study(write(tmp_path)))
    perceptual = {i.seed: i.uid for i in plan.inits if i.method == "perceptual"}
    assert {i.seed: i.after for i in plan.inits if i.method == "shuffled"} == perceptual
    only_control = load_study(write(tmp_path))
    only_control = only_control.model_copy(update={"grid": only_control.grid.model_copy(
        update={"init": ["random", "shuffled"]})})
    p = make_plan(only_control)
    assert sorted(i.method for i in p.inits) == ["perceptual", "perceptual", "shuffled", "shuffled"]
    assert grid_size(only_control).inits == len(p.inits)  # the perceptual inits its controls wait for count
    fixed = make_plan(load_study(write(tmp_path, "", "stage1: {handoff: last}")))
    assert all(i.after is None for i in fixed.inits)  # a fixed epoch is known: nobody waits


def _row(job, state: str, failures: int = 0) -> JobRow:
    return JobRow(job.uid, "init", job.label, job.method, None, None, None, job.seed, "/f", state, "boom", 0, 0,
                  failures, 0, None, None, None, 0, None)


def test_a_control_init_waits_for_and_is_blocked_by_its_perceptual_init(tmp_path):
    plan = make_plan(load_study(write(tmp_path)))
    perceptual = [i for i in plan.inits if i.method == "perceptual"]
    shuffled = [i for i in plan.inits if i.method == "shuffled"]
    work = next_work(plan, Snapshot({}, {}, {}), max_failures=0)
    assert {i.uid for i in work.inits} == {i.uid for i in perceptual}
    assert {i.uid for i in work.inits_waiting} == {i.uid for i in shuffled}
    jobs = {perceptual[0].uid: _row(perceptual[0], "completed"), perceptual[1].uid: _row(perceptual[1], "failed", 3)}
    work = next_work(plan, Snapshot(jobs, {}, {}), max_failures=0)
    ready = next(i for i in shuffled if i.seed == perceptual[0].seed)
    stuck = next(i for i in shuffled if i.seed == perceptual[1].seed)
    assert [i.uid for i in work.inits] == [ready.uid] and work.inits_waiting == []
    assert "init-perceptual-s1" in work.blocked[stuck.uid]
    assert any(r.init_uid == stuck.uid for r in plan.runs if r.uid in work.blocked)  # and so are its runs


def test_status_says_what_a_control_init_waits_for(tmp_path, monkeypatch, capsys):
    from pisweep.commands import session as app
    from pisweep.commands.studyref import resolve

    monkeypatch.setenv("PISWEEP_HOME", str(tmp_path / "home"))
    path = write(tmp_path)
    with app.open_session(resolve(str(path))) as s:
        app.record(s)  # recorded, nothing run
    capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    cells = {c["label"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells["init-shuffled-s1"]["waits_for"] == "init-perceptual-s1"
    assert cells["init-shuffled-s1"]["hands_on_epoch_of"] == "init-perceptual-s1"
    assert "waits_for" not in cells["init-perceptual-s1"]
    assert main(["status", str(path)]) == 0
    assert "waits for init-perceptual-s0" in capsys.readouterr().out
