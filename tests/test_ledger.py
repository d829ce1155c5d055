"""The ledger: migrations, idempotent ingest, rebuild from job folders, and the lock between commands."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from pisweep.errors import LedgerError
from pisweep.job.events import write_event
from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, record_study
from pisweep.ledger.migrations import LATEST
from pisweep.study.plan import make_plan

SPEC = textwrap.dedent("""\
    name: led
    output_root: out
    data: {synthetic: {root: data}}
    model: {name: pisweep-tiny}
    eval: {tasks: [imagenet1k, cifar10]}
    grid: {scale: [tiny], epochs: [2], seed: [0, 1]}
""")


@pytest.fixture
def setup(recorded):
    return recorded(SPEC)


def write_run_events(layout, run, attempt):
    folder = layout.run_dir(run.uid)
    write_event(folder, run.uid, "attempt_started", attempt, executor="local", host="h", pid=1, world_size=1)
    for epoch in (1, 2):
        write_event(folder, run.uid, "epoch_done", attempt, epoch=epoch, step=epoch * 4,
                    metrics={"train_loss": 3.0 - epoch, "lr": 1e-3})
        write_event(folder, run.uid, "checkpoint", attempt, epoch=epoch, kind="weights", path=f"/x/epoch_{epoch}.pt",
                    sha256="ab", bytes=100, step=epoch * 4)
        for task in ("imagenet1k", "cifar10"):
            write_event(folder, run.uid, "eval_state", attempt, epoch=epoch, task=task, suite_version="1",
                        state="running")
            write_event(folder, run.uid, "eval_state", attempt, epoch=epoch, task=task, suite_version="1", state="done",
                        metrics={"acc1": 0.1 * epoch, "acc5": None, "mean_per_class_recall": 0.05},
                        main_metric="acc1")
    write_event(folder, run.uid, "attempt_ended", attempt, outcome="completed", reason=None, step=8, epoch=2)


def dump(ledger):
    with ledger.engine.connect() as conn:
        return {name: sorted(map(tuple, conn.execute(select(tab)).all()), key=repr)
                for name, tab in (("jobs", t.jobs), ("attempts", t.attempts), ("checkpoints", t.checkpoints),
                                  ("evals", t.evals), ("metrics", t.metrics))}


def test_schema_version_recorded(setup):
    *_, ledger = setup
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).scalar() == str(LATEST)


def test_ingest_same_events_twice_gives_same_rows(setup):
    study, plan, layout, ledger = setup
    for run in plan.runs:
        write_run_events(layout, run, {"job_id": "local-1", "restart": 0})
    n = ingest(ledger, plan.study)
    assert n == len(plan.runs) * (1 + 2 * (1 + 1 + 4) + 1)
    first = dump(ledger)
    assert ingest(ledger, plan.study) == 0  # nothing new
    # forget what was seen: every event is applied a second time, the rows stay the same
    with ledger.engine.begin() as conn:
        conn.execute(t.events_seen.delete())
    assert ingest(ledger, plan.study) == n
    assert dump(ledger) == first
    runs = [r for r in first["jobs"] if r[2] == "train"]
    assert all(r[list(t.jobs.c.keys()).index("state")] == "completed" for r in runs)
    # one metric row per (run, epoch, benchmark, metric); acc5=None is kept as NULL
    metric_rows = [r for r in first["metrics"] if r[2] != "train"]
    assert len(metric_rows) == len(plan.runs) * 2 * 2 * 3


def test_ledger_rebuilds_from_job_folders(setup, tmp_path):
    study, plan, layout, ledger = setup
    for run in plan.runs:
        write_run_events(layout, run, {"job_id": "local-1", "restart": 0})
    ingest(ledger, plan.study)
    fresh = Ledger(tmp_path / "rebuilt.sqlite")
    record_study(fresh, study.model_dump(mode="json"), None, plan, layout)
    ingest(fresh, plan.study)
    a, b = dump(ledger), dump(fresh)
    assert a["metrics"] == b["metrics"] and a["evals"] == b["evals"] and a["checkpoints"] == b["checkpoints"]


def test_attempts_keyed_by_job_id_and_restart(setup):
    study, plan, layout, ledger = setup
    run = plan.runs[0]
    folder = layout.run_dir(run.uid)
    for restart, outcome in ((0, "preempted"), (1, "timeout"), (2, "completed")):
        att = {"job_id": "123", "restart": restart}
        write_event(folder, run.uid, "attempt_started", att, executor="slurm", host="n1", pid=1, world_size=2)
        write_event(folder, run.uid, "attempt_ended", att, outcome=outcome, reason=None, step=10 * (restart + 1), epoch=0)
    ingest(ledger, plan.study)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(t.attempts.c.restart, t.attempts.c.outcome, t.attempts.c.step)
                            .where(t.attempts.c.job_uid == run.uid).order_by(t.attempts.c.restart)).all()
        job = conn.execute(select(t.jobs).where(t.jobs.c.uid == run.uid)).mappings().one()
    assert [tuple(r) for r in rows] == [(0, "preempted", 10), (1, "timeout", 20), (2, "completed", 30)]
    assert job["state"] == "completed" and job["timeouts"] == 1 and job["step_reached"] == 30


def test_changed_result_fields_refused_with_diff(setup, tmp_path):
    study, plan, layout, ledger = setup
    changed = study.model_copy(update={"stage2": study.stage2.model_copy(update={"global_batch_size": 7})})
    with pytest.raises(LedgerError) as e:
        record_study(ledger, changed.model_dump(mode="json"), None, make_plan(changed), layout)
    assert "stage2.global_batch_size: 8192 -> 7" in str(e.value)
    more_seeds = study.model_copy(update={"grid": study.grid.model_copy(update={"seed": [0, 1, 2]})})
    record_study(ledger, more_seeds.model_dump(mode="json"), None, make_plan(more_seeds), layout)  # adding cells is fine


def test_newer_schema_refused(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    with led.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value='999' WHERE key='schema_version'"))
    led.close()
    with pytest.raises(LedgerError, match="newer than this pisweep"):
        Ledger(tmp_path / "l.sqlite")


def test_not_a_ledger(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a readable pisweep ledger"):
        Ledger(bad)


def test_second_command_waits_and_says_for_what(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pisweep.ledger.db import Ledger
        led = Ledger({str(path)!r})
        with led.writing("a long ingest"):
            print("held", flush=True)
            time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    messages = []
    t0 = time.time()
    led = Ledger(path, on_wait=messages.append)
    waited = time.time() - t0
    holder.wait()
    assert len(messages) == 1 and f"pid {holder.pid}" in messages[0] and "a long ingest" in messages[0]
    assert waited > 0.2  # it really waited for the holder
    led.close()


def test_the_slurm_job_of_a_queued_eval_moves_from_its_reason_to_a_column(setup):
    """Ledgers before v5 kept the SLURM job of a queued eval only in its reason; v5 recovers it once, and an eval
    job's own events keep it."""
    study, plan, layout, ledger = setup
    run = plan.runs[0]
    with ledger.engine.begin() as conn:
        for epoch, reason in ((1, "slurm job 4242"), (2, "slurm job 17_3")):
            conn.execute(t.evals.insert().values(job_uid=run.uid, epoch=epoch, task="cifar10", suite_version="1",
                                                 state="queued", reason=reason, updated_at=0.0))
        conn.execute(t.evals.insert().values(job_uid=run.uid, epoch=2, task="imagenet1k", suite_version="1",
                                             state="failed", reason="EvalError: slurm job lost", updated_at=0.0))
        conn.execute(text("UPDATE evals SET scheduler_id = NULL"))
        conn.execute(text("UPDATE meta SET value = '4' WHERE key = 'schema_version'"))
    path = ledger.path
    ledger.close()
    again = Ledger(path)
    try:
        from pisweep.ledger.queries import queued_evals

        assert queued_evals(again, plan.study, "1") == {(run.uid, 1, "cifar10"): "4242",
                                                        (run.uid, 2, "cifar10"): "17_3"}
        with again.engine.connect() as conn:
            failed = conn.execute(select(t.evals.c.scheduler_id).where(t.evals.c.task == "imagenet1k")).scalar()
        assert failed is None
        folder = layout.run_dir(run.uid)
        write_event(folder, run.uid, "eval_state", None, epoch=1, task="cifar10", suite_version="1", state="running")
        ingest(again, plan.study)
        with again.engine.connect() as conn:
            row = conn.execute(select(t.evals.c.state, t.evals.c.scheduler_id).where(
                t.evals.c.epoch == 1, t.evals.c.task == "cifar10")).one()
        assert tuple(row) == ("running", "4242")
    finally:
        again.close()


def test_a_changed_eval_folder_makes_that_tasks_evals_new_results(setup, tmp_path):
    from pisweep.runner.evals import _previous
    from pisweep.study.load import load_study

    study, plan, layout, ledger = setup
    write_run_events(layout, plan.runs[0], {"job_id": "j", "restart": 0})
    ingest(ledger, plan.study)
    spec = tmp_path / "moved.yaml"
    spec.write_text(SPEC.replace("eval: {tasks: [imagenet1k, cifar10]}",
                                 "eval: {tasks: [imagenet1k, cifar10], folders: {cifar10: wds_cifar10_v2}}"))
    changed = load_study(spec)
    record_study(ledger, changed.model_dump(mode="json"), str(spec), make_plan(changed), layout)
    with ledger.engine.connect() as conn:
        evals = {(e, task): (state, reason) for e, task, state, reason in conn.execute(
            select(t.evals.c.epoch, t.evals.c.task, t.evals.c.state, t.evals.c.reason))}
        metric_tasks = set(conn.execute(select(t.metrics.c.task).distinct()).scalars())
    assert evals[(1, "cifar10")] == ("queued", "eval.folders.cifar10 changed: None -> 'wds_cifar10_v2'")
    assert evals[(2, "imagenet1k")][0] == "done"
    assert "cifar10" not in metric_tasks and "imagenet1k" in metric_tasks
    # ... and the eval job does not reuse the result computed on the old folder (a new mount is the same folder)
    result = tmp_path / "cifar10.json"
    result.write_text(json.dumps({"metrics": {"acc1": 0.5}, "pisweep": {"suite_version": "1", "main_metric": "acc1",
                                                                        "folder": "/old/mount/wds_vtab-cifar10"}}))
    assert _previous(result, "1", Path("/data/eval/wds_cifar10_v2")) is None
    assert _previous(result, "1", Path("/new/mount/wds_vtab-cifar10"))["state"] == "done"
