"""The dose axis (grid.nights_fraction): a seeded, nested share of NIGHTS' train triplets for the perceptual and
shuffled inits, the same for every seed; val and test whole."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from pisweep.data.nights import dose_subset, read_triplets
from pisweep.data.synth import SynthConfig, synthesize
from pisweep.errors import SpecError
from pisweep.models import TINY_CONFIG
from pisweep.study.load import load_study, study_from_json
from pisweep.study.plan import grid_size, make_plan


def spec(**grid) -> dict:
    return {"name": "d", "output_root": "/out", "data": {"synthetic": {"root": "/d", "train_scales": {"s": 64}}},
            "model": {"name": "pisweep-tiny", "config": TINY_CONFIG},
            "grid": {"init": ["random", "perceptual", "shuffled", "pixel", "norm_matched"], "scale": ["s"],
                     "epochs": [2], "seed": [0, 1], "nights_fraction": [0.05, 0.25, 1.0], **grid}}


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    cfg = SynthConfig(seed=6, nights_triplets=200, nights_low_vote_rows=3, train_scales={"t": 8}, samples_per_shard=8,
                      eval_tasks=["renderedsst2"], eval_examples_per_class=2)
    return synthesize(tmp_path_factory.mktemp("n") / "set", cfg).nights_root


def test_dose_subsets_are_nested_sized_and_independent_of_the_csv_order(nights_root, tmp_path):
    train = read_triplets(nights_root, "train")
    ids = {f: [t.id for t in dose_subset(train, f)] for f in (0.05, 0.25, 0.5, 1.0)}
    for f, chosen in ids.items():
        assert len(chosen) == math.ceil(f * len(train)) and len(set(chosen)) == len(chosen)
    assert set(ids[0.05]) < set(ids[0.25]) < set(ids[0.5]) < set(ids[1.0]) == {t.id for t in train}
    assert ids[0.25] == [t.id for t in train if t.id in set(ids[0.25])]  # in csv order
    # the same triplets whatever the order of data.csv's rows (a re-export, a download in another order)
    with open(nights_root / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    copy = tmp_path / "nights"
    copy.mkdir()
    for name in ("ref", "distort"):
        (copy / name).symlink_to(nights_root / name)
    with open(copy / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(reversed(rows))
    again = read_triplets(copy, "train")
    assert {t.id for t in dose_subset(again, 0.25)} == set(ids[0.25])
    # val and test are never subset: the dose is of the training triplets only
    assert len(read_triplets(nights_root, "val")) > 0


def test_the_dose_axis_multiplies_only_the_perceptual_and_shuffled_inits():
    plan = make_plan(study_from_json(spec()))
    arms = sorted({r.arm for r in plan.runs})
    assert arms == sorted(["random", "perceptual", "perceptual@0.05", "perceptual@0.25", "shuffled",
                           "shuffled@0.05", "shuffled@0.25", "pixel", "norm_matched"])
    inits = {(i.method, i.fraction, i.seed): i for i in plan.inits}
    for (method, fraction, seed), init in inits.items():
        if method == "shuffled":  # a control waits for the perceptual init of its seed and dose
            assert init.after == inits[("perceptual", fraction, seed)].uid
        if method in ("pixel", "norm_matched"):
            assert fraction == 1.0 and init.after == inits[("perceptual", 1.0, seed)].uid
    assert inits[("perceptual", 0.25, 0)].label == "init-perceptual@0.25-s0"
    assert len({i.uid for i in plan.inits}) == len(plan.inits)
    size = grid_size(study_from_json(spec()))
    assert (size.inits, size.runs, size.evals) == (len(plan.inits), len(plan.runs), plan.n_evals)


def test_all_of_nights_keeps_the_uids_a_study_without_the_axis_has():
    without = make_plan(study_from_json({**spec(), "grid": {**spec()["grid"], "nights_fraction": [1.0]}}))
    dosed = make_plan(study_from_json(spec()))
    full = {r.label: r.uid for r in dosed.runs if "@" not in r.label}
    assert full == {r.label: r.uid for r in without.runs}
    assert {i.label: i.uid for i in dosed.inits if i.fraction == 1.0} == {i.label: i.uid for i in without.inits}


@pytest.mark.parametrize("fractions, message", [
    ([0.25, 0.5], r"grid.nights_fraction: .*must include 1.0"),
    ([0.0, 1.0], r"grid.nights_fraction: .*in \(0, 1\]"),
    ([1.5, 1.0], r"grid.nights_fraction: .*in \(0, 1\]"),
    ([0.5, 0.5, 1.0], r"grid.nights_fraction: .*duplicate values"),
])
def test_bad_fractions_are_refused_with_the_field(tmp_path, fractions, message):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(nights_fraction=fractions)))
    with pytest.raises(SpecError, match=message):
        load_study(path)


def test_every_seed_trains_on_the_same_share(nights_root, tmp_path):
    from pisweep.job.context import JobContext
    from pisweep.train.stage1 import NightsTrainer

    s = study_from_json({**spec(), "stage1": {"workers": 0, "global_batch_size": 16, "optim": {"warmup_steps": 1}}})
    ids = {}
    for seed in (0, 1):
        trainer = NightsTrainer(JobContext(uid="d", folder=tmp_path / f"s{seed}"), s, "perceptual", seed,
                                nights_root, "cpu", fraction=0.25)
        ids[seed] = [t.id for t in trainer.train_ds.triplets]
        assert len(trainer.eval_ds["val"]) == len(read_triplets(nights_root, "val"))  # val whole
    assert ids[0] == ids[1] == [t.id for t in dose_subset(read_triplets(nights_root, "train"), 0.25)]
