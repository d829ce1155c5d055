"""Stage 2 (§1.5): CLIP contrastive pretraining of one arm (random, perceptual or a control's init) on shards.

Arms differ only in the vision tower: every arm builds the model under torch.manual_seed(seed) the same way,
so text tower and logit scale are identical, then the init arms (study/arms.py) load the ``visual.*`` weights of
their init job's ``init.pt``. Everything the training sees is a pure function of (seed, epoch, step) (see loader.py), and
the resume state holds the rest (model, optimizer, step, RNG), so a preempted run resumes bit for bit.

With several ranks (DDP, started by the node launcher, runner/launch.py) each rank takes its slice of every global batch, so the order
does not depend on the rank count either; rank 0 alone writes files and events, a stop is agreed at a step
boundary by a collective, and the ranks check once per epoch that their parameters are still identical.
Retention (stage2.keep_weights / keep_resume): weights files of the evaluated epochs only, by default (and epoch 0,
the weights the run starts from, when the job asks for it: NIGHTS 2AFC is evaluated there; and the source epochs
of the run's post-hoc cells, whatever the setting), and the resume state
shrinks to a small completion marker when the run ends.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss

from pisweep.errors import TrainingError
from pisweep.job.context import JobContext, Preempted
from pisweep.job.paths import JobPaths
from pisweep.models import create_model, unwrap, write_model_config
from pisweep.study.arms import INIT_ARMS
from pisweep.study.schedule import stage2_global_batch, stage2_schedule
from pisweep.study.spec import Study
from pisweep.train.augment import declip_train_transform, model_image_size, model_mean_std
from pisweep.train.checkpoint import load_resume, save_resume, save_weights
from pisweep.train.determinism import capture_rng_state, restore_rng_state, seed_everything
from pisweep.train.epoch_report import replay_unreported
from pisweep.train.loader import EpochBatchSampler, ShardDataset, make_loader
from pisweep.train.optim import build_adamw, set_lr
from pisweep.train.runtime import any_rank, autocast, distributed, rank0_first, setup_device
from pisweep.train.shards import build_table, plan_manifest
from pisweep.train.tracking import Tracker

RESUME_EVERY_S = 600.0  # when stage2.checkpoint_every_steps is None: a resume state about every 10 minutes
MAX_LOGIT_SCALE = math.log(100)  # exp(logit_scale) <= 100: open_clip_train's clamp, and the fork's (in its loss)
VISION_INITS = INIT_ARMS  # the arms whose vision tower comes from an init job
log = logging.getLogger("pisweep.train")


def build_model(study: Study, init: str, init_weights: Path | None, seed: int):
    """The stage-2 model on the CPU: seeded open_clip init, then the init's vision tower for PI arms."""
    seed_everything(seed)
    model, _, preprocess_val, tokenizer = create_model(study.model.name, study.model.config, device="cpu",
                                                       init_logit_scale=study.model.init_logit_scale)
    if init in VISION_INITS:
        if init_weights is None:
            raise TrainingError(f"init {init!r} needs init_weights (the stage-1 init.pt)")
        load_visual(model, Path(init_weights))
    elif init != "random":
        raise TrainingError(f"unknown init {init!r}; expected random or one of {', '.join(VISION_INITS)}")
    return model, preprocess_val, tokenizer


def load_visual(model: torch.nn.Module, path: Path) -> None:
    """Copy only the ``visual.*`` weights of a ``{"state_dict"}`` file into ``model.visual`` (strict)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"init weights {path} are unreadable: {exc}") from exc
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        raise TrainingError(f"init weights {path} hold no visual.* tensors")
    try:
        model.visual.load_state_dict(visual, strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"init weights {path} do not fit model's vision tower: {exc}") from exc


def contrastive_step(net: torch.nn.Module, model: torch.nn.Module, loss_fn: ClipLoss,
                     optimizer: torch.optim.Optimizer, images: torch.Tensor, texts: torch.Tensor,
                     dev: torch.device, precision: str, grad_clip: float | None,
                     accumulation: int = 1, clamp: str = "after_step") -> tuple[torch.Tensor, torch.Tensor]:
    """One stage-2 optimizer step: per micro-batch (``accumulation`` equal, contiguous parts of this rank's batch)
    a forward under the run's autocast, ClipLoss over that micro-batch (its negatives), and a backward of loss /
    accumulation, the ranks' gradients reduced once, after the last; then gradient clipping, AdamW, and the
    temperature held at exp(logit_scale) <= 100: ``clamp`` "after_step" clamps the parameter after the step,
    "in_loss" the value the loss uses. ``net`` is what runs forward (the DDP wrapper with several ranks), ``model``
    the bare model. Returns the mean loss over the micro-batches and the logit scale the loss used, detached and
    still on the device: no host sync."""
    optimizer.zero_grad(set_to_none=True)
    parts = list(zip(images.chunk(accumulation), texts.chunk(accumulation)))
    total = None
    for i, (im, tx) in enumerate(parts):
        last = i == len(parts) - 1
        with (contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()):
            with autocast(dev, precision):
                image_f, text_f, scale = net(im, tx)
                if clamp == "in_loss":
                    scale = scale.clamp(max=math.exp(MAX_LOGIT_SCALE))
                loss = loss_fn(image_f, text_f, scale)
            (loss / accumulation if accumulation > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    loss = total / accumulation if accumulation > 1 else total
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if clamp == "after_step":
        with torch.no_grad():
            unwrap(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.detach(), scale.detach()


def run_stage2(ctx: JobContext, study: Study, *, init: str, init_weights: Path | None, shards: str,
               samples: int, epochs: int, seed: int, eval_epochs: Sequence[int], device: str = "cpu",
               start_weights: bool = False, keep_epochs: Sequence[int] = ()) -> None:
    """Train one stage-2 run in ``ctx.folder``, resuming from ``resume/state.pt`` when present. ``start_weights``:
    also save the weights the run starts from as epoch 0 (NIGHTS 2AFC is evaluated there)."""
    _Stage2(ctx, study, init, init_weights, shards, samples, epochs, seed, eval_epochs, device, start_weights,
            keep_epochs).run()


class _Stage2:
    def __init__(self, ctx: JobContext, study: Study, init: str, init_weights: Path | None, shards: str,
                 samples: int, epochs: int, seed: int, eval_epochs: Sequence[int], device: str,
                 start_weights: bool = False, keep_epochs: Sequence[int] = ()):
        self.ctx, self.study, self.s2 = ctx, study, study.stage2
        self.init, self.seed, self.epochs = init, seed, epochs
        self.dev = setup_device(device)
        if ctx.world_size > 1 and not distributed():
            raise TrainingError(f"job {ctx.uid}: world size {ctx.world_size} but torch.distributed is not "
                                "initialized (launch the ranks with torchrun)")
        self.folder = Path(ctx.folder)
        self.paths = JobPaths(self.folder)
        self.resume_path = self.paths.resume_state
        index_cache = Path(study.output_root) / "cache" / "shard-index"  # shared by the runs of a study
        self.manifest = rank0_first(ctx.rank, lambda: plan_manifest(shards, samples, index_cache, study.data.subset,
                                                                    study.data.subset_seed))
        if ctx.rank == 0:
            self.manifest.write(self.paths.manifest)
        self.global_batch = stage2_global_batch(self.s2, samples)
        self.fingerprint = {"model": study.model.name, "config": study.model.config, "init": init,
                            "seed": seed, "epochs": epochs, "global_batch": self.global_batch,
                            "sample_order": self.s2.sample_order, "manifest": self.manifest.digest,
                            "augment": self.s2.augment}
        if self.s2.accumulation_steps > 1:  # (absent at 1: resume states written before the option stay valid)
            self.fingerprint["accumulation_steps"] = self.s2.accumulation_steps
        model, preprocess_val, tokenizer = build_model(study, init, init_weights, seed)
        if ctx.rank == 0:
            write_model_config(self.paths.checkpoints, study.model.name, study.model.config)
        self.model = model.to(self.dev)
        self.optimizer = build_adamw(self.model.named_parameters(), self.s2.optim)
        self.epoch, self.batch, self.step = 1, 0, 0  # position: next batch to train
        self.loss_sum, self.loss_n = 0.0, 0  # running mean of this epoch's train loss
        self.weights_epochs = set(range(1, epochs + 1)) if self.s2.keep_weights == "all" \
            else set(eval_epochs) | {epochs}  # the epochs the plan evaluates, and the last
        self.weights_epochs |= set(keep_epochs)  # the source epochs of the run's post-hoc cells
        if start_weights:
            self.weights_epochs.add(0)
        self.unreported: dict[str, Any] | None = None  # this epoch's epoch_done, until it is written (epoch_report)
        state = load_resume(self.resume_path, self.fingerprint)
        if state is not None:
            self._restore(state)
        self.start_step = self.step
        size = model_image_size(model)
        mean, std = model_mean_std(model)
        transform = declip_train_transform(size, mean, std, self.s2.interpolation) if self.s2.augment \
            else preprocess_val
        table = rank0_first(ctx.rank, lambda: build_table(self.manifest, index_cache))
        accumulation = self.s2.accumulation_steps
        if self.global_batch % (ctx.world_size * accumulation):
            raise TrainingError(f"job {ctx.uid}: the global batch of {self.global_batch} samples (stage2."
                                f"global_batch_size {self.s2.global_batch_size}, at most the scale's {samples}) does "
                                f"not split into {ctx.world_size} ranks x stage2.accumulation_steps {accumulation}")
        self.sampler = EpochBatchSampler(table.shard_counts, seed, self.global_batch, ctx.rank, ctx.world_size,
                                         accumulation)
        dataset = ShardDataset(table, transform, tokenizer, seed)
        self.loader = make_loader(dataset, self.sampler, self.s2.workers, pin_memory=self.dev.type == "cuda",
                                  seed=seed)
        self.per_epoch = self.sampler.batches_per_epoch
        self.schedule = stage2_schedule(self.s2, samples, epochs)  # what `pisweep plan` shows
        if self.schedule.steps_per_epoch != self.per_epoch:
            raise TrainingError(f"job {ctx.uid}: {self.per_epoch} steps per epoch, but the plan's schedule has "
                                f"{self.schedule.steps_per_epoch}")
        self.net = self.model
        if distributed():
            ids = None
            if self.dev.type == "cuda":
                ids = [self.dev.index if self.dev.index is not None else torch.cuda.current_device()]
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        multi = ctx.world_size > 1
        self.loss_fn = ClipLoss(local_loss=multi, gather_with_grad=multi, cache_labels=True,
                                rank=ctx.rank, world_size=ctx.world_size)
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # (step, lr, loss, scale)
        self.last_save, self.window_t = time.monotonic(), time.perf_counter()

    # ---- state ------------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        replay_unreported(self.ctx, state.get("unreported"))
        self.epoch, self.batch, self.step = state["pos"]["epoch"], state["pos"]["batch"], state["step"]
        self.ctx.step, self.ctx.epoch = self.step, self.epoch - 1
        if state.get("done"):  # the completion marker of a finished run (keep_resume "until_done")
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_sum, self.loss_n = state["loss_sum"], state["loss_n"]
        restore_rng_state(state["rng"])

    def _check_weights(self) -> None:
        """Refuse to write non-finite weights (one sync; only when a file is about to be written)."""
        flags = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()])
        if not bool(flags.all()):
            raise TrainingError(f"non-finite weights at step {self.step} (epoch {self.epoch}); "
                                "the last good checkpoint is kept")

    def _save_weights(self, epoch: int) -> None:
        """The weights file of ``epoch`` (0: the weights the run starts from), on rank 0."""
        if self.ctx.rank != 0:
            return
        self._check_weights()
        path = self.paths.weights(epoch)
        sha, nbytes = save_weights(path, epoch, self.model)
        self.ctx.emit("checkpoint", epoch=epoch, kind="weights", path=str(path), sha256=sha, bytes=nbytes,
                      step=self.step)

    def _save_resume(self) -> None:
        if self.ctx.rank != 0:
            return
        pos = {"epoch": self.epoch, "batch": self.batch, "samples": self.batch * self.global_batch}
        if self.epoch > self.epochs and self.s2.keep_resume == "until_done":
            # Finished: nothing is left to resume, so keep only what says so (a re-run returns at once).
            state = {"done": True, "step": self.step, "pos": pos, "fingerprint": self.fingerprint,
                     "unreported": self.unreported}
        else:
            self._check_weights()
            state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                     "step": self.step, "pos": pos, "world_size": self.ctx.world_size,
                     "loss_sum": self.loss_sum, "loss_n": self.loss_n, "rng": capture_rng_state(),
                     "fingerprint": self.fingerprint, "unreported": self.unreported}
        sha, nbytes = save_resume(self.resume_path, state)
        self.last_save = time.monotonic()
        self.ctx.emit("checkpoint", epoch=self.epoch - 1, kind="resume", path=str(self.resume_path),
                      sha256=sha, bytes=nbytes, step=self.step)

    def _check_sync(self) -> None:
        """With several ranks, check that their parameters are identical (a per-tensor sum, one collective per
        epoch): a rank that drifted (a bug, a bad node) would otherwise go unnoticed until the results."""
        if not distributed():
            return
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        lo, hi = sums.clone(), sums.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            bad = int((lo != hi).nonzero()[0])
            name = [n for n, _ in self.model.named_parameters()][bad]
            raise TrainingError(f"ranks diverged at epoch {self.epoch}: parameter {name} differs between ranks")
        log.info("epoch %d: parameters identical on %d ranks (checksum %.17g)", self.epoch, self.ctx.world_size,
                 float(sums.sum()))

    def _resume_due(self) -> bool:
        every = self.s2.checkpoint_every_steps
        if every is not None:
            return self.step % every == 0
        if self.step % self.s2.log_every_steps:
            return False
        return any_rank(time.monotonic() - self.last_save >= RESUME_EVERY_S, self.dev)

    def _stop_due(self) -> bool:
        """Whether to stop at this step boundary. With several ranks this is a collective (every rank stops at
        the same step), so it is asked every log_every_steps steps only."""
        forced = self.step != self.start_step and self.ctx.pause_point(self.step)
        if not distributed():
            return self.ctx.should_stop()
        if not forced and self.step % self.s2.log_every_steps:
            return False
        return any_rank(self.ctx.should_stop(), self.dev)

    # ---- logging ----------------------------------------------------------------------------------------
    def _flush(self) -> float:
        """Bring the pending per-step values to the host (one sync), check them, log them; return the
        throughput (samples/s) since the previous flush."""
        now = time.perf_counter()
        rate = len(self.pending) * self.global_batch / max(now - self.window_t, 1e-9)
        self.window_t = now
        if not self.pending:
            return rate
        values = torch.stack([torch.stack([l.float(), s.float()]) for _, _, l, s in self.pending])
        if distributed():  # each rank's loss covers its own rows: log the mean over ranks (one collective)
            losses = values[:, 0].contiguous()
            dist.all_reduce(losses)
            values[:, 0] = losses / self.ctx.world_size
        values = values.tolist()
        for (step, lr, _, _), (loss, scale) in zip(self.pending, values):
            if not math.isfinite(loss):
                raise TrainingError(f"non-finite loss at step {step} (epoch {self.epoch}); "
                                    f"the last good checkpoint is kept")
            self.loss_sum += loss
            self.loss_n += 1
            self.tracker.log({"train/loss": loss, "train/lr": lr, "train/logit_scale": scale,
                              "train/samples_per_s": rate}, step=step)
        self.last_scale = values[-1][1]
        self.pending.clear()
        return rate

    # ---- loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        config = {"init": self.init, "seed": self.seed, "epochs": self.epochs, "samples": self.manifest.samples,
                  "model": self.study.model.name, "stage2": self.study.stage2.model_dump(mode="json")}
        if self.epoch > self.epochs:
            return  # finished in an earlier attempt
        if self.step == 0 and 0 in self.weights_epochs:
            self._save_weights(0)
        self.last_scale = float(unwrap(self.model).logit_scale.detach().exp())
        self.sampler.set_epoch(self.epoch, self.batch)
        batches = iter(self.loader)  # fork the loader workers before wandb starts its threads
        self.tracker = Tracker.start(self.study.wandb.mode, self.study.wandb.project, self.ctx.uid,
                                     self.folder, config, self.ctx.rank)
        try:
            while self.epoch <= self.epochs:
                self._train_epoch(batches)
                batches = None
            self.tracker.finish(0)
        except BaseException:
            self.tracker.finish(1)
            raise

    def _train_epoch(self, batches: Iterator | None = None) -> None:
        if batches is None:
            self.sampler.set_epoch(self.epoch, self.batch)
            batches = iter(self.loader)
        self.net.train()
        epoch_t, epoch_n = time.perf_counter(), 0
        self.window_t = epoch_t
        if self._stop_due():
            self._preempt()
        for images, texts in batches:
            self._train_step(images, texts)
            epoch_n += self.global_batch
            if self.batch == self.per_epoch:
                break
            if self.step % self.s2.log_every_steps == 0:
                self._flush()
            if self._resume_due():
                self._flush()
                self._save_resume()
            if self._stop_due():
                self._preempt()
        self._flush()
        self._end_epoch(epoch_n / max(time.perf_counter() - epoch_t, 1e-9))

    def _train_step(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        images = images.to(self.dev, non_blocking=True)
        texts = texts.to(self.dev, non_blocking=True)
        lr = self.schedule.lr_at(self.step)
        set_lr(self.optimizer, lr)
        loss, scale = contrastive_step(self.net, self.model, self.loss_fn, self.optimizer, images, texts,
                                       self.dev, self.s2.precision, self.s2.grad_clip, self.s2.accumulation_steps,
                                       self.s2.logit_scale_clamp)
        self.step += 1
        self.batch += 1
        self.ctx.step = self.step
        self.pending.append((self.step, lr, loss, scale))

    def _preempt(self) -> None:
        self._flush()
        self._save_resume()
        raise Preempted(self.ctx.stop_signal or "stop request", self.step)

    def _end_epoch(self, rate: float) -> None:
        e = self.epoch
        metrics = {"train_loss": self.loss_sum / max(self.loss_n, 1),
                   "lr": self.schedule.lr_at(max(self.step - 1, 0)),
                   "logit_scale": self.last_scale, "samples_per_s": rate}
        self._check_sync()
        if e in self.weights_epochs:
            self._save_weights(e)
        self.unreported = {"epoch": e, "step": self.step, "metrics": metrics}
        self.epoch, self.batch, self.loss_sum, self.loss_n = e + 1, 0, 0.0, 0
        self.ctx.epoch = e
        self._save_resume()  # first the state that ends the epoch, then its report (train/epoch_report.py)
        self.ctx.emit("epoch_done", **self.unreported)
        self.unreported = None
