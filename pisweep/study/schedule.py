"""Learning-rate schedules as pure functions of the optimizer step, and the steps a run takes. Pure.

The schedule of a stage is fixed by its spec and the run's size, so a resume state needs only the step number and
``pisweep plan`` shows what training will do before it runs.

- ``cosine`` (open_clip_train's ``cosine_lr``): lr (s + 1) / W during the warmup, then
  min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (T - W))) / 2, sized to the run's T optimizer steps.
- ``fork`` (the authors' ``src/lightning_module.py`` ``_get_lr_scheduler``, a LambdaLR stepped once per optimizer
  step): lr s / W during the warmup (the first step runs at 0), then the same cosine, but sized to a horizon of
  H = max(10000, 5 W) steps per epoch x epochs: Lightning's ``trainer.num_training_batches`` is still inf when
  ``configure_optimizers`` runs (the fit loop sets it up later), so the fork takes its fallback branch. At 15M
  samples and 6 x 8 x 1024 samples a step the run takes 9 760 steps of a 400 000-step horizon: the LR ends at
  99.9 % of its peak, and the 2500-step warmup lasts 8.2 of the 32 epochs.
- ``fork-sized``: the same lambda with the horizon the fork's code means when the length is known: the loader's
  batches (micro-batches: accumulation x optimizer steps) x epochs (58 560 at 15M: the LR ends at 95.9 %).

Both fork schedules clamp a warmup that reaches the horizon to max(1, H // 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pisweep.study.spec import OptimSpec, Stage2Spec


@dataclass(frozen=True)
class Schedule:
    name: str  # cosine | fork | fork-sized
    lr: float
    min_lr: float
    warmup_steps: int  # optimizer steps of warmup (after the fork's clamp)
    horizon: int  # the steps the cosine is sized to (the run's own steps for "cosine")
    steps_per_epoch: int  # optimizer steps
    epochs: int
    accumulation: int = 1  # micro-batches per optimizer step

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr_at(self, step: int) -> float:
        """The learning rate of (0-based) optimizer step ``step``."""
        w = self.warmup_steps
        if step < w:
            return self.lr * ((step + 1) if self.name == "cosine" else step) / w
        progress = min(max(step - w, 0) / max(self.horizon - w, 1), 1.0)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def lr_at_micro_batch(self, micro: int) -> float:
        """The learning rate micro-batch ``micro`` (0-based, counted over the run) trains at."""
        return self.lr_at(micro // self.accumulation)

    def lr_after_epoch(self, epoch: int) -> float:
        """The learning rate of the last step of ``epoch`` (1-based)."""
        return self.lr_at(max(epoch * self.steps_per_epoch - 1, 0))

    @property
    def warmup_epochs(self) -> float:
        return self.warmup_steps / max(self.steps_per_epoch, 1)


def make_schedule(optim: OptimSpec, steps_per_epoch: int, epochs: int, accumulation: int = 1) -> Schedule:
    """The schedule of a stage whose epochs take ``steps_per_epoch`` optimizer steps."""
    total = steps_per_epoch * epochs
    warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_fraction * total)
    if optim.schedule == "cosine":
        horizon = total
    else:
        per_epoch = max(10000, 5 * warmup) if optim.schedule == "fork" else steps_per_epoch * accumulation
        horizon = per_epoch * epochs
        if warmup >= horizon:
            warmup = max(1, horizon // 2)
    return Schedule(optim.schedule, optim.lr, optim.min_lr, warmup, horizon, steps_per_epoch, epochs, accumulation)


def stage2_global_batch(stage2: Stage2Spec, samples: int) -> int:
    """Samples per optimizer step of a stage-2 run (a scale smaller than the batch is one step)."""
    return min(stage2.global_batch_size, samples)


def stage2_schedule(stage2: Stage2Spec, samples: int, epochs: int) -> Schedule:
    """The schedule of a stage-2 run over ``samples`` samples per epoch."""
    steps = samples // stage2_global_batch(stage2, samples)
    return make_schedule(stage2.optim, steps, epochs, stage2.accumulation_steps)


def stage1_steps_per_epoch(triplets: int, global_batch: int, drop_last: bool = False) -> int:
    """Stage 1's optimizer steps per epoch: every triplet once, the last batch partial (or left out)."""
    batch = max(min(global_batch, triplets), 1)
    return triplets // batch if drop_last else math.ceil(triplets / batch)
