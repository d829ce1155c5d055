"""Stage 1 (perceptual init on NIGHTS): the loss learns a visual rule, the lowest-val-loss epoch is kept as a
loadable init.pt, 2AFC follows DreamSim, the shuffled control permutes votes deterministically, resume is exact."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pisweep.atomic import sha256_file
from pisweep.data.nights import score_2afc
from pisweep.errors import TrainingError
from pisweep.job.context import JobContext, Preempted
from pisweep.job.events import read_events
from pisweep.models import TINY_CONFIG, create_model
from pisweep.study.spec import DataSpec, GridSpec, ModelSpec, OptimSpec, ScaleData, Stage1Spec, Study, WandbSpec
from pisweep.testing import StopAfter
from pisweep.train.stage1 import NightsTrainer, hinge_loss, run_stage1, triplet_distances

pytestmark = pytest.mark.slow  # trains, or starts processes

NAME = "pisweep-tiny"
COLUMNS = ["id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "prompt", "split",
           "is_imagenet"]


def make_nights(root: Path, counts: dict[str, int], seed: int = 0, low_votes: int = 4) -> Path:
    """A NIGHTS folder whose (unanimous) votes follow a visual rule: the distortion with the reference's hue
    (only brighter or darker) is closer than the one with its colour channels rotated. A random tower gets
    about 0.85 of it right, below the margin; training reaches 1.0. ``low_votes`` extra rows have votes < 6."""
    r = np.random.default_rng(seed)
    rows, i = [], 0
    splits = [s for s, n in counts.items() for _ in range(n)] + ["train"] * low_votes
    for k, split in enumerate(splits):
        folder, item = divmod(i, 1000)
        paths = [f"ref/{folder:03d}/{item:03d}.png", f"distort/{folder:03d}/{item:03d}_0.png",
                 f"distort/{folder:03d}/{item:03d}_1.png"]
        base = r.integers(40, 216, 3).astype(float)
        close, far = base * r.choice([0.6, 1.4]), base[[1, 2, 0]]
        right_closer = bool(r.integers(2))
        colours = [base, far if right_closer else close, close if right_closer else far]
        for rel, colour in zip(paths, colours):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(colour + r.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / rel)
        votes = 6 if k < len(splits) - low_votes else 4
        rows.append({"id": i, "left_vote": int(not right_closer), "right_vote": int(right_closer), "votes": votes,
                     "ref_path": paths[0], "left_path": paths[1], "right_path": paths[2], "prompt": "An image of x",
                     "split": split, "is_imagenet": str(k % 2 == 0)})
        i += 1
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    return make_nights(tmp_path_factory.mktemp("nights"), {"train": 48, "val": 16, "test": 16})


def study(epochs: int = 6, batch: int = 16, lr: float = 2e-3, warmup: int = 3) -> Study:
    return Study(name="t", output_root="/unused",
                 data=DataSpec(train={"s": ScaleData(shards="unused-{0..1}.tar", samples=8)}),
                 model=ModelSpec(name=NAME, config=TINY_CONFIG),
                 stage1=Stage1Spec(epochs=epochs, global_batch_size=batch, workers=0,
                                   optim=OptimSpec(lr=lr, warmup_steps=warmup)),
                 grid=GridSpec(scale=["s"]), wandb=WandbSpec(mode="disabled"))


def events(folder: Path, kind: str) -> list[dict]:
    return [e["data"] for _, e in read_events(folder) if e["kind"] == kind]




def test_loss_decreases_and_lowest_val_loss_init_loads_into_a_fresh_model(tmp_path, nights_root):
    ctx = JobContext(uid="init-a", folder=tmp_path / "init")
    path = run_stage1(ctx, study(), "perceptual", seed=0, nights_root=nights_root)
    assert path == ctx.folder / "init.pt"

    done = events(ctx.folder, "epoch_done")
    assert [e["epoch"] for e in done] == list(range(1, 7)) and done[-1]["step"] == 18  # 48 / 16 x 6
    assert set(done[0]["metrics"]) == {"train_loss", "val_loss", "nights_val_2afc", "nights_test_imagenet_2afc",
                                       "nights_test_no_imagenet_2afc", "nights_total_2afc"}
    train_loss = [e["metrics"]["train_loss"] for e in done]
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert done[-1]["metrics"]["nights_val_2afc"] >= 0.9

    val = [e["metrics"]["val_loss"] for e in done]
    best = int(np.argmin(val)) + 1
    (chosen,) = events(ctx.folder, "init_selected")
    assert chosen == {"epoch": best, "path": str(path), "val_loss": min(val), "kind": "init",
                      "sha256": sha256_file(path), "bytes": path.stat().st_size}

    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == best
    fresh, _, _, _ = create_model(NAME, TINY_CONFIG, pretrained=path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    untrained, _, _, _ = create_model(NAME, TINY_CONFIG)
    assert not torch.equal(untrained.state_dict()["visual.proj"], saved["state_dict"]["visual.proj"])


def test_the_epoch_with_the_lowest_val_loss_is_kept(tmp_path, nights_root, monkeypatch):
    scripted = iter([0.5, 0.3, 0.4])
    seen: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(self):
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return {"val_loss": next(scripted), "nights_val_2afc": 0.5}

    monkeypatch.setattr(NightsTrainer, "evaluate", fake_evaluate)
    ctx = JobContext(uid="init-b", folder=tmp_path / "init")
    path = run_stage1(ctx, study(epochs=3), "perceptual", seed=0, nights_root=nights_root)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 2
    for k, v in seen[1].items():
        assert torch.equal(saved["state_dict"][k], v), k
    assert not torch.equal(saved["state_dict"]["visual.proj"], seen[2]["visual.proj"])
    (chosen,) = events(ctx.folder, "init_selected")
    assert (chosen["epoch"], chosen["val_loss"]) == (2, 0.3)


def test_2afc_follows_dreamsim_including_ties_and_hinge_follows_the_authors():
    d0 = np.array([0.1, 0.5, 0.3, 0.3, 0.2, 0.9])
    d1 = np.array([0.2, 0.4, 0.3, 0.3, 0.2, 0.1])
    t = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    expected = np.mean([(a < b) * (1 - y) + (b < a) * y + (a == b) * 0.5 for a, b, y in zip(d0, d1, t)])
    assert expected == pytest.approx((1 + 1 + 0.5 + 0.5 + 0.5 + 0) / 6)
    assert score_2afc(d0, d1, t) == pytest.approx(expected)
    assert score_2afc(torch.tensor(d0), torch.tensor(d1), torch.tensor(t)) == pytest.approx(expected)

    margin = 0.05
    loss = hinge_loss(torch.tensor(d0), torch.tensor(d1), torch.tensor(t), margin)
    manual = np.mean([max(0.0, margin - (2 * y - 1) * (a - b)) for a, b, y in zip(d0, d1, t)])
    assert float(loss) == pytest.approx(manual)


def test_distances_are_one_minus_cosine_of_projected_embeddings():
    model, _, _, _ = create_model(NAME, TINY_CONFIG)
    x = torch.randn(3, 2, 3, 64, 64)
    d0, d1 = triplet_distances(model, x[0], x[1], x[2])
    f = [torch.nn.functional.normalize(model.encode_image(x[i]), dim=-1) for i in range(3)]
    assert torch.allclose(d0, 1 - torch.nn.functional.cosine_similarity(f[0], f[1]), atol=1e-6)
    assert torch.allclose(d1, 1 - torch.nn.functional.cosine_similarity(f[0], f[2]), atol=1e-6)


def test_shuffled_control_permutes_votes_deterministically(tmp_path, nights_root):
    def stage(method: str, seed: int) -> NightsTrainer:
        return NightsTrainer(JobContext(uid="x", folder=tmp_path / f"{method}{seed}"), study(), method, seed,
                             nights_root, "cpu")

    real, a, b, other = stage("perceptual", 0), stage("shuffled", 0), stage("shuffled", 0), stage("shuffled", 1)
    assert len(real.train_ds) == 48  # the 4 rows with votes < 6 are dropped
    assert np.array_equal(a.train_ds.targets, b.train_ds.targets)
    assert sorted(a.train_ds.targets.tolist()) == sorted(real.train_ds.targets.tolist())
    assert not np.array_equal(a.train_ds.targets, real.train_ds.targets)
    assert not np.array_equal(a.train_ds.targets, other.train_ds.targets)
    assert [t.id for t in a.train_ds.triplets] == [t.id for t in real.train_ds.triplets]  # same images
    # the control selects its epoch on permuted val votes, but reports 2AFC on the real ones
    assert not np.array_equal(a.val_select_targets, real.val_select_targets)
    assert np.array_equal(a.eval_ds["val"].targets, real.eval_ds["val"].targets)
    with pytest.raises(TrainingError, match="method"):
        run_stage1(JobContext(uid="x", folder=tmp_path / "bad"), study(), "random", 0, nights_root)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_preempted_stage1_resumes_to_the_same_init(tmp_path, nights_root, one_thread):
    s = study(epochs=3)
    ref = run_stage1(JobContext(uid="ref", folder=tmp_path / "ref"), s, "shuffled", 0, nights_root)
    folder = tmp_path / "cut"
    with pytest.raises(Preempted) as info:
        run_stage1(StopAfter(uid="cut", folder=folder, stop_at=4, signal_name="SIGTERM"), s, "shuffled", 0, nights_root)
    assert info.value.step == 4
    cut = run_stage1(JobContext(uid="cut", folder=folder), s, "shuffled", 0, nights_root)
    a, b = torch.load(ref, weights_only=True), torch.load(cut, weights_only=True)
    assert a["epoch"] == b["epoch"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [e["metrics"] for e in events(ref.parent, "epoch_done")] == \
        [e["metrics"] for e in events(folder, "epoch_done")]
    # a finished init answers again without training
    again = JobContext(uid="cut", folder=folder)
    assert run_stage1(again, s, "shuffled", 0, nights_root) == cut
    assert len(events(folder, "epoch_done")) == 3 and len(events(folder, "init_selected")) == 2


# ---- the hand-off (stage1.handoff) ----------------------------------------------------------------------------

def _scripted(monkeypatch, losses):
    """Val losses scripted per epoch; returns the weights each epoch ended with."""
    scripted = iter(losses)
    seen: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(self):
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return {"val_loss": next(scripted), "nights_val_2afc": 0.5}

    monkeypatch.setattr(NightsTrainer, "evaluate", fake_evaluate)
    return seen


def test_handoff_last_best_val_and_a_fixed_epoch(tmp_path, nights_root, monkeypatch):
    import json

    base = study(epochs=3)
    seen = _scripted(monkeypatch, [0.5, 0.3, 0.4])
    best = run_stage1(JobContext(uid="b", folder=tmp_path / "best"), base, "perceptual", 0, nights_root)
    assert torch.load(best, weights_only=True)["epoch"] == 2
    assert json.loads((tmp_path / "best" / "handoff.json").read_text())["epoch"] == 2
    by_epoch = list(seen)
    for rule, epoch in (("last", 3), (2, 2)):
        seen = _scripted(monkeypatch, [0.5, 0.3, 0.4])
        s = base.model_copy(update={"stage1": base.stage1.model_copy(update={"handoff": rule})})
        folder = tmp_path / f"h{rule}"
        saved = torch.load(run_stage1(JobContext(uid="h", folder=folder), s, "perceptual", 0, nights_root),
                           weights_only=True)
        assert saved["epoch"] == epoch
        for k, v in by_epoch[epoch - 1].items():  # the weights a full run had there: the same schedule
            assert torch.equal(saved["state_dict"][k], v), k
        assert [e["epoch"] for e in events(folder, "epoch_done")] == list(range(1, epoch + 1))  # stops there
        assert json.loads((folder / "handoff.json").read_text())["rule"] == rule


def test_a_control_hands_on_its_seeds_perceptual_epoch(tmp_path, nights_root, monkeypatch):
    import json

    s = study(epochs=3)
    _scripted(monkeypatch, [0.5, 0.3, 0.4])
    run_stage1(JobContext(uid="p", folder=tmp_path / "p"), s, "perceptual", 0, nights_root)
    _scripted(monkeypatch, [0.1, 0.9, 0.9])  # the control's own best would be epoch 1
    control = run_stage1(JobContext(uid="c", folder=tmp_path / "c"), s, "shuffled", 0, nights_root,
                         handoff_from=tmp_path / "p")
    assert torch.load(control, weights_only=True)["epoch"] == 2  # the perceptual init's epoch: as many updates
    assert json.loads((tmp_path / "c" / "handoff.json").read_text())["rule"] == "matched"
    with pytest.raises(TrainingError, match="has not completed"):
        run_stage1(JobContext(uid="c2", folder=tmp_path / "c2"), s, "shuffled", 0, nights_root,
                   handoff_from=tmp_path / "nowhere")


def test_epoch_batches_keep_or_drop_the_partial_last_batch():
    from pisweep.train.stage1 import epoch_batches

    kept = epoch_batches(10, 4, seed=0, epoch=1)
    assert [len(b) for b in kept] == [4, 4, 2] and sorted(sum(kept, [])) == list(range(10))
    assert epoch_batches(10, 4, seed=0, epoch=1, drop_last=True) == kept[:2]  # the fork's NIGHTS loader
