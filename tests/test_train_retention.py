"""Checkpoint retention (stage2.keep_weights / keep_resume) and the disk use that `status` shows per run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pisweep.commands import session as app
from pisweep.commands.studyref import resolve
from pisweep.job.context import JobContext, Preempted
from pisweep.job.events import read_events
from pisweep.ledger.queries import disk_use
from pisweep.models import TINY_CONFIG
from pisweep.study.plan import eval_epochs, make_plan
from pisweep.study.spec import EvalSpec
from pisweep.testing import StopAfter
from pisweep.train.stage2 import run_stage2

from helpers import make_shards, study

pytestmark = pytest.mark.slow  # trains, or starts processes


def train(folder: Path, s, pattern: str, epochs: int, ctx: JobContext | None = None) -> JobContext:
    ctx = ctx or JobContext(uid="r", folder=folder)
    run_stage2(ctx, s, init="random", init_weights=None, shards=pattern, samples=40, epochs=epochs, seed=0,
               eval_epochs=eval_epochs(epochs, s.eval.every))
    return ctx


def with_stage2(s, **changes):
    return s.model_copy(update={"stage2": s.stage2.model_copy(update=changes)})


def checkpoint_events(folder: Path) -> list[dict]:
    return [e["data"] for _, e in read_events(folder) if e["kind"] == "checkpoint"]


def test_weights_are_kept_for_the_evaluated_epochs_or_all(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    s = study(pattern).model_copy(update={"eval": EvalSpec(every=2)})
    train(tmp_path / "evaluated", s, pattern, epochs=3)
    assert sorted(p.name for p in (tmp_path / "evaluated" / "checkpoints").glob("*.pt")) == ["epoch_2.pt",
                                                                                            "epoch_3.pt"]
    assert [e["epoch"] for e in checkpoint_events(tmp_path / "evaluated") if e["kind"] == "weights"] == [2, 3]
    train(tmp_path / "all", with_stage2(s, keep_weights="all"), pattern, epochs=3)
    assert len(list((tmp_path / "all" / "checkpoints").glob("*.pt"))) == 3


def test_resume_state_shrinks_to_a_marker_when_the_run_is_done_unless_kept(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    folder = tmp_path / "run"
    with pytest.raises(Preempted):
        train(folder, study(pattern), pattern, 2, StopAfter(uid="r", folder=folder, stop_at=3))
    full = (folder / "resume" / "state.pt").stat().st_size
    ctx = train(folder, study(pattern), pattern, 2)
    marker = folder / "resume" / "state.pt"
    assert marker.stat().st_size < full / 20
    state = torch.load(marker, weights_only=True)
    assert state["done"] and "model" not in state and "optimizer" not in state
    last = [e for e in checkpoint_events(folder) if e["kind"] == "resume"][-1]
    assert last["bytes"] == marker.stat().st_size and last["step"] == ctx.step == 10
    again = train(folder, study(pattern), pattern, 2)  # a finished run does not train again
    assert again.step == 10 and again.epoch == 2
    assert len([e for _, e in read_events(folder) if e["kind"] == "epoch_done"]) == 2

    kept = tmp_path / "kept"
    train(kept, with_stage2(study(pattern), keep_resume="always"), pattern, 2)
    assert "optimizer" in torch.load(kept / "resume" / "state.pt", weights_only=True)


def test_disk_use_counts_each_file_once_at_its_size_on_disk(tmp_path):
    pattern = make_shards(tmp_path / "shards", [40])
    spec = {"name": "disk", "output_root": str(tmp_path / "out"),
            "data": {"train": {"s": {"shards": pattern, "samples": 40}}},
            "model": {"name": "pisweep-tiny", "config": TINY_CONFIG},
            "stage2": {"global_batch_size": 8, "workers": 0, "checkpoint_every_steps": 2,
                       "optim": {"warmup_steps": 2}},
            "eval": {"tasks": ["imagenet1k"]}, "wandb": {"mode": "disabled"},
            "grid": {"init": ["random"], "scale": ["s"], "epochs": [2], "seed": [0, 1]}}
    path = tmp_path / "disk.yaml"
    path.write_text(yaml.safe_dump(spec))
    ref = resolve(str(path))
    s = app.open_session(ref)
    try:
        app.record(s)
        done, cut = make_plan(ref.study).runs
        folders = {r.uid: s.layout.run_dir(r.uid) for r in (done, cut)}
        train(folders[done.uid], ref.study, pattern, 2, JobContext(uid=done.uid, folder=folders[done.uid]))
        with pytest.raises(Preempted):  # mid epoch 2: the resume state holds model and optimizer
            train(folders[cut.uid], ref.study, pattern, 2, StopAfter(uid=cut.uid, folder=folders[cut.uid], stop_at=7))
        app.reconcile(s)
        on_disk = {uid: sum(p.stat().st_size for p in [*f.glob("checkpoints/*.pt"), *f.glob("resume/*.pt")])
                   for uid, f in folders.items()}
        assert disk_use(s.ledger, s.name) == on_disk
        assert disk_use(s.ledger, s.name, [cut.uid]) == {cut.uid: on_disk[cut.uid]}
        assert disk_use(s.ledger, s.name, []) == {}
        # one resume file, written at steps 2, 4, 5, 6 and 7 and recorded under epochs 0 and 1: counted once
        assert len({e["epoch"] for e in checkpoint_events(folders[cut.uid]) if e["kind"] == "resume"}) == 2
        assert on_disk[done.uid] < on_disk[cut.uid]  # the finished run keeps its weights and a marker only
    finally:
        s.close()
