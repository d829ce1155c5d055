"""The specificity controls: pixel votes (stage 1 on the lowest-level similarity) and norm_matched (the random
tower at the perceptual init's norms), and how the plan matches them to their seed's perceptual init."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pisweep.atomic import atomic_write_json
from pisweep.data.nights import Triplet, TripletDataset, pixel_targets, pixel_vote, read_triplets
from pisweep.data.synth import SynthConfig, synthesize
from pisweep.job.context import JobContext
from pisweep.job.paths import JobPaths
from pisweep.models import TINY_CONFIG, create_model
from pisweep.study.load import study_from_json
from pisweep.study.plan import grid_size, make_plan
from pisweep.train.augment import nights_transform
from pisweep.train.checkpoint import save_weights
from pisweep.train.norm_matched import rescale_to_norms, run_norm_matched
from pisweep.train.stage2 import build_model

NAME = "pisweep-tiny"


def study(init=("random", "perceptual", "pixel", "norm_matched"), seeds=(0, 1), **over):
    spec = {"name": "c", "output_root": "/out", "data": {"synthetic": {"root": "/d", "train_scales": {"s": 64}}},
            "model": {"name": NAME, "config": TINY_CONFIG},
            "grid": {"init": list(init), "scale": ["s"], "epochs": [2], "seed": list(seeds)}, **over}
    return study_from_json(spec)


# -- pixel votes ------------------------------------------------------------------------------------------------------
def test_pixel_vote_is_the_nearer_distortion_in_squared_l2():
    ref = torch.zeros(3, 4, 4)
    near, far = torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.3)
    assert pixel_vote(ref, near, far) == 0.0  # left is nearer: the votes' 0
    assert pixel_vote(ref, far, near) == 1.0  # right is nearer: 1
    assert pixel_vote(ref, near, -near) == 0.5  # as near on both sides: a tie
    # squared L2 over every element, not a per-pixel vote: one large difference outweighs many small ones
    spike = torch.zeros(3, 4, 4)
    spike[0, 0, 0] = 1.0
    assert pixel_vote(ref, spike, torch.full((3, 4, 4), 0.2)) == 0.0  # 1.0 < 48 x 0.04 = 1.92


def test_pixel_votes_are_taken_on_the_stage1_transforms_tensors(tmp_path):
    """A constructed triplet: the reference is red, one distortion a darker red, the other blue of the same
    brightness. The human vote (here: blue is closer) is replaced by the pixel one (dark red is)."""
    paths = {}
    for name, colour in {"ref": (200, 30, 30), "dark": (150, 20, 20), "blue": (30, 30, 200)}.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (40, 40), colour).save(paths[name])
    transform = nights_transform(32)
    trip = [Triplet("0", paths["ref"], paths["blue"], paths["dark"], 0.0, False),  # humans: left (blue) closer
            Triplet("1", paths["ref"], paths["dark"], paths["blue"], 1.0, False)]  # humans: right (blue) closer
    ds = TripletDataset(trip, transform, pixel_votes=True)
    assert [float(ds[i][3]) for i in range(2)] == [1.0, 0.0]  # pixels: the dark red is closer, on either side
    assert pixel_targets(ds).tolist() == [1.0, 0.0]
    assert ds.targets.tolist() == [0.0, 1.0]  # the human votes stay what the 2AFC scores read
    r, a, b = (transform(Image.open(p).convert("RGB")) for p in (paths["ref"], paths["blue"], paths["dark"]))
    assert ((r - b) ** 2).sum() < ((r - a) ** 2).sum()  # the documented rule, by hand


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    cfg = SynthConfig(seed=4, nights_triplets=60, nights_low_vote_rows=2, train_scales={"t": 8}, samples_per_shard=8,
                      eval_tasks=["renderedsst2"], eval_examples_per_class=2)
    return synthesize(tmp_path_factory.mktemp("n") / "set", cfg).nights_root


@pytest.mark.slow
def test_the_pixel_control_trains_on_pixel_votes_and_hands_on_the_perceptual_epoch(tmp_path, nights_root):
    from pisweep.train.stage1 import NightsTrainer, run_stage1

    s = study(stage1={"epochs": 2, "global_batch_size": 16, "workers": 0, "optim": {"warmup_steps": 1}})
    trainer = NightsTrainer(JobContext(uid="x", folder=tmp_path / "x"), s, "pixel", 0, nights_root, "cpu")
    train = read_triplets(nights_root, "train", s.stage1.min_votes)
    expect = pixel_targets(TripletDataset(train, trainer.train_ds.transform, pixel_votes=True))
    assert [float(trainer.train_ds[i][3]) for i in range(len(train))] == expect.tolist()
    assert 0 < expect.mean() < 1 and not np.array_equal(expect, trainer.train_ds.targets)  # not the human votes
    perceptual = tmp_path / "perceptual"
    atomic_write_json(JobPaths(perceptual).handoff, {"epoch": 1})
    out = run_stage1(JobContext(uid="p", folder=tmp_path / "p"), s, "pixel", 0, nights_root,
                     handoff_from=perceptual)
    assert torch.load(out, weights_only=True)["epoch"] == 1


# -- norm_matched -----------------------------------------------------------------------------------------------------
def test_rescaled_tensors_have_the_targets_norms_and_their_own_directions():
    g = torch.Generator().manual_seed(0)
    directions = {"w": torch.randn(5, 3, generator=g), "b": torch.zeros(4), "n": torch.tensor([3, 4])}
    norms = {"w": torch.randn(5, 3, generator=g) * 7, "b": torch.randn(4, generator=g), "n": torch.tensor([1, 1])}
    out, kept = rescale_to_norms(directions, norms)
    assert torch.linalg.norm(out["w"]).item() == pytest.approx(torch.linalg.norm(norms["w"]).item(), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(out["w"].flatten(), directions["w"].flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    assert sorted(kept) == ["b", "n"] and torch.equal(out["b"], directions["b"])  # no direction to keep: as it was


@pytest.mark.slow
def test_norm_matched_is_the_random_arms_tower_at_the_perceptual_inits_norms(tmp_path):
    s = study()
    perceptual = tmp_path / "perceptual"
    torch.manual_seed(123)
    trained = create_model(NAME, TINY_CONFIG)[0]
    with torch.no_grad():  # a "trained" tower whose scales differ from open_clip's init, tensor by tensor
        for i, p in enumerate(trained.visual.parameters()):
            p.mul_(1.5 + 0.1 * i).add_(0.01)
    save_weights(JobPaths(perceptual).init_weights, 3, trained)
    atomic_write_json(JobPaths(perceptual).handoff, {"epoch": 3})
    out = run_norm_matched(JobContext(uid="n", folder=tmp_path / "n"), s, 1, perceptual)
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 3  # the perceptual init's hand-off epoch
    got = {k[len("visual."):]: v for k, v in saved["state_dict"].items() if k.startswith("visual.")}
    random_tower = build_model(s, "random", None, 1)[0].visual.state_dict()  # the random arm's start, seed 1
    target = trained.visual.state_dict()
    kept = []
    for name, r in random_tower.items():
        if not r.is_floating_point() or r.norm() == 0:
            kept.append(name)
            assert torch.equal(got[name], r), name
            continue
        assert got[name].norm().item() == pytest.approx(target[name].norm().item(), rel=1e-5), name
        cos = torch.nn.functional.cosine_similarity(got[name].flatten().double(), r.flatten().double(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-6), name
    import json

    assert json.loads(JobPaths(tmp_path / "n").handoff.read_text())["kept_as_random"] == kept


# -- the plan ---------------------------------------------------------------------------------------------------------
def test_controls_wait_for_their_seeds_perceptual_init():
    plan = make_plan(study())
    perceptual = {i.seed: i.uid for i in plan.inits if i.method == "perceptual"}
    for method in ("pixel", "norm_matched"):
        assert {i.seed: i.after for i in plan.inits if i.method == method} == perceptual
    # with a fixed hand-off a trained control chooses nothing; norm_matched still needs the perceptual weights
    fixed = make_plan(study(stage1={"handoff": "last"}))
    assert {i.method: i.after is not None for i in fixed.inits if i.seed == 0} == \
        {"perceptual": False, "pixel": False, "norm_matched": True}
    # norm_matched alone brings the perceptual init it is made of
    alone = make_plan(study(init=("random", "norm_matched")))
    assert sorted(i.method for i in alone.inits) == ["norm_matched", "norm_matched", "perceptual", "perceptual"]
    for s in (study(), study(init=("random", "norm_matched")), study(init=("random", "pixel"))):
        size, p = grid_size(s), make_plan(s)
        assert (size.inits, size.runs, size.evals) == (len(p.inits), len(p.runs), p.n_evals)


def test_the_norm_matched_uid_holds_the_random_towers_seed():
    # v2+ folds seed_offset into a trained init's seed: (seed 0, offset 1) is (seed 1, offset 0). norm_matched's
    # random tower is the run seed's, so those two are different inits.
    a = make_plan(study(init=("random", "norm_matched"), seeds=(0,), stage1={"seed_offset": 1}))
    b = make_plan(study(init=("random", "norm_matched"), seeds=(1,)))
    uid = {(p, i.method): i.uid for p, plan in (("a", a), ("b", b)) for i in plan.inits}
    assert uid[("a", "perceptual")] == uid[("b", "perceptual")]
    assert uid[("a", "norm_matched")] != uid[("b", "norm_matched")]
