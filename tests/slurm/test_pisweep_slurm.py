"""pisweep on the real SLURM dev cluster: a study to completion with evals submitted by the training jobs,
preemption with a real signal and resume, a timeout requeue up to its cap, and a failed init blocking its runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pisweep.cli.main import main
from pisweep.commands import session as app
from pisweep.commands.status import status
from pisweep.commands.studyref import resolve
from pisweep.ledger.ingest import set_eval_states
from pisweep.ledger.queries import attempts_of, queued_evals, snapshot

ROOT = Path(__file__).resolve().parents[2]
SHAPE = {"cpus_per_task": 1, "mem_gb": 2, "time_min": 10}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-data") / "synthetic"


def write_study(tmp_path: Path, synth_root: Path, name: str, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec["name"] = name
    spec["output_root"] = str(tmp_path / "out")
    spec["data"]["synthetic"]["root"] = str(synth_root)
    spec["executor"] = {"name": "slurm", "profile": str(ROOT / "slurm_templates/dev-cluster.yaml"),
                        "init": SHAPE, "train": SHAPE, "eval": SHAPE}
    for path, value in changes.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def pisweep_jobs(study: str) -> dict[str, list[str]]:
    """sacct's view of every job named after the study: {job name: [states]} (no pisweep command involved)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "now-1hours", "-o", "JobID,JobName,State"],
                         capture_output=True, text=True, timeout=30).stdout
    jobs: dict[str, list[str]] = {}
    for line in out.splitlines():
        jid, name, state = line.split("|")
        if name.startswith(f"pisweep.{study}."):
            jobs.setdefault(name, []).append(state.split()[0])
    return jobs


def session_of(path: Path):
    return app.open_session(resolve(str(path)))


def release_held(cluster, job_id: str) -> bool:
    """A requeued job is held ~120 s (BeginTime); let it start now. True once it was pending and released."""
    fields = cluster.job_fields(job_id)
    if fields.get("JobState") == "PENDING":
        time.sleep(3)  # released within the same second, slurmd once refused the launch (credential revoked)
        cluster.client("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        return True
    return False


def reconciled_status(path: Path) -> dict:
    """What `pisweep status` shows once the ledger has read what SLURM and the jobs reported."""
    s = session_of(path)
    try:
        app.reconcile_slurm(s)
        return status(s).to_json()
    finally:
        s.close()


def job_row(path: Path, label: str):
    s = session_of(path)
    try:
        app.reconcile_slurm(s)
        app.reconcile(s)
        snap = snapshot(s.ledger, s.name, s.suite_version)
        row = next(r for r in snap.jobs.values() if r.label == label)
        return row, attempts_of(s.ledger, row.uid)
    finally:
        s.close()


def wait_for_state(cluster, path: Path, label: str, state: str, timeout_s: float):
    """The cell's job row once ``pisweep`` (read through the ledger) shows it in ``state``."""
    def reached():
        row, _ = job_row(path, label)
        return row if row.state == state else None

    return cluster.wait_until(reached, timeout_s, f"{label} to show as {state}")


def test_study_completes_with_evals_submitted_by_training_jobs(slurm_cluster, tmp_path, synth_root):
    name = f"slurm-ci-{int(time.time())}"  # unique: sacct keeps the jobs of earlier runs under their names
    # with the shuffled control: its init is submitted with afterok on the perceptual init, whose epoch it hands on;
    # and the posthoc arm: its fine-tune is submitted with afterok on its source run, and submits its own eval job
    path = write_study(tmp_path, synth_root, name, **{"grid.init": ["random", "perceptual", "shuffled", "posthoc"],
                                                     "posthoc": {"epochs": 1, "workers": 0},
                                                     "executor.posthoc": SHAPE})
    assert main(["submit", str(path)]) == 0
    # From here no pisweep command runs: the eval jobs must come from the training jobs themselves.
    def all_done():
        jobs = pisweep_jobs(name)
        evals = {n: s for n, s in jobs.items() if ".eval." in n}
        states = [s[-1] for s in jobs.values()]
        if any(s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") for s in states):
            pytest.fail(f"a job ended badly: {jobs}")
        return jobs if sum(len(v) for v in evals.values()) == 7 and set(states) == {"COMPLETED"} else None

    jobs = slurm_cluster.wait_until(all_done, 480, "the study's jobs, eval jobs included, to complete")
    assert sum(".init." in n for n in jobs) == 2 and sum(".train." in n for n in jobs) == 3
    assert sum(".posthoc." in n for n in jobs) == 1
    # Now pisweep reads what the jobs reported.
    status = reconciled_status(path)
    assert {c["state"] for c in status["cells"]} == {"completed"}, status["cells"]
    for cell in status["cells"]:
        if cell["kind"] == "train":
            assert cell["evals"].get("done") == 12 and cell["evals"].get("missing_data") == 50
            assert cell["main_metric"]["epoch"] == 2
    handed = {c["label"]: c["main_metric"]["epoch"] for c in status["cells"] if c["kind"] == "init"}
    assert handed["init-shuffled-s0"] == handed["init-perceptual-s0"]  # the control hands on the same epoch
    (post,) = [c for c in status["cells"] if c["kind"] == "posthoc"]
    assert post["evals"].get("done") == 6 and post["main_metric"]["epoch"] == 2
    # A second submit submits nothing.
    before = pisweep_jobs(name)
    assert main(["submit", str(path)]) == 0
    assert pisweep_jobs(name) == before

    # An eval whose SLURM job is gone (a lost submission): status only looks, submit submits its eval job.
    s = session_of(path)
    try:
        uid, epoch, task = next(k for k, v in snapshot(s.ledger, s.name, s.suite_version).evals.items() if v == "done")
        set_eval_states(s.ledger, [(uid, epoch, task)], "queued", s.suite_version, only_new=False,
                        reason="slurm job 999999", scheduler_id="999999")
    finally:
        s.close()

    def submitted_for_it() -> str | None:
        s = session_of(path)
        try:
            return queued_evals(s.ledger, s.name, s.suite_version).get((uid, epoch, task))
        finally:
            s.close()

    assert main(["status", str(path)]) == 0
    assert submitted_for_it() == "999999"  # still queued for the lost job: status submitted nothing
    assert main(["submit", str(path)]) == 0
    job_id = submitted_for_it()
    assert job_id not in (None, "999999")
    slurm_cluster.wait_for_state(job_id, {"COMPLETED"}, timeout_s=300)
    total = sum(map(len, pisweep_jobs(name).values()))
    assert total == sum(map(len, before.values())) + 1, pisweep_jobs(name)  # that eval job, and nothing else


def test_evals_submitted_from_array_elements_complete(slurm_cluster, tmp_path, synth_root):
    """Random cells go out as one job array; each element submits its epochs' eval jobs from inside the array.
    Those jobs must not inherit the array's identity (SLURM_ARRAY_*: submitit would look for the parent's pickle,
    submitit #1782): every eval job COMPLETES in sacct with no pisweep command running meanwhile."""
    name = f"slurm-array-{int(time.time())}"
    path = write_study(tmp_path, synth_root, name, **{"grid.init": ["random"], "grid.seed": [0, 1], "eval.every": 1})
    assert main(["submit", str(path)]) == 0
    row0, _ = job_row(path, "random-tiny-e2-s0")
    assert "_" in row0.scheduler_id  # an array element
    slurm_cluster.track(row0.scheduler_id.split("_")[0])

    def all_done():
        jobs = pisweep_jobs(name)
        states = [s[-1] for s in jobs.values()]
        if any(s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") for s in states):
            pytest.fail(f"a job ended badly: {jobs}")
        n_evals = sum(len(v) for n, v in jobs.items() if ".eval." in n)
        return jobs if n_evals == 4 and set(states) == {"COMPLETED"} else None

    slurm_cluster.wait_until(all_done, 420, "both array elements and their 4 eval jobs to complete")
    # The eval jobs reported under their own job ids, not the array's.
    array = row0.scheduler_id.split("_")[0]
    for folder in {Path(job_row(path, f"random-tiny-e2-s{s}")[0].folder) for s in (0, 1)}:
        done = [json.loads(p.read_text()) for p in folder.glob("events/*-eval_state.json")]
        done = [e for e in done if e["data"]["state"] == "done"]
        assert done and all(not str(e["attempt"]["job_id"]).startswith(f"{array}_") for e in done)
    status = reconciled_status(path)
    for cell in status["cells"]:
        assert cell["state"] == "completed" and cell["evals"].get("done") == 12, cell


def test_preempted_train_job_requeues_and_resumes(slurm_cluster, tmp_path, synth_root):
    path = write_study(tmp_path, synth_root, "slurm-preempt", **{
        "grid.init": ["random"], "grid.epochs": [3], "data.synthetic.train_scales": {"tiny": 512},
        "eval.every": 3})
    assert main(["submit", str(path)]) == 0
    row, _ = job_row(path, "random-tiny-e3-s0")
    job_id = slurm_cluster.track(row.scheduler_id)
    events = Path(row.folder) / "events"
    # (not the starting weights, epoch 0, written before the first step: a checkpoint after some training)
    trained = lambda: [p for p in events.glob("*-checkpoint.json")  # noqa: E731
                       if json.loads(p.read_text())["data"].get("step", 0) > 0]
    slurm_cluster.wait_until(trained, 240, "the first checkpoint")
    # A real signal through the job's srun step, as SLURM sends before a preemption.
    slurm_cluster.client("scancel", "--signal=USR2", job_id)
    slurm_cluster.wait_until(lambda: list(events.glob("*-attempt_ended.json")), 120, "the job to save and stop")
    slurm_cluster.wait_until(lambda: release_held(slurm_cluster, job_id), 120, "the job to be requeued")
    slurm_cluster.wait_until(lambda: len(list(events.glob("*-attempt_ended.json"))) == 2, 300,
                             "the resumed attempt to end")
    row, attempts = job_row(path, "random-tiny-e3-s0")
    assert row.state == "completed", (row.state, row.reason)
    assert [(a["job_id"], a["restart"], a["outcome"]) for a in attempts] == [
        (job_id, 0, "preempted"), (job_id, 1, "completed")]
    assert 0 < attempts[0]["step"] < attempts[1]["step"]
    # Resumed, not restarted: each epoch finished exactly once.
    done = [json.loads(p.read_text())["data"]["epoch"] for p in sorted(events.glob("*-epoch_done.json"))]
    assert done == [1, 2, 3]


def test_timeouts_requeue_up_to_the_cap(slurm_cluster, tmp_path, synth_root):
    profile = tmp_path / "short.yaml"
    profile.write_text(yaml.safe_dump({"partition": "debug", "signal_delay_s": 100}))
    path = write_study(tmp_path, synth_root, "slurm-timeout", **{
        "grid.init": ["random"], "grid.epochs": [200], "data.synthetic.train_scales": {"tiny": 512},
        "eval.every": 200, "executor.profile": str(profile), "executor.max_timeouts": 1,
        "executor.train": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 2}})
    assert main(["submit", str(path)]) == 0
    row, _ = job_row(path, "random-tiny-e200-s0")
    job_id = slurm_cluster.track(row.scheduler_id)
    events = Path(row.folder) / "events"
    # USR2 comes 100 s before the 2-minute limit: the job saves and ends its attempt as a timeout ...
    slurm_cluster.wait_until(lambda: list(events.glob("*-attempt_ended.json")), 180, "the first timeout")
    slurm_cluster.wait_until(lambda: release_held(slurm_cluster, job_id), 120, "the timeout requeue")
    # ... is requeued once (the cap), and the second timeout ends the cell.
    slurm_cluster.wait_until(lambda: len(list(events.glob("*-attempt_ended.json"))) == 2, 240, "the second timeout")
    slurm_cluster.wait_for_state(job_id, ["COMPLETED", "CANCELLED", "TIMEOUT"], timeout_s=120)
    time.sleep(3)
    assert slurm_cluster.job_fields(job_id).get("JobState") != "PENDING"  # not requeued a second time
    row, attempts = job_row(path, "random-tiny-e200-s0")
    assert [(a["restart"], a["outcome"]) for a in attempts] == [(0, "timeout"), (1, "timeout")]
    assert row.state == "timeout" and row.timeouts == 2
    assert attempts[1]["step"] > attempts[0]["step"]  # the second attempt resumed and went further


def test_failed_init_blocks_its_runs(slurm_cluster, tmp_path, synth_root):
    # NIGHTS with a valid data.csv (preflight passes) but no images: the init job fails inside SLURM.
    ok = write_study(tmp_path, synth_root, "slurm-prep")
    from pisweep.study.datapaths import resolve as resolve_data
    from pisweep.study.load import load_study

    resolve_data(load_study(ok), generate=True)
    broken = tmp_path / "nights-broken"
    broken.mkdir()
    shutil.copy(synth_root / "nights" / "data.csv", broken / "data.csv")
    spec = yaml.safe_load(ok.read_text())
    synth = spec["data"].pop("synthetic")
    spec["data"] = {"nights": str(broken), "eval_root": str(synth_root / "eval"),
                    "train": {"tiny": {"shards": str(synth_root / "train/tiny/{00000..00003}.tar"), "samples": 512}}}
    spec["name"] = "slurm-blocked"
    spec["executor"]["max_failures"] = 0
    spec["grid"]["init"] = ["random", "perceptual", "shuffled"]  # the control's init waits for the perceptual one
    path = tmp_path / "blocked.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert synth  # the synthetic spec was the template
    assert main(["submit", str(path)]) == 0
    init, _ = job_row(path, "init-perceptual-s0")
    train, _ = job_row(path, "perceptual-tiny-e2-s0")
    slurm_cluster.track(init.scheduler_id)
    slurm_cluster.track(train.scheduler_id)

    row = wait_for_state(slurm_cluster, path, "perceptual-tiny-e2-s0", "blocked", 180)
    assert "init-perceptual-s0 failed" in row.reason and "DataError" in row.reason
    init, attempts = job_row(path, "init-perceptual-s0")
    assert init.state == "failed" and [a["outcome"] for a in attempts] == ["failed"]
    # SLURM would have kept it pending forever: pisweep cancelled it.
    assert slurm_cluster.job_fields(train.scheduler_id).get("JobState") in ("CANCELLED", None, "")
    random_run, _ = job_row(path, "random-tiny-e2-s0")
    assert random_run.state != "blocked"
    control = wait_for_state(slurm_cluster, path, "init-shuffled-s0", "blocked", 120)
    assert "init-perceptual-s0" in control.reason
    assert slurm_cluster.job_fields(control.scheduler_id).get("JobState") in ("CANCELLED", None, "")


def test_job_cancelled_outside_pisweep_shows_vanished_and_resume_resubmits(slurm_cluster, tmp_path, synth_root):
    path = write_study(tmp_path, synth_root, "slurm-vanish", **{
        "grid.init": ["random"], "grid.seed": [0, 1], "grid.epochs": [200],
        "data.synthetic.train_scales": {"tiny": 512}, "eval.every": 200})
    assert main(["submit", str(path)]) == 0
    row0, _ = job_row(path, "random-tiny-e200-s0")
    row1, _ = job_row(path, "random-tiny-e200-s1")
    # two cells with the same shape and no dependency went out as one job array
    assert row0.scheduler_id.split("_")[0] == row1.scheduler_id.split("_")[0] and "_" in row0.scheduler_id
    slurm_cluster.track(row0.scheduler_id.split("_")[0])
    events = Path(row0.folder) / "events"
    # The first checkpoint is the starting weights (epoch 0), written as wandb starts: a scancel then killed
    # wandb-core mid-start, and the job ended as failed (a ServicePollForTokenError) instead of vanishing.
    slurm_cluster.wait_until(lambda: list(events.glob("*-checkpoint.json")), 240, "the first checkpoint")
    slurm_cluster.client("scancel", row0.scheduler_id)  # outside pisweep

    row = wait_for_state(slurm_cluster, path, "random-tiny-e200-s0", "vanished", 120)
    assert "cancelled outside pisweep" in row.reason or "neither squeue nor sacct" in row.reason
    other, _ = job_row(path, "random-tiny-e200-s1")
    assert other.state in ("queued", "running")
    # resume resubmits only the vanished cell, as its own job (not an array element)
    assert main(["resume", str(path)]) == 0
    again, _ = job_row(path, "random-tiny-e200-s0")
    slurm_cluster.track(again.scheduler_id)
    assert again.state == "queued" and again.scheduler_id != row0.scheduler_id and "_" not in again.scheduler_id
    assert job_row(path, "random-tiny-e200-s1")[0].scheduler_id == row1.scheduler_id
    assert main(["cancel", str(path)]) == 0
    assert {job_row(path, lbl)[0].state for lbl in ("random-tiny-e200-s0", "random-tiny-e200-s1")} == {"cancelled"}
