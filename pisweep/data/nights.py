"""The NIGHTS reader: triplets from ``data.csv`` (by column *name*), a torch-style dataset, 2AFC scoring.

DreamSim reads data.csv by position (col 0 id, col 2 right_vote as the target, cols 4-6 paths); we read it
by name so that a csv with another column order is read correctly or refused with the missing column named.
Only "unanimous" triplets are used (``votes >= 6``), as in DreamSim's loader.

Torch is imported only where tensors are made (:class:`TripletDataset`), so preflight checks that only read
the csv stay cheap.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from pisweep.errors import DataError

REQUIRED_COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
                    "is_imagenet")
UNANIMOUS_VOTES = 6


@dataclass(frozen=True)
class Triplet:
    """One judgment: ``target`` is 1.0 when the right image (``distort/..._1``) is closer to ``ref``."""

    id: str
    ref: Path
    left: Path
    right: Path
    target: float
    is_imagenet: bool


def read_triplets(root: Path, split: str, min_votes: int = UNANIMOUS_VOTES, *,
                  check_files: bool = True) -> list[Triplet]:
    """Triplets of ``split`` (train/val/test) with at least ``min_votes`` votes, in csv order.

    With ``check_files`` every image must exist (one stat per file), so a bad download fails here and
    not hours into training.
    """
    root = Path(root).absolute()
    rows, csv_path = _read_rows(root)
    splits = {r["split"] for r in rows}
    if split not in splits:
        raise DataError(f"{csv_path}: no rows with split={split!r} (splits present: {sorted(splits)})")
    out = []
    for line, r in enumerate(rows, start=2):
        if r["split"] != split:
            continue
        where = f"{csv_path} line {line}"
        if _number(r["votes"], "votes", where) < min_votes:
            continue
        left_v, right_v = _number(r["left_vote"], "left_vote", where), _number(r["right_vote"], "right_vote", where)
        if left_v + right_v <= 0:
            raise DataError(f"{where}: left_vote + right_vote must be > 0")
        paths = tuple(root / r[c] for c in ("ref_path", "left_path", "right_path"))
        if check_files:
            for p in paths:
                if not p.is_file():
                    raise DataError(f"NIGHTS image missing: {p} ({where})")
        target = 1.0 if right_v / (left_v + right_v) > 0.5 else 0.0
        out.append(Triplet(r["id"], *paths, target=target, is_imagenet=_bool(r["is_imagenet"], where)))
    return out


def subsets(root: Path, min_votes: int = UNANIMOUS_VOTES) -> dict[str, list[Triplet]]:
    """The evaluation subsets DreamSim reports: val, test_imagenet, test_no_imagenet."""
    test = read_triplets(root, "test", min_votes)
    return {"val": read_triplets(root, "val", min_votes),
            "test_imagenet": [t for t in test if t.is_imagenet],
            "test_no_imagenet": [t for t in test if not t.is_imagenet]}


def _read_rows(root: Path) -> tuple[list[dict[str, str]], Path]:
    if not root.is_dir():
        raise DataError(f"NIGHTS root not found: {root}")
    csv_path = root / "data.csv"
    if not csv_path.is_file():
        raise DataError(f"NIGHTS data.csv not found: {csv_path}")
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}")
            return list(reader), csv_path
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {csv_path}: {err}") from err


def _number(text: str | None, column: str, where: str) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column} is not a number: {text!r}") from None


def _bool(text: str | None, where: str) -> bool:
    value = (text or "").strip().lower()
    if value in ("true", "1", "1.0", "yes"):
        return True
    if value in ("false", "0", "0.0", "no"):
        return False
    raise DataError(f"{where}: column is_imagenet is not a boolean: {text!r}")


class TripletDataset:
    """Map-style dataset of ``(ref, left, right, target)`` tensors for a torch DataLoader.

    ``shuffle_votes_seed`` permutes the targets across triplets (deterministically): the "shuffled votes"
    control keeps the images and the label balance but breaks the link between them. ``pixel_votes``: each target
    is :func:`pixel_vote` of the item's transformed images (the "pixel" control); ``targets`` then holds the human
    votes, which only the 2AFC scores read (:func:`pixel_targets` gives the pixel ones).
    """

    def __init__(self, triplets: Sequence[Triplet], transform: Callable[[Image.Image], Any],
                 shuffle_votes_seed: int | None = None, pixel_votes: bool = False) -> None:
        self.triplets = list(triplets)
        self.transform = transform
        self.pixel_votes = pixel_votes
        targets = np.array([t.target for t in self.triplets], dtype=np.float32)
        if shuffle_votes_seed is not None:
            targets = targets[np.random.default_rng(shuffle_votes_seed).permutation(len(targets))]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int):
        import torch

        t = self.triplets[index]
        images = [self.transform(_load(p)) for p in (t.ref, t.left, t.right)]
        target = pixel_vote(*images) if self.pixel_votes else self.targets[index]
        return (*images, torch.tensor(target, dtype=torch.float32))


def dose_subset(triplets: Sequence[Triplet], fraction: float) -> list[Triplet]:
    """The dose axis' share of the train triplets: the first ceil(fraction x n) in the order of sha256 of their ids
    (study/identity.py DOSE_RULE), in csv order. Nested (a smaller fraction's triplets are in every larger one's) and
    the same for every seed and every row order of data.csv."""
    if fraction >= 1.0:
        return list(triplets)
    k = max(1, math.ceil(fraction * len(triplets)))
    ranked = sorted(range(len(triplets)), key=lambda i: hashlib.sha256(f"nights-dose/{triplets[i].id}".encode())
                    .hexdigest())
    chosen = set(ranked[:k])
    return [t for i, t in enumerate(triplets) if i in chosen]


def pixel_vote(ref: Any, left: Any, right: Any) -> float:
    """The "pixel" control's vote on one triplet of image tensors: 1.0 when ``right`` is nearer ``ref`` in squared
    L2 over every element (the votes' convention: 1 is "right is closer"), 0.0 when ``left`` is, 0.5 on a tie."""
    d_left = float(((ref - left).double() ** 2).sum())
    d_right = float(((ref - right).double() ** 2).sum())
    return 1.0 if d_right < d_left else 0.0 if d_left < d_right else 0.5


def pixel_targets(ds: TripletDataset) -> np.ndarray:
    """Every item's :func:`pixel_vote` (the images are loaded and transformed once each)."""
    return np.array([float(ds[i][3]) for i in range(len(ds))], dtype=np.float32)


def _load(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read NIGHTS image {path}: {err}") from err


def score_2afc(d0: Any, d1: Any, target: Any) -> float:
    """DreamSim's 2AFC score: the mean of :func:`outcomes_2afc`."""
    return float(outcomes_2afc(d0, d1, target).mean())


def scores_by_subset(outcomes: dict[str, np.ndarray]) -> dict[str, float]:
    """``nights_<subset>_2afc`` of each non-empty subset's outcomes, and ``nights_total_2afc``: DreamSim's total, the
    two test subsets' outcomes together (their size-weighted mean), when both were scored."""
    out = {f"nights_{name}_2afc": float(np.mean(v)) for name, v in outcomes.items() if len(v)}
    tests = [outcomes.get(name) for name in ("test_imagenet", "test_no_imagenet")]
    if all(v is not None for v in tests) and sum(len(v) for v in tests):
        out["nights_total_2afc"] = float(np.mean(np.concatenate(tests)))
    return out


def outcomes_2afc(d0: Any, d1: Any, target: Any) -> np.ndarray:
    """Each triplet's 2AFC outcome, (d0<d1)(1-t) + (d1<d0)t + (d0==d1)/2, with d0 = d(ref, left), d1 = d(ref, right):
    1 when the model agrees with the humans, 0 when not, 1/2 for a tie."""
    d0, d1, t = (_array(x) for x in (d0, d1, target))
    if not (d0.shape == d1.shape == t.shape) or d0.size == 0:
        raise ValueError(f"score_2afc needs equal, non-empty shapes; got {d0.shape}, {d1.shape}, {t.shape}")
    return (d0 < d1) * (1.0 - t) + (d1 < d0) * t + (d0 == d1) * 0.5


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)
