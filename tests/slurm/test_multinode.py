"""A 2-node train job, simulated as 2 SLURM tasks on the dev cluster's one node: each task is pisweep's SlurmTask
running the real node launcher with nnodes = 2 (rendezvous on the first host, port from the job id).

Asserted: ranks and world size as each rank sees them, parameters in sync (the epoch check, and the weights equal
to a one-node two-rank run's); and a real SIGUSR2 to every process of the job step: both nodes save and stop,
node 0 alone requeues, the next attempt resumes and completes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from pisweep.job.contract import JobFile
from pisweep.job.events import read_events
from pisweep.runner.slurm import SlurmTask

from helpers import Pace, make_shards, pause_setup, study


def write_job(tmp: Path, folder: str, epochs: int = 2) -> Path:
    pattern = make_shards(tmp / "shards", [16, 16]) if not (tmp / "shards").exists() else \
        f"{tmp / 'shards'}/{{00000..00001}}.tar"
    s = study(pattern, workers=1)
    s = s.model_copy(update={"stage2": s.stage2.model_copy(update={"log_every_steps": 1})})
    job = JobFile("train", "multinode", str(tmp / folder), s.model_dump(mode="json"),
                  {"init": "random", "init_weights": None, "shards": pattern, "samples": 32, "epochs": epochs, "eval_epochs": list(range(1, epochs + 1)),
                   "seed": 0})
    return job.write(tmp / f"{folder}.json")


def submit(tmp: Path, job: Path, setup: list[str] | None = None):
    import submitit

    ex = submitit.SlurmExecutor(folder=str(tmp / "submitit"), python=sys.executable)
    ex.update_parameters(job_name="pisweep-multinode", time=10, nodes=1, ntasks_per_node=2, cpus_per_task=1,
                         mem="6G", signal_delay_s=60, stderr_to_stdout=True,
                         setup=["export PISWEEP_EXECUTOR=slurm WANDB_MODE=disabled", *(setup or [])],
                         additional_parameters={"requeue": True, "open-mode": "append"})
    return ex.submit(SlurmTask(str(job), max_failures=0, max_timeouts=0, signal_delay_s=60))


def logs(tmp: Path, job_id: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((tmp / "submitit").glob(f"{job_id}_*_log.out")))


def events(folder: Path, kind: str) -> list[dict]:
    return [e for _, e in read_events(folder) if e["kind"] == kind]


def weights(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)["state_dict"]


def test_two_tasks_run_the_launcher_as_two_nodes_with_ranks_in_sync(slurm_cluster, tmp_path):
    job = submit(tmp_path, write_job(tmp_path, "run"))
    slurm_cluster.track(job.job_id)
    slurm_cluster.wait_for_state(job.job_id, {"COMPLETED"}, timeout_s=300)
    out = logs(tmp_path, job.job_id)
    for rank in (0, 1):
        assert f"rank {rank} of 2 (local rank 0 of 1, 2 nodes)" in out, out[-4000:]
    assert "launching 1 rank(s) on node 0 of 2" in out and "launching 1 rank(s) on node 1 of 2" in out
    assert f":{10000 + int(job.job_id) % 20000}" in out  # the rendezvous port derived from the job id
    checks = re.findall(r"epoch (\d): parameters identical on 2 ranks \(checksum (\S+)\)", out)
    assert len(checks) == 4 and len({c for e, c in checks if e == "1"}) == len({c for e, c in checks if e == "2"}) == 1
    run = tmp_path / "run"
    (started,) = events(run, "attempt_started")
    assert started["data"]["world_size"] == 2 and started["data"]["nodes"] == 2
    assert started["attempt"] == {"job_id": job.job_id, "restart": 0}
    assert [e["data"]["outcome"] for e in events(run, "attempt_ended")] == ["completed"]

    # The same job as one node with two ranks: same world size and threads, so the same weights, bit for bit.
    ref = subprocess.run([sys.executable, "-m", "pisweep.runner.launch", "--nproc-per-node", "2",
                          str(write_job(tmp_path, "ref"))], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PISWEEP_THREADS": "2", "WANDB_MODE": "disabled"})
    assert ref.returncode == 0, ref.stdout[-4000:]
    for epoch in (1, 2):
        a, b = weights(tmp_path / "ref", epoch), weights(run, epoch)
        assert all(torch.equal(a[k], b[k]) for k in a), epoch


def test_sigusr2_to_the_whole_step_stops_both_nodes_and_node_0_requeues(slurm_cluster, tmp_path):
    pace = Pace()  # waits scale with how long this machine took to start the job and reach step 3
    job = submit(tmp_path, write_job(tmp_path, "run", epochs=3), pause_setup(3))
    slurm_cluster.track(job.job_id)
    run = tmp_path / "run"
    slurm_cluster.wait_until(lambda: (run / "paused-3").exists(), pace.bound(), "the job to reach step 3")
    pace.measured()
    # as SLURM does before a preemption: every process of the job step (launchers, ranks, loader workers)
    slurm_cluster.client("scancel", "--signal=USR2", job.job_id)
    slurm_cluster.wait_until(lambda: events(run, "attempt_ended"), pace.bound(), "the job to save and stop")

    def released() -> bool:
        """A requeued job is held ~120 s; start it now. Not within the second of the requeue: slurmd would
        refuse the new launch's credential as revoked with the old one ("Job credential revoked")."""
        fields = slurm_cluster.job_fields(job.job_id)
        if fields.get("JobState") == "PENDING":
            time.sleep(3)
            slurm_cluster.client("scontrol", "update", f"JobId={job.job_id}", "StartTime=now")
            return True
        return False

    slurm_cluster.wait_until(released, 120, "node 0 to requeue the job")
    slurm_cluster.wait_until(lambda: len(events(run, "attempt_ended")) == 2, 2 * pace.bound(),
                             "the resumed attempt to end")
    slurm_cluster.wait_for_state(job.job_id, {"COMPLETED"}, timeout_s=120)  # and not requeued again
    ended = events(run, "attempt_ended")
    assert [(e["attempt"]["restart"], e["data"]["outcome"]) for e in ended] == [(0, "preempted"), (1, "completed")]
    assert ended[0]["data"]["step"] == 3 and "SIGUSR2" in ended[0]["data"]["reason"]
    assert ended[1]["data"]["step"] == 12
    out = logs(tmp_path, job.job_id)
    assert out.count("requeueing") == 1, out[-4000:]  # node 0 only
    assert "DataLoader worker" not in out and "killed by signal" not in out
    done = [e["data"]["epoch"] for e in events(run, "epoch_done")]
    assert done == [1, 2, 3]
