"""The dev cluster really schedules what pisweep relies on: submitit jobs, sacct states,
dependencies, multi-task srun, arrays, requeue and preemption signals.

Each test submits a few tiny jobs and waits with a timeout; all run in well under a minute
on 2 cores. They need `slurm_templates/dev-cluster.sh up` (see conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # conftest is not importable at run time (tests/slurm is not a package)
    from tests.slurm.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm_templates" / "dev-cluster.sh"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_status_script_reports_fully_up(slurm_cluster: SlurmCluster) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sacct: ok" in proc.stdout
    assert "fully up" in proc.stdout


def test_submitit_job_completes_and_sacct_says_completed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")

    # Defined inside the test so cloudpickle ships it by value: the job's python cannot
    # import this test module by name.
    def multiply(a: int, b: int) -> tuple[int, str]:
        import os

        return a * b, os.environ.get("SLURM_JOB_ID", "")

    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit", max_num_timeout=0, python=sys.executable)
    executor.update_parameters(time=5, ntasks_per_node=1, cpus_per_task=1, mem="512M", job_name="pisweep-test")
    job = executor.submit(multiply, 6, 7)
    slurm_cluster.track(job.job_id)

    assert slurm_cluster.wait_for_state(job.job_id, {"COMPLETED"}, timeout_s=120) == {job.job_id: "COMPLETED"}
    value, ran_in = job.result()
    assert value == 42
    assert ran_in == job.job_id  # it really ran as that SLURM job, not locally
    # submitit's own sacct polling must see the state too (it stays UNKNOWN without slurmdbd).
    assert job.done(force_check=True)
    assert job.get_info(mode="force").get("State") == "COMPLETED"


def test_afterok_on_failed_job_leaves_dependent_pending(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    failing = slurm_cluster.sbatch("-o", str(tmp_path / "fail.out"), "--wrap", "exit 3")
    dependent = slurm_cluster.sbatch(
        f"--dependency=afterok:{failing}", "-o", str(tmp_path / "dep.out"), "--wrap", "echo should-not-run"
    )
    slurm_cluster.wait_for_state(failing, {"FAILED"}, timeout_s=60)

    fields = slurm_cluster.wait_until(
        lambda: (f := slurm_cluster.job_fields(dependent)).get("Reason") == "DependencyNeverSatisfied" and f,
        timeout_s=30,
        what=f"job {dependent} to show Reason=DependencyNeverSatisfied",
    )
    assert fields["JobState"] == "PENDING"  # SLURM does not cancel it by itself
    # sacct lists nothing for such a job (it never became eligible): pollers must use squeue.
    squeue = slurm_cluster.client("squeue", "-h", "-j", dependent, "-o", "%T %r").stdout.split()
    assert squeue == ["PENDING", "DependencyNeverSatisfied"]
    assert not (tmp_path / "dep.out").exists()


def test_two_task_srun_inside_sbatch_sees_both_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "ranks.out"
    overcommit = ["--overcommit"] if slurm_cluster.cpus < 2 else []
    job = slurm_cluster.sbatch(
        "-n", "2", *overcommit, "-o", str(out),
        "--wrap", 'srun -n 2 bash -c "echo rank=\\$SLURM_PROCID of=\\$SLURM_NTASKS"',
    )  # fmt: skip
    slurm_cluster.wait_for_state(job, {"COMPLETED"}, timeout_s=60)

    lines = sorted(line for line in _read(out).splitlines() if line.startswith("rank="))
    assert lines == ["rank=0 of=2", "rank=1 of=2"], _read(out)
    steps = slurm_cluster.client("sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks").stdout.splitlines()
    assert f"{job}.0|2" in steps  # one step with two tasks, recorded by accounting


def test_array_tasks_all_complete(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(
        "--array=0-3", "-o", str(tmp_path / "task_%a.out"), "--wrap", "echo task=$SLURM_ARRAY_TASK_ID"
    )
    states = slurm_cluster.wait_for_state(job, {"COMPLETED"}, timeout_s=60, tasks=4)

    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    for i in range(4):
        assert _read(tmp_path / f"task_{i}.out").strip() == f"task={i}"


def test_pending_array_elements_are_seen_one_by_one(slurm_cluster: SlurmCluster) -> None:
    """Four 1-CPU elements on 2 CPUs: two wait. sacct has no row for a pending element and squeue folds them into
    "<job>_[2-3]" unless asked per element; pisweep's query must see each one (else it looks gone: vanished)."""
    from pisweep.executors.sacct import query

    job = slurm_cluster.sbatch("--array=0-3", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 60")
    ids = [f"{job}_{i}" for i in range(4)]

    def two_running():
        queue = query(ids)[1]
        return queue if sum(q[0] == "RUNNING" for q in queue.values()) == 2 else None

    queue = slurm_cluster.wait_until(two_running, 60, "two elements running, two pending")
    acct = query(ids)[0]
    pending = [i for i in ids if queue.get(i, ("",))[0] == "PENDING"]
    assert len(pending) == 2 and all(i not in acct for i in pending)  # squeue is the only witness
    assert set(queue) == set(ids)


def test_requeue_then_starttime_now_runs_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "requeue.out"
    job = slurm_cluster.sbatch(
        "--requeue", "--open-mode=append", "-o", str(out), "--wrap", 'echo "restart=${SLURM_RESTART_COUNT:-0}"'
    )
    slurm_cluster.wait_for_state(job, {"COMPLETED"}, timeout_s=60)
    assert _read(out).split() == ["restart=0"]

    slurm_cluster.scontrol("requeue", job)
    slurm_cluster.wait_until(
        lambda: slurm_cluster.job_fields(job).get("JobState") == "PENDING", 30, f"job {job} pending after requeue"
    )
    # A requeued job is held ~120 s (BeginTime); releasing it keeps the test short.
    slurm_cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    slurm_cluster.wait_until(
        lambda: slurm_cluster.job_fields(job).get("JobState") == "COMPLETED" and "restart=1" in _read(out),
        60,
        f"job {job} to complete a second time",
    )

    assert _read(out).split() == ["restart=0", "restart=1"]  # same job id, same (appended) log
    assert slurm_cluster.job_fields(job)["Restarts"] == "1"
    history = slurm_cluster.wait_until(
        lambda: (h := slurm_cluster.sacct_states(job, duplicates=True).get(job, [])) == ["REQUEUED", "COMPLETED"]
        and h,
        30,
        f"sacct -D to list both attempts of job {job}",
    )
    assert history == ["REQUEUED", "COMPLETED"]


def test_preemption_sends_user_signal_and_requeues(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A job in partition `urgent` preempts one in `debug`; the victim gets its --signal at once
    (SlurmctldParameters=preempt_send_user_signal), requeues itself as submitit would, and the
    urgent job runs."""
    cpus = str(slurm_cluster.cpus)
    out = tmp_path / "victim.out"
    step = (
        'trap "echo got-USR2 restart=\\${SLURM_RESTART_COUNT:-0}; scontrol requeue \\$SLURM_JOB_ID; exit 0" USR2; '
        "echo started; while true; do sleep 0.2; done"
    )
    victim = slurm_cluster.sbatch(
        "-p", "debug", "-n", cpus, "--time=10", "--signal=USR2@30", "--requeue", "--open-mode=append",
        "-o", str(out), "--wrap", f"srun -n 1 bash -c '{step}'",
    )  # fmt: skip
    slurm_cluster.wait_until(lambda: "started" in _read(out), 60, f"victim job {victim} to start")

    urgent = slurm_cluster.sbatch("-p", "urgent", "-n", cpus, "-o", str(tmp_path / "urgent.out"), "--wrap", "true")
    slurm_cluster.wait_for_state(urgent, {"COMPLETED"}, timeout_s=90)

    assert "got-USR2 restart=0" in _read(out)
    assert slurm_cluster.job_fields(victim).get("Restarts") == "1"
    first_attempt = slurm_cluster.wait_until(
        lambda: slurm_cluster.sacct_states(victim, duplicates=True).get(victim, [None])[0],
        30,
        f"sacct to record job {victim}",
    )
    assert first_attempt in {"PREEMPTED", "REQUEUED"}
