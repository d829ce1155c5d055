"""Stage-2 resume: a preempted and resumed run ends bit for bit where an uninterrupted one does; bad states
and non-finite losses fail loudly without overwriting good files."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pisweep.atomic import sha256_file
from pisweep.errors import TrainingError
from pisweep.job.context import JobContext, Preempted
from pisweep.job.events import read_events
from pisweep.study.plan import eval_epochs
from pisweep.study.spec import Study
from pisweep.testing import StopAfter
from pisweep.train.stage2 import run_stage2

from helpers import make_shards, study

pytestmark = pytest.mark.slow  # trains, or starts processes


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(ctx: JobContext, s: Study, pattern: str, epochs: int = 2, seed: int = 0) -> None:
    run_stage2(ctx, s, init="random", init_weights=None, shards=pattern, samples=40, epochs=epochs, seed=seed,
               eval_epochs=eval_epochs(epochs, s.eval.every))


def events(folder: Path, kind: str) -> list[dict]:
    return [e["data"] for _, e in read_events(folder) if e["kind"] == kind]


def weights(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_preempted_and_resumed_run_is_bitwise_identical(tmp_path, one_thread, accumulation):
    pattern = make_shards(tmp_path / "shards", [16, 16, 16])  # 40 samples, batch 8: 5 steps per epoch
    ref = JobContext(uid="ref", folder=tmp_path / "ref")
    train(ref, study(pattern, every=3, accumulation=accumulation), pattern)
    assert [e["step"] for e in events(ref.folder, "checkpoint") if e["kind"] == "resume"] == [3, 5, 6, 9, 10]

    folder = tmp_path / "cut"
    for stop_at in (3, 7):  # mid epoch 1, then mid epoch 2, each time in a fresh call, with a loader worker
        ctx = StopAfter(uid="cut", folder=folder, stop_at=stop_at)
        with pytest.raises(Preempted) as info:
            train(ctx, study(pattern, workers=1, accumulation=accumulation), pattern)
        assert info.value.step == stop_at and info.value.signal_name == "SIGUSR2"
        last = [e for e in events(folder, "checkpoint") if e["kind"] == "resume"][-1]
        assert last["step"] == stop_at and last["sha256"] == sha256_file(folder / "resume" / "state.pt")
    ctx = JobContext(uid="cut", folder=folder)
    train(ctx, study(pattern, accumulation=accumulation), pattern)
    assert ctx.step == 10 and ctx.epoch == 2

    for epoch in (1, 2):
        a, b = weights(ref.folder, epoch), weights(folder, epoch)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (epoch, k)
    ref_loss = [e["metrics"]["train_loss"] for e in events(ref.folder, "epoch_done")]
    cut_loss = [e["metrics"]["train_loss"] for e in events(folder, "epoch_done")]
    assert ref_loss == cut_loss  # the epoch mean spans the preemptions


def test_a_stop_inside_an_accumulation_window_is_taken_at_its_end_and_resumes_bitwise(tmp_path, one_thread,
                                                                                       monkeypatch):
    """The stop request arrives during the second of four micro-batches of step 3 (from a forward hook, as a
    signal would): the step finishes its window, the resume state holds step 3, and the resumed run ends where an
    uninterrupted one does, bit for bit."""
    import pisweep.train.stage2 as stage2

    pattern = make_shards(tmp_path / "shards", [16, 16, 16])
    s = study(pattern, accumulation=4)  # batch 8: 4 micro-batches of 2
    ref = JobContext(uid="ref", folder=tmp_path / "ref")
    train(ref, s, pattern)

    ctx = JobContext(uid="cut", folder=tmp_path / "cut")
    forwards = []
    build = stage2.build_model

    def hooked(*args, **kwargs):
        model, preprocess, tokenizer = build(*args, **kwargs)

        def hook(module, inputs):
            forwards.append(ctx.step)
            if len(forwards) == 2 * 4 + 2:  # step 3 (ctx.step still 2), its second micro-batch
                ctx.request_stop("SIGTERM")
        model.visual.register_forward_pre_hook(hook)
        return model, preprocess, tokenizer

    monkeypatch.setattr(stage2, "build_model", hooked)
    with pytest.raises(Preempted) as info:
        train(ctx, s, pattern)
    monkeypatch.setattr(stage2, "build_model", build)
    assert info.value.step == 3 and forwards == [0] * 4 + [1] * 4 + [2] * 4  # the window ran to its end
    last = [e for e in events(ctx.folder, "checkpoint") if e["kind"] == "resume"][-1]
    assert last["step"] == 3
    again = JobContext(uid="cut", folder=tmp_path / "cut")
    train(again, s, pattern)
    for epoch in (1, 2):
        a, b = weights(ref.folder, epoch), weights(again.folder, epoch)
        for k in a:
            assert torch.equal(a[k], b[k]), (epoch, k)


def test_finished_run_does_not_train_again(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    ctx = JobContext(uid="r", folder=tmp_path / "run")
    train(ctx, study(pattern), pattern, epochs=1)
    before = sha256_file(ctx.folder / "checkpoints" / "epoch_1.pt")
    train(JobContext(uid="r", folder=ctx.folder), study(pattern), pattern, epochs=1)
    assert len(events(ctx.folder, "epoch_done")) == 1
    assert sha256_file(ctx.folder / "checkpoints" / "epoch_1.pt") == before


def test_resume_state_of_another_training_or_garbage_is_refused(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    folder = tmp_path / "run"
    with pytest.raises(Preempted):
        train(StopAfter(uid="r", folder=folder, stop_at=2), study(pattern), pattern)
    with pytest.raises(TrainingError, match=r"different training .*seed"):
        train(JobContext(uid="r", folder=folder), study(pattern), pattern, seed=1)
    (folder / "resume" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="unreadable"):
        train(JobContext(uid="r", folder=folder), study(pattern), pattern)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, one_thread):
    pattern = make_shards(tmp_path / "shards", [40])
    folder = tmp_path / "run"
    with pytest.raises(Preempted):  # epoch 1 completes, then the stop is seen at the start of epoch 2
        train(StopAfter(uid="r", folder=folder, stop_at=5), study(pattern), pattern)
    good = {p: sha256_file(folder / p) for p in ("checkpoints/epoch_1.pt", "resume/state.pt")}

    exploding = study(pattern, lr=1e30, warmup_steps=0)
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+") as info:
        train(JobContext(uid="r", folder=folder), exploding, pattern)
    step = int(re.search(r"step (\d+)", str(info.value)).group(1))
    assert 6 <= step <= 10
    assert {p: sha256_file(folder / p) for p in good} == good
    assert not (folder / "checkpoints" / "epoch_2.pt").exists()
    assert [e["step"] for e in events(folder, "checkpoint") if e["kind"] == "resume"] == [5, 5]


def test_state_with_non_finite_weights_is_never_written(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    folder = tmp_path / "run"
    with pytest.raises(Preempted):
        train(StopAfter(uid="r", folder=folder, stop_at=2), study(pattern), pattern)
    good = sha256_file(folder / "resume" / "state.pt")
    state = torch.load(folder / "resume" / "state.pt", weights_only=True)
    state["model"]["visual.proj"][0, 0] = float("nan")  # e.g. an overflow that the loss did not show yet
    torch.save(state, folder / "resume" / "state.pt")
    poisoned = sha256_file(folder / "resume" / "state.pt")
    with pytest.raises(TrainingError, match="non-finite"):
        train(StopAfter(uid="r", folder=folder, stop_at=3), study(pattern), pattern)
    assert sha256_file(folder / "resume" / "state.pt") == poisoned != good
