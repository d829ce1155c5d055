"""Stage 1 (§1.4): perceptual initialization of the whole vision tower on NIGHTS triplets.

Distance d(a, b) = 1 - cos of the L2-normalized projected image embeddings (``encode_image``); with
d0 = d(ref, left), d1 = d(ref, right) and target t (1: right is closer), the loss is the authors' hinge
mean(relu(margin - (2t - 1)(d0 - d1))). AdamW + cosine/warmup per step, no augmentation. After every epoch:
val loss and DreamSim's 2AFC score on val and the two test subsets. The epoch stage 2 starts from is kept as
``init.pt`` (stage1.handoff): the one with the lowest val loss (the authors' checkpoint monitor), the last (what
the fork's stage 2 loads), or a fixed one; training stops at a fixed epoch (the schedule is the full run's, so the
weights are those a longer run has there). ``handoff.json`` beside it says which epoch it holds.

Two controls train the same way on other votes (study/arms.py): "shuffled" on the votes permuted across triplets by
a seed derived from the job's seed; "pixel" on the votes of pixel distance (data/nights.py ``pixel_vote``: the
distortion nearer the reference in L2 over the stage-1 transform's tensors is "closer"), human structure replaced by
the lowest-level similarity there is. Their val votes are replaced the same way, so that choosing the epoch does not
use human judgments either; the reported 2AFC scores always use the real votes. A control hands on the epoch its
seed's perceptual init handed on (read from that init's ``handoff.json``: ``handoff_from``), so each gets as many
updates, on the same images in the same order.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pisweep.atomic import atomic_write_json
from pisweep.errors import TrainingError
from pisweep.job.context import JobContext, Preempted
from pisweep.job.paths import JobPaths
from pisweep.models import create_model
from pisweep.study.schedule import make_schedule, stage1_steps_per_epoch
from pisweep.study.arms import TRAINED_INITS
from pisweep.study.spec import NightsFit, Study
from pisweep.train.augment import model_image_size, model_mean_std, nights_transform
from pisweep.train.checkpoint import load_resume, save_resume, save_weights
from pisweep.train.determinism import (
    STREAM_NIGHTS_ORDER,
    STREAM_VOTE_SHUFFLE,
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    rng,
    seed_everything,
)
from pisweep.train.epoch_report import replay_unreported
from pisweep.train.loader import make_loader
from pisweep.train.optim import build_adamw, set_lr
from pisweep.train.runtime import autocast, setup_device

METHODS = TRAINED_INITS
EVAL_SETS = ("val", "test_imagenet", "test_no_imagenet")


def hinge_loss(d0: torch.Tensor, d1: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """The authors' TripletContrastiveLoss: mean(relu(margin - (2t - 1)(d0 - d1)))."""
    return torch.relu(margin - (2 * target - 1) * (d0 - d1)).mean()


def triplet_distances(model: torch.nn.Module, ref: torch.Tensor, left: torch.Tensor,
                      right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(ref, left), d(ref, right)) with d = 1 - cos, from one forward pass of the three images."""
    f = model.encode_image(torch.cat([ref, left, right]), normalize=True).float()
    f_ref, f_left, f_right = f.chunk(3)
    return 1 - (f_ref * f_left).sum(-1), 1 - (f_ref * f_right).sum(-1)


def vote_shuffle_seed(seed: int, split: str) -> int:
    """The fixed permutation seed of the shuffled-votes control for one split."""
    return derive_seed(seed, STREAM_VOTE_SHUFFLE, {"train": 0, "val": 1}[split])


class _Batches:
    """A batch sampler whose batches are set from outside (lets persistent workers survive epochs)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_batches(n: int, batch: int, seed: int, epoch: int, drop_last: bool = False) -> list[list[int]]:
    """Train batches of one epoch: a permutation that is a pure function of (seed, epoch); the last one partial,
    or left out (``drop_last``)."""
    order = rng(seed, epoch, STREAM_NIGHTS_ORDER).permutation(n).tolist()
    return [order[i:i + batch] for i in range(0, n - batch + 1 if drop_last else n, batch)]


def run_stage1(ctx: JobContext, study: Study, method: str, seed: int, nights_root: Path,
               device: str = "cpu", handoff_from: Path | None = None, fraction: float = 1.0) -> Path:
    """Train one perceptual (or control: shuffled or pixel votes) init; return the path of ``<ctx.folder>/init.pt``.
    ``handoff_from``: the folder of the init whose hand-off epoch this one hands on; ``fraction``: the share of the
    train triplets it trains on (the dose axis, data/nights.py dose_subset)."""
    if method not in METHODS:
        raise TrainingError(f"unknown stage-1 method {method!r}; expected one of {METHODS}")
    epoch = handed_on_epoch(handoff_from) if handoff_from is not None else study.stage1.fixed_handoff()
    if epoch is not None and not 1 <= epoch <= study.stage1.epochs:
        raise TrainingError(f"hand-off epoch {epoch} is not one of stage 1's epochs 1..{study.stage1.epochs}")
    return NightsTrainer(ctx, study, method, seed + study.stage1.seed_offset, Path(nights_root), device,
                         epoch, fraction=fraction).run()


def handed_on_epoch(folder: Path) -> int:
    """The epoch the init in ``folder`` handed on (its ``handoff.json``)."""
    path = JobPaths(folder).handoff
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"this control hands on the epoch of the init in {folder}, but its {path.name} is "
                            f"not readable ({exc}): that init has not completed") from exc


class NightsTrainer:
    """A training of the vision tower on NIGHTS with the 2AFC hinge, resumable at every batch. As it stands: stage 1
    (the whole vision tower from its seeded random init; the chosen epoch becomes ``init.pt``). The post-hoc
    fine-tune (train/posthoc.py) overrides where it starts, what trains, and what it hands on."""

    #: what the epoch reports are of (the ledger's metrics task): stage 1 reports "train"
    report_task: str | None = None

    def __init__(self, ctx: JobContext, study: Study, method: str, seed: int, root: Path, device: str,
                 handoff_epoch: int | None = None, fit: NightsFit | None = None, fraction: float = 1.0):
        from pisweep.data import nights  # written beside this module; imported late so this module imports alone

        if ctx.world_size > 1:
            raise TrainingError(f"job {ctx.uid}: a NIGHTS training runs on one rank (it is small), not "
                                f"{ctx.world_size}")
        self.ctx, self.study, self.s1, self.method = ctx, study, fit or study.stage1, method
        self.handoff_epoch = handoff_epoch  # None: the epoch with the lowest val loss
        self.last_epoch = handoff_epoch or self.s1.epochs  # training stops after the epoch it hands on
        self.seed = seed
        self.dev = setup_device(device)
        self.folder = Path(ctx.folder)
        self.init_path = JobPaths(self.folder).init_weights
        self.resume_path = JobPaths(self.folder).resume_state
        train = nights.dose_subset(nights.read_triplets(root, "train", self.s1.min_votes), fraction)
        evals = nights.subsets(root, self.s1.min_votes)
        seed_everything(self.seed)
        model = self._make_model()
        self.model = model.to(self.dev)
        transform = nights_transform(model_image_size(model), *model_mean_std(model))
        shuffled, pixel = method == "shuffled", method == "pixel"
        self.train_ds = nights.TripletDataset(
            train, transform, shuffle_votes_seed=vote_shuffle_seed(self.seed, "train") if shuffled else None,
            pixel_votes=pixel)
        self.eval_ds = {k: nights.TripletDataset(evals[k], transform) for k in EVAL_SETS}
        # targets of the val loss that selects the epoch: the control's own votes (see module docstring)
        if shuffled:
            self.val_select_targets = nights.TripletDataset(evals["val"], transform,
                                                            vote_shuffle_seed(self.seed, "val")).targets
        elif pixel:
            self.val_select_targets = nights.pixel_targets(nights.TripletDataset(evals["val"], transform,
                                                                                 pixel_votes=True))
        else:
            self.val_select_targets = self.eval_ds["val"].targets
        self.batch = min(self.s1.global_batch_size, len(self.train_ds))
        self.per_epoch = stage1_steps_per_epoch(len(self.train_ds), self.batch, self.s1.drop_last)
        self.schedule = make_schedule(self.s1.optim, self.per_epoch, self.s1.epochs)
        self.optimizer = build_adamw(self._trainable(), self.s1.optim)
        self.fingerprint = {"model": study.model.name, "config": study.model.config, "method": method,
                            "seed": self.seed, "epochs": self.s1.epochs, "batch": self.batch,
                            "train_triplets": len(self.train_ds), "min_votes": self.s1.min_votes}
        if handoff_epoch is not None:  # (absent under best_val: resume states written before the option stay valid)
            self.fingerprint["handoff_epoch"] = handoff_epoch
        if fraction != 1.0:
            self.fingerprint["fraction"] = fraction
        self.fingerprint.update(self._fingerprint())
        self.epoch, self.batch_in_epoch, self.step = 1, 0, 0
        self.loss_sum, self.loss_n = 0.0, 0
        self.best: dict[str, Any] | None = None
        self.finished = False
        self.unreported: dict[str, Any] | None = None  # this epoch's epoch_done, until it is written (epoch_report)
        state = load_resume(self.resume_path, self.fingerprint)
        if state is not None:
            self._restore(state)
        pin = self.dev.type == "cuda"
        self.sampler = _Batches()
        self.loader = make_loader(self.train_ds, self.sampler, self.s1.workers, pin, seed=self.seed)
        self.eval_sampler = _Batches()
        self.eval_all = torch.utils.data.ConcatDataset([self.eval_ds[k] for k in EVAL_SETS])
        n_eval = len(self.eval_all)
        self.eval_sampler.batches = [list(range(i, min(i + self.batch, n_eval))) for i in range(0, n_eval, self.batch)]
        self.eval_loader = make_loader(self.eval_all, self.eval_sampler, self.s1.workers, pin, seed=self.seed)

    # ---- what a training of this kind starts from, trains, and hands on ---------------------------------------
    def _make_model(self) -> torch.nn.Module:
        """The seeded open_clip model (the global RNGs are seeded with the job's seed just before)."""
        model, _, _, _ = create_model(self.study.model.name, self.study.model.config, device="cpu")
        return model

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of what the optimizer trains: the whole vision tower."""
        return [(f"visual.{n}", p) for n, p in self.model.visual.named_parameters()]

    def _fingerprint(self) -> dict[str, Any]:
        """What else a resume state must match (nothing, for stage 1)."""
        return {}

    @property
    def precision(self) -> str:
        return "auto"

    def _save_chosen(self, epoch: int) -> tuple[str, int]:
        """Write the weights of ``epoch``, the one handed on so far; (sha256, bytes)."""
        return save_weights(self.init_path, epoch, self.model)

    def _hand_on(self) -> Path:
        """After the last epoch: say what was handed on (handoff.json, the init_selected event)."""
        if self.best is None or not self.init_path.exists():
            raise TrainingError(f"stage 1 in {self.folder} finished without an init checkpoint")
        if self.ctx.rank == 0:
            rule = self.s1.handoff if self.handoff_epoch is None or self.s1.handoff != "best_val" else "matched"
            atomic_write_json(JobPaths(self.folder).handoff, {"epoch": self.best["epoch"], "rule": rule,
                                                              "val_loss": self.best["val_loss"],
                                                              "sha256": self.best["sha256"]})
        self.ctx.emit("init_selected", epoch=self.best["epoch"], path=str(self.init_path),
                      val_loss=self.best["val_loss"], kind="init", sha256=self.best["sha256"],
                      bytes=self.best["bytes"])
        return self.init_path

    # ---- state ------------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        replay_unreported(self.ctx, state.get("unreported"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch_in_epoch = state["pos"]["epoch"], state["pos"]["batch"]
        self.step, self.loss_sum, self.loss_n = state["step"], state["loss_sum"], state["loss_n"]
        self.best, self.finished = state["best"], state["finished"]
        restore_rng_state(state["rng"])
        self.ctx.step, self.ctx.epoch = self.step, self.epoch - 1

    def _save_resume(self) -> None:
        if self.ctx.rank != 0:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "pos": {"epoch": self.epoch, "batch": self.batch_in_epoch}, "loss_sum": self.loss_sum,
                 "loss_n": self.loss_n, "best": self.best, "finished": self.finished,
                 "rng": capture_rng_state(), "fingerprint": self.fingerprint, "unreported": self.unreported}
        sha, nbytes = save_resume(self.resume_path, state)
        self.ctx.emit("checkpoint", epoch=self.epoch - 1, kind="resume", path=str(self.resume_path),
                      sha256=sha, bytes=nbytes, step=self.step)

    # ---- loop -------------------------------------------------------------------------------------------
    def run(self) -> Path:
        while not self.finished and self.epoch <= self.last_epoch:
            self._train_epoch()
            self._end_epoch()
        if not self.finished:
            self.finished = True
            self._save_resume()
        return self._hand_on()

    def _train_epoch(self) -> None:
        self.sampler.batches = epoch_batches(len(self.train_ds), self.batch, self.seed, self.epoch,
                                             self.s1.drop_last)[self.batch_in_epoch:]
        self.model.train()
        if self.ctx.should_stop():
            self._preempt()
        for ref, left, right, target in self.loader:
            ref, left, right, target = (x.to(self.dev, non_blocking=True) for x in (ref, left, right, target))
            lr = self.schedule.lr_at(self.step)
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.dev, self.precision):
                d0, d1 = triplet_distances(self.model, ref, left, right)
            loss = hinge_loss(d0, d1, target, self.s1.margin)
            loss.backward()
            self.optimizer.step()
            value = float(loss.detach())  # one sync per step: stage 1 is small, and a bad step is named exactly
            self.step += 1
            self.batch_in_epoch += 1
            self.ctx.step = self.step
            if not math.isfinite(value):
                raise TrainingError(f"non-finite loss at step {self.step} (stage 1, epoch {self.epoch}); "
                                    "the last good checkpoint is kept")
            self.loss_sum += value * len(target)
            self.loss_n += len(target)
            if self.batch_in_epoch < self.per_epoch and self.ctx.should_stop():
                self._preempt()

    def _preempt(self) -> None:
        self._save_resume()
        raise Preempted(self.ctx.stop_signal or "stop request", self.step)

    @torch.no_grad()
    def _distances(self) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        d0s, d1s = [], []
        for ref, left, right, _ in self.eval_loader:
            with autocast(self.dev, self.precision):
                d0, d1 = triplet_distances(self.model, *(x.to(self.dev, non_blocking=True)
                                                         for x in (ref, left, right)))
            d0s.append(d0.float().cpu())
            d1s.append(d1.float().cpu())
        self.model.train()
        return torch.cat(d0s).numpy(), torch.cat(d1s).numpy()

    def evaluate(self) -> dict[str, float]:
        """Val loss (selection targets) and the 2AFC score of each eval subset (real votes)."""
        from pisweep.data import nights

        d0, d1 = self._distances()
        metrics: dict[str, float] = {}
        outcomes = {}
        lo = 0
        for name in EVAL_SETS:
            ds = self.eval_ds[name]
            a, b = d0[lo:lo + len(ds)], d1[lo:lo + len(ds)]
            lo += len(ds)
            if name == "val":
                t = torch.from_numpy(np.asarray(self.val_select_targets, dtype=np.float32))
                metrics["val_loss"] = float(hinge_loss(torch.from_numpy(a), torch.from_numpy(b), t,
                                                       self.s1.margin))
            if len(ds):
                outcomes[name] = nights.outcomes_2afc(a, b, ds.targets)
        metrics.update(nights.scores_by_subset(outcomes))
        return metrics

    def _end_epoch(self) -> None:
        e = self.epoch
        metrics = {"train_loss": self.loss_sum / max(self.loss_n, 1), **self.evaluate()}
        val_loss = metrics.get("val_loss", float("nan"))
        chosen = e == self.handoff_epoch if self.handoff_epoch is not None else \
            math.isfinite(val_loss) and (self.best is None or val_loss < self.best["val_loss"])
        if chosen:
            sha, nbytes = self._save_chosen(e) if self.ctx.rank == 0 else ("", 0)
            self.best = {"epoch": e, "val_loss": val_loss, "sha256": sha, "bytes": nbytes}
        self.unreported = {"epoch": e, "step": self.step, "metrics": metrics}
        if self.report_task:
            self.unreported["task"] = self.report_task
        self.epoch, self.batch_in_epoch, self.loss_sum, self.loss_n = e + 1, 0, 0.0, 0
        self.ctx.epoch = e
        self.finished = self.epoch > self.last_epoch
        self._save_resume()  # first the state that ends the epoch, then its report (train/epoch_report.py)
        self.ctx.emit("epoch_done", **self.unreported)
        self.unreported = None

