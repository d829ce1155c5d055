"""The NIGHTS reader against the synthetic NIGHTS csv, DreamSim's positional reading, and the world's judgments."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pisweep.data import world
from pisweep.data.nights import TripletDataset, read_triplets, score_2afc, subsets
from pisweep.data.synth import NIGHTS_COLUMNS, SynthConfig, synthesize
from pisweep.errors import DataError

CFG = SynthConfig(seed=5, nights_triplets=80, nights_low_vote_rows=12, train_scales={"t": 8}, samples_per_shard=8,
                  eval_tasks=["renderedsst2"], eval_examples_per_class=2)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("n") / "set", CFG).nights_root


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "data.csv", newline="") as f:
        return list(csv.DictReader(f))


def _copy_csv(src: Path, dst: Path, columns: list[str]) -> Path:
    """A NIGHTS root whose data.csv has ``columns`` (in that order) and whose images link to ``src``'s."""
    dst.mkdir()
    for sub in ("ref", "distort"):
        (dst / sub).symlink_to(src / sub)
    pd.read_csv(src / "data.csv")[columns].to_csv(dst / "data.csv", index=False)
    return dst


def test_csv_has_nights_column_order_and_vote_flags(nights):
    with open(nights / "data.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == NIGHTS_COLUMNS
    rows = _rows(nights)
    assert all({r["left_vote"], r["right_vote"]} == {"0", "1"} for r in rows)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(int(r["votes"]) >= 6 for r in rows) == CFG.nights_triplets
    assert sum(int(r["votes"]) < 6 for r in rows) == CFG.nights_low_vote_rows


def test_low_vote_rows_are_dropped(nights):
    rows = _rows(nights)
    for split in ("train", "val", "test"):
        got = read_triplets(nights, split)
        want = [r["id"] for r in rows if r["split"] == split and int(r["votes"]) >= 6]
        assert [t.id for t in got] == want
        assert len(read_triplets(nights, split, min_votes=0)) == sum(r["split"] == split for r in rows)
    assert all(t.ref.is_absolute() and t.ref.is_file() and t.right.name.endswith("_1.png")
               for t in read_triplets(nights, "train"))


def test_dreamsim_positional_reading_agrees_with_by_name_reader(nights):
    df = pd.read_csv(nights / "data.csv")
    df = df[df["votes"] >= 6]  # DreamSim's filter
    by_name = {t.id: t for split in ("train", "val", "test") for t in read_triplets(nights, split)}
    assert len(by_name) == len(df)
    for i in range(len(df)):
        row = df.iloc[i]
        t = by_name[str(row.iloc[0])]
        assert float(row.iloc[2]) == t.target  # col 2: p, DreamSim's target
        assert [str(row.iloc[c]) for c in (4, 5, 6)] == [str(p.relative_to(nights)) for p in (t.ref, t.left, t.right)]


def test_by_name_reader_ignores_column_order(nights, tmp_path):
    shuffled = _copy_csv(nights, tmp_path / "n2", list(reversed(NIGHTS_COLUMNS)))
    for split in ("train", "test"):
        a, b = read_triplets(nights, split), read_triplets(shuffled, split)
        assert [(t.id, t.target, t.is_imagenet, t.left.name) for t in a] == \
               [(t.id, t.target, t.is_imagenet, t.left.name) for t in b]


def test_simulated_votes_follow_the_world_distance(nights):
    triplets = read_triplets(nights, "train")
    agree = []
    for t in triplets:
        ref, left, right = world.nights_triplet(CFG.seed, int(t.id))
        agree.append((world.perceptual_distance(ref, right) < world.perceptual_distance(ref, left)) == (t.target == 1.0))
    assert np.mean(agree) > 0.9
    assert 0.2 < np.mean([t.target for t in triplets]) < 0.8  # both sides win sometimes
    # the id is the scene's index: the files on disk are those scenes
    t = triplets[0]
    scenes = world.nights_triplet(CFG.seed, int(t.id))
    for path, scene in zip((t.ref, t.left, t.right), scenes):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(world.render(scene, CFG.image_size)))


def test_subsets(nights):
    s = subsets(nights)
    assert set(s) == {"val", "test_imagenet", "test_no_imagenet"}
    assert all(len(v) > 0 for v in s.values())
    assert all(t.is_imagenet for t in s["test_imagenet"]) and not any(t.is_imagenet for t in s["test_no_imagenet"])
    assert len(s["test_imagenet"]) + len(s["test_no_imagenet"]) == len(read_triplets(nights, "test"))


def test_missing_things_raise_data_error_naming_them(nights, tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        read_triplets(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.csv"):
        read_triplets(tmp_path / "empty", "train")
    cols = [c for c in NIGHTS_COLUMNS if c != "right_vote"]
    with pytest.raises(DataError, match="right_vote"):
        read_triplets(_copy_csv(nights, tmp_path / "nocol", cols), "train")
    with pytest.raises(DataError, match="splits present"):
        read_triplets(nights, "training")
    broken = tmp_path / "broken"
    shutil.copytree(nights, broken)
    victim = read_triplets(broken, "val")[0].left
    victim.unlink()
    with pytest.raises(DataError, match=str(victim.relative_to(broken))):
        read_triplets(broken, "val")
    dataset = TripletDataset(read_triplets(broken, "val", check_files=False), _to_tensor)
    with pytest.raises(DataError, match=victim.name):
        dataset[0]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_triplet_dataset_and_shuffled_votes(nights):
    triplets = read_triplets(nights, "train")
    ds = TripletDataset(triplets, _to_tensor)
    ref, left, right, target = ds[0]
    assert ref.shape == left.shape == right.shape == (3, CFG.image_size, CFG.image_size)
    assert target.dtype == torch.float32 and float(target) == triplets[0].target
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, CFG.image_size, CFG.image_size) and batch[3].shape == (4,)

    original = [float(ds[i][3]) for i in range(len(ds))]
    shuffled = TripletDataset(triplets, _to_tensor, shuffle_votes_seed=1)
    again = TripletDataset(triplets, _to_tensor, shuffle_votes_seed=1)
    other = TripletDataset(triplets, _to_tensor, shuffle_votes_seed=2)
    assert list(shuffled.targets) == list(again.targets)  # deterministic
    assert sorted(shuffled.targets) == sorted(original)  # same label balance
    assert list(shuffled.targets) != original and list(other.targets) != list(shuffled.targets)
    assert torch.equal(shuffled[3][0], ds[3][0])  # images untouched


def test_score_2afc_matches_dreamsim_formula():
    d0 = np.array([1.0, 2.0, 3.0, 0.5])
    d1 = np.array([2.0, 1.0, 3.0, 0.1])
    t = np.array([0.0, 0.0, 1.0, 1.0])
    # per triplet: left closer & target left -> 1; right closer & target left -> 0; tie -> 0.5; right closer & t=1 -> 1
    assert score_2afc(d0, d1, t) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert score_2afc(torch.tensor(d0), torch.tensor(d1), torch.tensor(t)) == pytest.approx(0.625)
    assert score_2afc([1.0], [2.0], [1.0]) == 0.0
    with pytest.raises(ValueError):
        score_2afc(d0, d1[:2], t)


def test_the_total_is_dreamsims_size_weighted_mean_of_the_test_subsets():
    """DreamSim's eval_percep.py reports nights_total = (n_in * score_in + n_out * score_out) / (n_in + n_out)."""
    from pisweep.data.nights import outcomes_2afc, scores_by_subset

    d0, d1, t = np.array([1.0, 2.0, 3.0, 0.5]), np.array([2.0, 1.0, 3.0, 0.1]), np.array([0.0, 0.0, 1.0, 1.0])
    assert list(outcomes_2afc(d0, d1, t)) == [1.0, 0.0, 0.5, 1.0]
    outcomes = {"val": np.array([1.0, 0.0]), "test_imagenet": np.array([1.0, 1.0, 0.5]),
                "test_no_imagenet": np.array([0.0, 1.0, 0.0, 0.0, 1.0, 0.5, 1.0])}
    got = scores_by_subset(outcomes)
    assert got["nights_val_2afc"] == 0.5 and got["nights_test_imagenet_2afc"] == pytest.approx(2.5 / 3)
    assert got["nights_total_2afc"] == pytest.approx((3 * got["nights_test_imagenet_2afc"]
                                                      + 7 * got["nights_test_no_imagenet_2afc"]) / 10)
    assert got["nights_total_2afc"] != pytest.approx((got["nights_test_imagenet_2afc"]
                                                      + got["nights_test_no_imagenet_2afc"]) / 2)
    assert "nights_total_2afc" not in scores_by_subset({"val": outcomes["val"]})
