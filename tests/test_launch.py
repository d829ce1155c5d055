"""The node launcher (runner/launch.py): rendezvous settings from SLURM, signal ownership, ranks under
torch.distributed.elastic with gloo, failures recorded; and the helpers of a rank that must outlive stop signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pisweep.job.contract import JobFile
from pisweep.job.events import read_events
from pisweep.runner.launch import (
    LaunchResult,
    LaunchSpec,
    _result,
    catches,
    port_for_job,
    rank_pids,
    record_unreported_failure,
    slurm_spec,
)
from pisweep.train.loader import make_loader

from helpers import make_shards, pause_env, study

LIMIT_S = 150


# -- pure pieces ------------------------------------------------------------------------------------------------
def test_port_is_derived_from_the_job_id_below_the_ephemeral_range():
    assert port_for_job("123456") == port_for_job(123456) == 10000 + 123456 % 20000
    assert port_for_job("77_3") != port_for_job("78_3")
    assert all(10000 <= port_for_job(i) < 30000 for i in (0, 1, 19999, 20000, 987654321))


def test_slurm_spec_makes_one_launcher_per_task_with_the_rendezvous_on_the_first_host(monkeypatch):
    monkeypatch.setattr("pisweep.runner.launch.first_host", lambda nodelist: {"gpu[07-08]": "gpu07"}[nodelist])
    env = {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_CPUS_PER_TASK": "32"}
    spec = slurm_spec(4, env)
    assert spec == LaunchSpec(nnodes=2, nproc_per_node=4, node_rank=1, master_addr="gpu07",
                              master_port=port_for_job("4242"), run_id="pisweep-4242-2", threads_per_rank=8)
    assert spec.world_size == 8


def test_node_result_is_failed_stopped_or_completed():
    spec = LaunchSpec(nproc_per_node=2)
    assert _result({0: 0, 1: 0}, None, spec) == LaunchResult(0, None, {0: 0, 1: 0})
    assert _result({0: 3, 1: 3}, None, spec).code == 3
    assert _result({0: 3, 1: 1}, None, spec) == LaunchResult(1, "rank(s) [1] failed", {0: 3, 1: 1})
    assert _result({0: 0}, None, spec).reason == "only ranks [0] of this node reported an end"
    assert _result({0: 3}, "rank 1 (pid 9) killed by SIGKILL", spec).code == 1
    # every rank recorded its end before one was killed (a job-wide SIGTERM during its exit): the reports stand
    assert _result({0: 3, 1: 3}, "rank 1 (pid 9) killed by SIGTERM", spec) == LaunchResult(3, None, {0: 3, 1: 3})


def test_unreported_failure_is_recorded_once(tmp_path):
    job = JobFile("train", "u1", str(tmp_path / "run"), {}, {}).write(tmp_path / "job.json")
    attempt = {"job_id": "j", "restart": 0}
    assert record_unreported_failure(job, attempt, "rank 0 (pid 5) killed by SIGKILL")
    assert not record_unreported_failure(job, attempt, "again")
    ended = [e for _, e in read_events(tmp_path / "run") if e["kind"] == "attempt_ended"]
    assert len(ended) == 1 and ended[0]["attempt"] == attempt and ended[0]["data"]["outcome"] == "failed"
    assert "killed by SIGKILL" in ended[0]["data"]["reason"]


# -- signals ------------------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import signal, sys, time
    got = []
    if sys.argv[1] == "catch":
        signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
    print("ready", flush=True)
    time.sleep(30)
""")


@pytest.mark.slow
def test_rank_pids_are_session_leading_children_and_catches_reads_their_handlers():
    leader = subprocess.Popen([sys.executable, "-c", CHILD, "catch"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    plain = subprocess.Popen([sys.executable, "-c", CHILD, "default"], stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout.readline().strip() == plain.stdout.readline().strip() == "ready"
        assert rank_pids() == [leader.pid]  # the other child does not lead a session: not a rank
        assert catches(leader.pid, signal.SIGUSR2) and not catches(plain.pid, signal.SIGUSR2)
        assert not catches(leader.pid, signal.SIGHUP)
    finally:
        for p in (leader, plain):
            p.kill()
            p.wait()


class Slow(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> int:
        time.sleep(0.01)
        return i


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_loader_workers_outlive_stop_signals_from_outside_but_not_their_parents_sigterm(sig):
    # SLURM signals every process of a job step; PyTorch's workers die on a SIGTERM that their parent did not send
    loader = make_loader(Slow(), torch.utils.data.BatchSampler(range(10_000), 4, False), workers=1,
                         pin_memory=False, seed=0)
    batches = iter(loader)
    next(batches)
    (worker,) = batches._workers
    subprocess.run(["kill", "-s", sig.name[3:], str(worker.pid)], check=True)  # sent by another process
    time.sleep(0.3)
    for _ in range(5):
        next(batches)
    assert worker.is_alive()
    worker.terminate()  # the parent's SIGTERM (multiprocessing's exit path) still ends it
    worker.join(10)
    assert worker.exitcode == 0


# -- the real launcher ------------------------------------------------------------------------------------------
def write_job(tmp: Path, epochs: int = 1, workers: int = 1, shards: str | None = None) -> Path:
    pattern = make_shards(tmp / "shards", [16, 16])
    s = study(pattern, workers=workers)
    s = s.model_copy(update={"stage2": s.stage2.model_copy(update={"log_every_steps": 1})})
    job = JobFile("train", "launched", str(tmp / "run"), s.model_dump(mode="json"),
                  {"init": "random", "init_weights": None, "shards": shards or pattern, "samples": 32,
                   "epochs": epochs, "seed": 0, "eval_epochs": list(range(1, epochs + 1))})
    return job.write(tmp / "job.json")


def launcher(job: Path, env: dict[str, str] | None = None, nproc: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pisweep.runner.launch", "--nproc-per-node", str(nproc), str(job)],
                            env={**os.environ, "PISWEEP_THREADS": "2", "PISWEEP_JOB_ID": "t", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        for pid in rank_pids(proc.pid):  # each rank leads its own process group (with its loader workers)
            os.killpg(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"launcher still running after {LIMIT_S}s:\n{out[-4000:]}")
    return proc.returncode, out


def events(folder: Path, kind: str) -> list[dict]:
    return [e for _, e in read_events(folder) if e["kind"] == kind]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_in_sync_and_report_once(tmp_path):
    job = write_job(tmp_path)
    code, out = finish(launcher(job))
    assert code == 0, out[-4000:]
    assert "rank 0 of 2 (local rank 0 of 2, 1 nodes)" in out and "rank 1 of 2 (local rank 1 of 2, 1 nodes)" in out
    assert "1 threads" in out  # the node's 2 threads shared by its 2 ranks
    sums = {line.rsplit("checksum ", 1)[1] for line in out.splitlines() if "parameters identical on 2 ranks" in line}
    assert len(sums) == 1
    run = tmp_path / "run"
    (started,) = events(run, "attempt_started")  # one rank writes events
    assert started["data"]["world_size"] == 2 and started["data"]["nodes"] == 1
    assert started["attempt"] == {"job_id": "t", "restart": 0}
    (ended,) = events(run, "attempt_ended")
    assert ended["data"]["outcome"] == "completed" and ended["data"]["step"] == 4  # 32 samples, batch 8
    assert (run / "checkpoints" / "epoch_1.pt").exists()
    resume = torch.load(run / "resume" / "state.pt", weights_only=True)
    assert resume["done"] and set(resume) == {"format", "done", "step", "pos", "fingerprint", "unreported"}  # pruned
    assert resume["unreported"]["epoch"] == 1  # the last epoch's report, in case the job had died before writing it


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stop_signal_before_the_ranks_catch_it_is_forwarded_once_they_do(tmp_path):
    job = write_job(tmp_path)
    proc = launcher(job)
    while not catches(proc.pid, signal.SIGUSR2):  # the launcher is up; its ranks start seconds later
        assert proc.poll() is None
        time.sleep(0.01)
    assert rank_pids(proc.pid) == []
    os.killpg(proc.pid, signal.SIGUSR2)
    code, out = finish(proc)
    assert code == 3, out[-4000:]
    assert "stop signal SIGUSR2 was forwarded to ranks" in out
    (ended,) = events(tmp_path / "run", "attempt_ended")
    assert ended["data"]["outcome"] == "preempted" and "SIGUSR2" in ended["data"]["reason"]
    state = torch.load(tmp_path / "run" / "resume" / "state.pt", weights_only=True)
    assert state["step"] == ended["data"]["step"] and state["world_size"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_rank_fails_the_attempt_with_its_signal_named(tmp_path):
    job = write_job(tmp_path, epochs=2)
    proc = launcher(job, pause_env(2))
    marker = tmp_path / "run" / "paused-2"
    deadline = time.monotonic() + LIMIT_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), finish(proc)[1][-4000:]
    ranks = {int(dict(kv.split("=", 1) for kv in Path(f"/proc/{p}/environ").read_text().split("\0") if "=" in kv)
                 ["RANK"]): p for p in rank_pids(proc.pid)}
    os.kill(ranks[0], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 1, out[-4000:]
    (ended,) = events(tmp_path / "run", "attempt_ended")  # written by the launcher: rank 0 could not
    assert ended["data"]["outcome"] == "failed" and ended["attempt"] == {"job_id": "t", "restart": 0}
    assert f"rank 0 (pid {ranks[0]}) killed by SIGKILL" in ended["data"]["reason"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_failure_on_every_rank_is_recorded_by_rank_0(tmp_path):
    job = write_job(tmp_path, shards=str(tmp_path / "missing-{0..1}.tar"))
    code, out = finish(launcher(job))
    assert code == 1, out[-4000:]
    (ended,) = events(tmp_path / "run", "attempt_ended")
    assert ended["data"]["outcome"] == "failed" and "TrainingError" in ended["data"]["reason"]
    assert "no rank recorded" not in ended["data"]["reason"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_state_saved_by_one_rank_resumes_on_two_in_the_same_sample_order(tmp_path):
    from pisweep.job.context import Preempted
    from pisweep.study.load import study_from_json
    from pisweep.testing import StopAfter
    from pisweep.train.stage2 import run_stage2

    job = JobFile.read(write_job(tmp_path, epochs=2))
    ctx = StopAfter(uid=job.uid, folder=Path(job.folder), stop_at=3)
    with pytest.raises(Preempted):
        run_stage2(ctx, study_from_json(job.study), **{k: v for k, v in job.params.items() if k != "init_weights"},
                   init_weights=None)
    assert torch.load(tmp_path / "run" / "resume" / "state.pt", weights_only=True)["world_size"] == 1
    code, out = finish(launcher(tmp_path / "job.json"))
    assert code == 0, out[-4000:]
    ended = events(tmp_path / "run", "attempt_ended")
    assert [e["data"]["outcome"] for e in ended] == ["completed"] and ended[0]["data"]["step"] == 8
    assert [e["data"]["epoch"] for e in events(tmp_path / "run", "epoch_done")] == [1, 2]


def test_a_global_batch_that_ranks_cannot_share_is_refused_clearly():
    from pisweep.errors import TrainingError
    from pisweep.train.loader import EpochBatchSampler

    with pytest.raises(TrainingError, match="global batch 8 is not divisible by 3 ranks"):
        EpochBatchSampler([16, 16], seed=0, global_batch=8, rank=0, world_size=3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_executor_runs_gpus_per_node_ranks_through_the_launcher(tmp_path, monkeypatch):
    from pisweep.runner.entry import local_ranks

    job = JobFile.read(write_job(tmp_path))
    assert local_ranks(job) == 1
    study = {**job.study, "executor": {**job.study["executor"], "train": {"gpus_per_node": 2}}}
    two = JobFile(job.kind, job.uid, job.folder, study, job.params)
    assert local_ranks(two) == 2
    assert local_ranks(JobFile("eval", "u", "f", two.study, {})) == 1
    monkeypatch.setenv("PISWEEP_EXECUTOR", "slurm")  # SLURM jobs launch from their task, not from here
    assert local_ranks(two) == 1
    monkeypatch.setenv("PISWEEP_EXECUTOR", "local")
    # what the local executor runs: python -m pisweep.runner JOB.json
    done = subprocess.run([sys.executable, "-m", "pisweep.runner", str(two.write(tmp_path / "two.json"))],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PISWEEP_THREADS": "2", "PISWEEP_JOB_ID": "local-1"})
    assert done.returncode == 0, done.stdout[-4000:]
    (started,) = events(tmp_path / "run", "attempt_started")
    assert started["data"]["world_size"] == 2 and started["attempt"]["job_id"] == "local-1"


# -- SLURM side: what a task decides before launching ------------------------------------------------------------
def test_ranks_per_node_come_from_slurms_gpu_count_then_the_study(monkeypatch):
    from pisweep.runner.slurm import ranks_per_node

    job = JobFile("train", "u", "f", {"executor": {"train": {"gpus_per_node": 8}}}, {})
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    assert ranks_per_node(job) == 8
    assert ranks_per_node(JobFile("train", "u", "f", {"executor": {"train": {"gpus_per_node": 0}}}, {})) == 1
    monkeypatch.setenv("SLURM_GPUS_PER_NODE", "a100:4")
    assert ranks_per_node(job) == 4
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    assert ranks_per_node(job) == 2


def test_ranks_act_for_their_slurm_task(tmp_path, monkeypatch):
    import dataclasses

    from pisweep.atomic import atomic_write_json
    from pisweep.runner.slurm import SlurmTask, rank_callbacks

    task = SlurmTask("job.json", 1, 2, 90, {"epochs": [1], "tasks": ["imagenet1k"]}, started=1234.5)
    atomic_write_json(tmp_path / "task.json", dataclasses.asdict(task))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    stop_outcome, hooks = rank_callbacks(tmp_path / "task.json", JobFile("train", "u", "f", {}, {}))
    assert stop_outcome() == "preempted" and stop_outcome.__self__ == task  # same task, same start time
    assert len(hooks) == 1
    assert rank_callbacks(tmp_path / "task.json", JobFile("init", "u", "f", {}, {}))[1] == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_local_executor_keeps_the_real_reason_a_multi_rank_job_failed(tmp_path):
    """Rank 0 records why the attempt failed; the local executor, which sees only its launcher exit 1, must not
    replace that reason with "exited without reporting"."""
    import io
    import tarfile

    import yaml

    from pisweep.cli.main import main
    from pisweep.commands import session as app
    from pisweep.commands.studyref import resolve
    from pisweep.ledger.queries import attempts_of

    shards = tmp_path / "bad"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for j in range(16):
                for ext, data in (("jpg", b"not an image"), ("txt", b"a caption")):
                    info = tarfile.TarInfo(f"{s:05d}{j:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    spec = study(f"{shards}/{{00000..00001}}.tar").model_dump(mode="json", exclude={"ledger"})
    spec.update(name="badimages", output_root=str(tmp_path / "out"))
    spec["data"]["train"]["s"]["samples"] = 32
    spec["grid"]["init"] = ["random"]
    spec["executor"]["train"]["gpus_per_node"] = 2
    spec["eval"]["tasks"] = ["cifar10"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["submit", str(path)]) != 0
    with app.open_session(resolve(str(path))) as s:
        app.reconcile(s)
        (run,) = s.plan.runs
        attempts = attempts_of(s.ledger, run.uid)
    assert [a["outcome"] for a in attempts] == ["failed"]
    assert "cannot be decoded" in attempts[0]["reason"] and "without reporting" not in attempts[0]["reason"]
