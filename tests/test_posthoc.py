"""The posthoc arm: its cells in the plan (source run, source epoch, uid), when it runs, its job file, and the
fine-tune itself on a real tiny open_clip model and a real (synthetic) NIGHTS folder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pisweep.data.synth import SynthConfig, synthesize
from pisweep.errors import SpecError
from pisweep.job.context import JobContext, Preempted
from pisweep.job.events import read_events
from pisweep.ledger.queries import JobRow, Snapshot
from pisweep.models import TINY_CONFIG, create_model
from pisweep.study.load import study_from_json
from pisweep.study.plan import make_plan
from pisweep.study.spec import Study
from pisweep.study.work import next_work
from pisweep.testing import StopAfter
from pisweep.train.checkpoint import save_weights
from pisweep.train.posthoc import run_posthoc, trainable_names

NAME = "pisweep-tiny"


def spec(**over) -> dict:
    base = {"name": "p", "output_root": "/out", "data": {"synthetic": {"root": "/d", "train_scales": {"s": 64}}},
            "model": {"name": NAME, "config": TINY_CONFIG},
            "grid": {"init": ["random", "perceptual", "posthoc"], "scale": ["s"], "epochs": [4], "seed": [0, 1]}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def study(**over) -> Study:
    return study_from_json(spec(**over))


def cells(plan):
    return [r for r in plan.runs if r.kind == "posthoc"]


# -- the plan ---------------------------------------------------------------------------------------------------------
def test_each_random_run_gets_a_posthoc_cell_per_source_epoch():
    plan = make_plan(study(posthoc={"from_epochs": ["last", 2]}))
    random = {r.seed: r for r in plan.runs if r.init == "random"}
    post = cells(plan)
    assert sorted((r.seed, r.source_epoch) for r in post) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for r in post:
        src = random[r.seed]
        assert r.source == src.uid and r.depends_on == src.uid and r.init_uid is None
        assert (r.scale, r.epochs, r.eval_epochs) == (src.scale, src.epochs, (r.source_epoch,))
        assert r.label == f"posthoc-s-e4-s{r.seed}-at{r.source_epoch}"
    # the random runs keep the source epochs' weights whatever the retention; no other arm does
    assert {r.keep_epochs for r in plan.runs if r.init == "random"} == {(2, 4)}
    assert {r.keep_epochs for r in plan.runs if r.init == "perceptual"} == {()}
    assert len({r.uid for r in post}) == 4


def test_a_posthoc_uid_covers_its_source_its_epoch_and_its_recipe():
    base = make_plan(study())
    trains = {r.label: r.uid for r in base.runs if r.kind == "train"}
    posts = {r.label: r.uid for r in cells(base)}
    # the fine-tune's recipe moves the posthoc uids only
    lr = make_plan(study(posthoc={"optim": {"lr": 3e-5}}))
    assert {r.label: r.uid for r in lr.runs if r.kind == "train"} == trains
    assert set(r.uid for r in cells(lr)).isdisjoint(posts.values())
    # a new source epoch is a new cell; the existing one keeps its uid
    more = make_plan(study(posthoc={"from_epochs": ["last", 1]}))
    assert {r.label: r.uid for r in cells(more) if r.source_epoch == 4} == posts
    # a longer source run (a new grid epoch) is a new run with its own posthoc cell; the old cells stay as they are
    longer = make_plan(study(grid={"epochs": [4, 6]}))
    new = {r.label: r.uid for r in cells(longer)}
    assert {k: v for k, v in new.items() if "-e4-" in k} == posts
    assert sorted(k for k in new if "-e6-" in k) == ["posthoc-s-e6-s0-at6", "posthoc-s-e6-s1-at6"]
    # what does not change the fine-tune's result does not move its uid
    assert {r.label: r.uid for r in cells(make_plan(study(posthoc={"workers": 7})))} == posts


def test_posthoc_source_epochs_a_run_does_not_reach_are_left_out():
    plan = make_plan(study(grid={"epochs": [2, 4]}, posthoc={"from_epochs": [3]}))
    assert sorted(r.label for r in cells(plan)) == ["posthoc-s-e4-s0-at3", "posthoc-s-e4-s1-at3"]


@pytest.mark.parametrize("over, message", [
    ({"grid": {"init": ["perceptual", "posthoc"]}}, r"grid.init: the posthoc arm fine-tunes the random arm"),
    ({"posthoc": {"from_epochs": [9]}}, r"posthoc.from_epochs: source epochs \[9\] are after the longest run"),
    ({"posthoc": {"trainable": ["transformer.resblocks.*"]}}, r"do not name vision-tower parameters"),
    ({"posthoc": {"from_epochs": [0]}}, r"a source epoch must be >= 1"),
])
def test_bad_posthoc_settings_are_refused_with_the_field(tmp_path, over, message):
    import yaml

    from pisweep.study.load import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(**over)))
    with pytest.raises(SpecError, match=message):
        load_study(path)


# -- when a posthoc cell runs ---------------------------------------------------------------------------------------
def _row(uid: str, state: str, epoch: int = 0, failures: int = 0, label: str = "x") -> JobRow:
    return JobRow(uid, "train", label, "random", None, "s", 4, 0, "/f", state, "why" if state == "failed" else None,
                  epoch, 0, failures, 0, None, None, None, 0, None)


def test_a_posthoc_cell_waits_for_its_source_epoch_and_is_blocked_when_its_source_fails():
    plan = make_plan(study(grid={"seed": [0]}, posthoc={"from_epochs": [2, "last"]}))
    src = next(r for r in plan.runs if r.init == "random")
    at2, at4 = sorted(cells(plan), key=lambda r: r.source_epoch)

    def work(state: str, weights: set[int], failures: int = 0):
        return next_work(plan, Snapshot({src.uid: _row(src.uid, state, failures=failures, label=src.label)},
                                        {src.uid: weights}, {}), max_failures=2)

    w = work("running", {1})
    assert at2 in w.waiting and at4 in w.waiting
    w = work("running", {1, 2})  # epoch 2's weights exist: that cell runs, the last-epoch one waits
    assert at2 in w.runs and at4 in w.waiting
    w = work("completed", set())
    assert at2 in w.runs and at4 in w.runs
    w = work("failed", {1}, failures=3)
    assert w.blocked[at4.uid] == f"its source run {src.label} failed: why" and at4 not in w.waiting


def test_the_posthoc_job_file_names_the_source_runs_weights(tmp_path):
    from pisweep.executors.base import cell_job_file
    from pisweep.study.datapaths import DataPaths
    from pisweep.study.layout import Layout

    s = study(output_root=str(tmp_path))
    plan = make_plan(s)
    layout = Layout(tmp_path)
    post = cells(plan)[0]
    paths = DataPaths(nights="/n", train={"s": ("/t/{0..1}.tar", 64)}, eval_root=None)
    jf = cell_job_file(post, s.model_dump(mode="json"), paths, layout)
    assert jf.kind == "posthoc" and jf.folder == str(layout.run_dir(post.uid))
    assert jf.params["source_weights"] == str(layout.run_dir(post.source) / "checkpoints" / "epoch_4.pt")
    assert jf.params["source_epoch"] == 4 and jf.params["nights"] == "/n"
    src = next(r for r in plan.runs if r.uid == post.source)
    assert cell_job_file(src, s.model_dump(mode="json"), paths, layout).params["keep_epochs"] == [4]


# -- the fine-tune ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nights_root(tmp_path_factory) -> Path:
    cfg = SynthConfig(seed=3, nights_triplets=90, nights_low_vote_rows=4, train_scales={"t": 8}, samples_per_shard=8,
                      eval_tasks=["renderedsst2"], eval_examples_per_class=2)
    return synthesize(tmp_path_factory.mktemp("n") / "set", cfg).nights_root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 'pretrained' weights file: the tiny model at a seed, as a run's epoch-3 checkpoint."""
    torch.manual_seed(11)
    model = create_model(NAME, TINY_CONFIG)[0]
    path = tmp_path_factory.mktemp("src") / "epoch_3.pt"
    save_weights(path, 3, model)
    return path


def ft_study() -> Study:
    return study(posthoc={"epochs": 2, "global_batch_size": 16, "workers": 0,
                          "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2}})


@pytest.mark.slow
def test_posthoc_trains_only_the_named_parameters_and_hands_on_the_last_epoch(tmp_path, nights_root, source):
    s = ft_study()
    out = run_posthoc(JobContext(uid="p", folder=tmp_path / "p"), s, source, 3, 0, nights_root)
    assert out == tmp_path / "p" / "checkpoints" / "epoch_3.pt"
    before = torch.load(source, weights_only=True)["state_dict"]
    after = torch.load(out, weights_only=True)
    assert after["epoch"] == 3  # the source epoch: the cell is evaluated where its source run was
    named = trainable_names(list(before), list(s.posthoc.trainable))
    assert named == [f"visual.transformer.resblocks.{i}.attn.{p}" for i in (0, 1) for p in ("in_proj_weight",
                                                                                               "in_proj_bias")]
    for key, tensor in before.items():
        if key in named:
            assert not torch.equal(tensor, after["state_dict"][key]), key
        else:
            assert torch.equal(tensor, after["state_dict"][key]), key  # bitwise the source's
    events = [e for _, e in read_events(tmp_path / "p")]
    done = [e["data"] for e in events if e["kind"] == "epoch_done"]
    assert [d["epoch"] for d in done] == [1, 2] and {d["task"] for d in done} == {"finetune"}
    (ck,) = [e["data"] for e in events if e["kind"] == "checkpoint" and e["data"]["kind"] == "weights"]
    assert ck["epoch"] == 3 and ck["path"] == str(out)
    # the inline model config lies beside the weights: the eval job loads them in a fresh process
    assert (out.parent / f"{NAME}.json").is_file()


@pytest.mark.slow
def test_posthoc_resumes_bitwise_after_a_stop(tmp_path, nights_root, source):
    s = ft_study()
    ref = run_posthoc(JobContext(uid="r", folder=tmp_path / "r"), s, source, 3, 1, nights_root)
    folder = tmp_path / "cut"
    with pytest.raises(Preempted) as info:
        run_posthoc(StopAfter(uid="c", folder=folder, stop_at=5, signal_name="SIGUSR2"), s, source, 3, 1, nights_root)
    assert info.value.step == 5
    cut = run_posthoc(JobContext(uid="c", folder=folder), s, source, 3, 1, nights_root)
    a, b = torch.load(ref, weights_only=True)["state_dict"], torch.load(cut, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_missing_source_or_a_pattern_that_matches_nothing_is_one_clear_error(tmp_path, nights_root, source):
    from pisweep.errors import TrainingError

    with pytest.raises(TrainingError, match=r"source weights .*epoch_9.pt \(epoch 9 of the run it fine-tunes\)"):
        run_posthoc(JobContext(uid="m", folder=tmp_path / "m"), ft_study(), source.parent / "epoch_9.pt", 9, 0,
                    nights_root)
    s = study(posthoc={"trainable": ["visual.no_such_block.*"], "workers": 0})
    with pytest.raises(TrainingError, match=r"posthoc.trainable \['visual.no_such_block.\*'\] matches no parameter"):
        run_posthoc(JobContext(uid="n", folder=tmp_path / "n"), s, source, 3, 0, nights_root)


def test_a_resubmit_with_a_longer_source_run_adds_cells_and_keeps_the_old_results(recorded, tmp_path):
    """The study is extended (grid.epochs 4 -> [4, 6]; posthoc.from_epochs gains epoch 2): new source runs and
    source epochs are new cells; the cell already done keeps its state and its results."""
    import yaml

    from pisweep.job.events import write_event
    from pisweep.ledger.ingest import ingest
    from pisweep.ledger.queries import jobs_of, snapshot

    base = spec(output_root=str(tmp_path / "out"), grid={"seed": [0]})
    _, plan, layout, led = recorded(yaml.safe_dump(base))
    (old,) = cells(plan)
    folder, att = layout.run_dir(old.uid), {"job_id": "j", "restart": 0}
    write_event(folder, old.uid, "attempt_started", att, executor="local", host="h", pid=1, world_size=1)
    write_event(folder, old.uid, "eval_state", att, epoch=4, task="imagenet1k", suite_version="1", state="done",
                metrics={"acc1": 0.5}, main_metric="acc1", path="/e")
    write_event(folder, old.uid, "attempt_ended", att, outcome="completed", reason=None, step=9, epoch=1)
    ingest(led, "p")
    longer = {**base, "grid": {**base["grid"], "epochs": [4, 6]}, "posthoc": {"from_epochs": ["last", 2]}}
    _, plan2, _, _ = recorded(yaml.safe_dump(longer), ledger=tmp_path / "ledger.sqlite")
    new = {r.label: r.uid for r in cells(plan2)}
    assert new[old.label] == old.uid
    assert sorted(new) == ["posthoc-s-e4-s0-at2", "posthoc-s-e4-s0-at4", "posthoc-s-e6-s0-at2", "posthoc-s-e6-s0-at6"]
    jobs = jobs_of(led, "p")
    assert jobs[old.uid].state == "completed"
    assert {jobs[u].state for label, u in new.items() if u != old.uid} == {"planned"}
    assert snapshot(led, "p", "1").evals[(old.uid, 4, "imagenet1k")] == "done"
