"""Learning-rate schedules: open_clip_train's cosine, and the authors' fork's Lightning lambda step for step.

The fork's values below were worked out by hand from cheesepuff90/Brain_Initialization@38f3395
src/lightning_module.py ``_get_lr_scheduler``: lambda(s) = s / W for s < W, else 0.5 (1 + cos(pi p)) with
p = (s - W) / (T - W) clamped to [0, 1]; T = max(10000, 5 W) x max_epochs (the loader has no length yet when the
scheduler is built); the LambdaLR steps once per optimizer step, so step s is the s-th optimizer step.
"""
from __future__ import annotations

import pytest

from pisweep.study.schedule import make_schedule, stage2_schedule
from pisweep.study.spec import OptimSpec, Stage2Spec


def test_open_clip_cosine_with_warmup():
    sched = make_schedule(OptimSpec(lr=1.0, warmup_steps=4, min_lr=0.0), steps_per_epoch=7, epochs=2)
    assert sched.total_steps == 14 and sched.horizon == 14
    assert [sched.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # (s + 1) / W
    assert sched.lr_at(4) == 1.0
    assert sched.lr_at(9) == pytest.approx(0.5)
    assert sched.lr_at(14) == pytest.approx(0.0)
    assert make_schedule(OptimSpec(lr=1.0, warmup_steps=4, min_lr=0.2), 7, 2).lr_at(9) == pytest.approx(0.6)
    assert make_schedule(OptimSpec(lr=1.0, warmup_steps=0), 5, 2).lr_at(0) == 1.0


def authors_stage2() -> Stage2Spec:
    """The authors recipe's stage 2: 1024 x 8 devices x 6 accumulated passes, 2500 warmup steps, the fork's
    lambda."""
    return Stage2Spec(global_batch_size=49152, accumulation_steps=6,
                      optim=OptimSpec(lr=5e-4, warmup_steps=2500, schedule="fork"))


def test_the_authors_lr_curve_is_the_forks_step_for_step():
    sched = stage2_schedule(authors_stage2(), 15_000_000, 32)
    # 15M // 49152 = 305 optimizer steps an epoch, 9760 in all; the horizon is 12 500 x 32 = 400 000
    assert (sched.steps_per_epoch, sched.total_steps, sched.warmup_steps, sched.horizon) == (305, 9760, 2500, 400000)
    hand = {
        0: 0.0,                       # the first step runs at lambda(0) = 0
        1: 2e-07,                     # 5e-4 x 1 / 2500
        1250: 2.5e-04,                # 5e-4 x 1250 / 2500
        2499: 4.998e-04,              # the last warmup step: 5e-4 x 2499 / 2500
        2500: 5e-04,                  # the end of warmup: p = 0
        6130: 4.998971228429557e-04,  # mid-run: p = 3630 / 397500
        9759: 4.995886893425391e-04,  # the last step: p = 7259 / 397500 (99.9 % of the peak)
    }
    for step, lr in hand.items():
        assert sched.lr_at(step) == pytest.approx(lr, rel=1e-12, abs=1e-18), step
    # accumulation boundaries: micro-batches 0..5 are step 0, 6 starts step 1; 14 999 ends step 2499
    assert [sched.lr_at_micro_batch(m) for m in (5, 6)] == [0.0, pytest.approx(2e-07)]
    assert sched.lr_at_micro_batch(14999) == pytest.approx(4.998e-04)
    assert sched.lr_at_micro_batch(15000) == pytest.approx(5e-04)
    assert sched.warmup_epochs == pytest.approx(2500 / 305)  # 8.2 epochs of warmup


def test_the_sized_branch_counts_micro_batches():
    stage2 = authors_stage2().model_copy(update={"optim": OptimSpec(lr=5e-4, warmup_steps=2500,
                                                                    schedule="fork-sized")})
    sched = stage2_schedule(stage2, 15_000_000, 32)
    assert sched.horizon == 305 * 6 * 32 == 58560  # Lightning's num_training_batches x max_epochs
    assert sched.lr_at(9759) == pytest.approx(4.795986014386893e-04, rel=1e-12)  # p = 7259 / 56060: 95.9 %


def test_a_warmup_past_the_horizon_is_clamped_to_half_of_it():
    """The fork: ``if warmup_steps >= total_steps: warmup_steps = max(1, total_steps // 2)``."""
    stage2 = authors_stage2().model_copy(update={"optim": OptimSpec(lr=1.0, warmup_steps=2500,
                                                                    schedule="fork-sized")})
    sched = stage2_schedule(stage2, 4096, 2)  # one step an epoch (the batch is the scale), 6 micro-batches
    assert (sched.horizon, sched.warmup_steps) == (12, 6)
    assert [sched.lr_at(s) for s in (0, 1, 3)] == [0.0, pytest.approx(1 / 6), pytest.approx(0.5)]
    unsized = stage2_schedule(authors_stage2(), 4096, 2)  # 25 000-step horizon: the 2500 warmup is kept
    assert unsized.warmup_steps == 2500 and unsized.lr_at(1) == pytest.approx(5e-4 / 2500)


def test_a_warmup_fraction_is_the_same_share_at_every_scale():
    stage2 = Stage2Spec()  # the openclip recipe: 4.27 % of the run
    shares = {}
    for samples in (1_000_000, 3_000_000, 14_829_396):
        s = stage2_schedule(stage2, samples, 32)
        shares[samples] = s.warmup_steps / s.total_steps
    assert max(shares.values()) - min(shares.values()) < 2e-4
    assert stage2_schedule(stage2, 15_000_000, 32).warmup_steps == 2500  # §1.5's 2500 at its own scale
    fixed = Stage2Spec(optim=OptimSpec(warmup_steps=2500))
    assert stage2_schedule(fixed, 1_000_000, 32).warmup_steps == 2500  # a fixed count stays possible
