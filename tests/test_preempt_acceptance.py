"""Acceptance test of preemption (issue 3): real signals, real launcher, 2 gloo ranks, a loader worker per rank.

A stage-2 run (CPU fp32, tiny model, real shards on disk, gradients accumulated over 2 micro-batches) is stopped
three times, at steps drawn from a fixed seed, by signals sent to the launcher's process group (once also to every process of the job, workers included,
as SLURM does); each attempt saves and ends as preempted, the next one resumes. The final weights must be
bitwise identical to those of an uninterrupted run with the same seed, world size and threads, and the ledger
must show the four attempts with the step each reached.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pisweep.commands import session as app
from pisweep.commands.studyref import resolve
from pisweep.job.contract import JobFile
from pisweep.ledger.queries import attempts_of
from pisweep.models import TINY_CONFIG
from pisweep.runner.launch import rank_pids

from helpers import Pace, make_shards, pause_env

pytestmark = pytest.mark.slow  # trains, or starts processes

SHARDS, BATCH, EPOCHS = [32, 32, 32], 8, 2
STEPS = sum(SHARDS) // BATCH * EPOCHS  # 24: 12 per epoch
SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR2)
PACE = Pace()  # waits scale with how long this machine took to reach the first pause


def stop_steps(seed: int = 20261129) -> list[int]:
    steps = sorted(random.Random(seed).sample(range(1, STEPS), 3))
    assert any(s % (STEPS // EPOCHS) for s in steps), "the draw must hold a mid-epoch stop"
    return steps


def write_study(tmp: Path, pattern: str) -> Path:
    spec = {
        "name": "acceptance", "output_root": str(tmp / "out"),
        "executor": {"name": "local", "train": {"gpus_per_node": 2}},
        "data": {"train": {"s": {"shards": pattern, "samples": sum(SHARDS)}}},
        "model": {"name": "pisweep-tiny", "config": TINY_CONFIG},
        # 2 micro-batches per optimizer step (the ranks' gradients reduced once per step, after the second)
        "stage2": {"global_batch_size": BATCH, "accumulation_steps": 2, "workers": 1, "precision": "fp32",
                   "log_every_steps": 5, "optim": {"lr": 1e-3, "warmup_steps": 3}},
        "eval": {"tasks": ["imagenet1k"]},
        "grid": {"init": ["random"], "scale": ["s"], "epochs": [EPOCHS], "seed": [0]},
        "wandb": {"mode": "disabled"},
    }
    path = tmp / "acceptance.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def descendants(pid: int) -> list[int]:
    from pisweep.runner.launch import _children

    out, todo = [], [pid]
    while todo:
        kids = list(_children(todo.pop()))
        out += kids
        todo += kids
    return out


def start(job: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pisweep.runner.launch", "--nproc-per-node", "2", str(job)],
                            env={**os.environ, "PISWEEP_THREADS": "1", "WANDB_MODE": "disabled", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=PACE.bound())
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *descendants(proc.pid)]:  # every stack, to the output (tests/hooks/sitecustomize.py)
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not end within {PACE.bound():.0f}s:\n{out[-20000:]}")
    return proc.returncode, out


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + PACE.bound()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            code, out = finish(proc)
            pytest.fail(f"no {path.name} (launcher exit {code}):\n{out[-4000:]}")
        time.sleep(0.05)


def weights(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)["state_dict"]


@pytest.mark.timeout(600)
def test_three_real_preemptions_under_the_launcher_end_bitwise_identical(tmp_path):
    pattern = make_shards(tmp_path / "shards", SHARDS)
    ref = resolve(str(write_study(tmp_path, pattern)))
    s = app.open_session(ref)
    try:
        app.record(s)
        run = s.plan.runs[0]
        params = {"init": "random", "init_weights": None, "shards": pattern, "samples": sum(SHARDS),
                  "epochs": EPOCHS, "seed": 0, "eval_epochs": list(run.eval_epochs)}
        folder = s.layout.run_dir(run.uid)
        job = JobFile("train", run.uid, str(folder), ref.study_json, params).write(tmp_path / "job.json")
        steps = stop_steps()

        for attempt, (step, sig) in enumerate(zip(steps, SIGNALS)):
            PACE.start()
            proc = start(job, {"PISWEEP_JOB_ID": f"acc-{attempt}", **pause_env(step)})
            wait_for(folder / f"paused-{step}", proc)
            PACE.measured()
            if sig == signal.SIGTERM:  # as SLURM does: every process of the job, loader workers included
                workers = [p for p in descendants(proc.pid) if p not in rank_pids(proc.pid)]
                assert len(workers) >= 2, "each rank has a loader worker"
                for pid in [proc.pid, *descendants(proc.pid)]:
                    os.kill(pid, sig)
            else:
                os.killpg(proc.pid, sig)
            code, out = finish(proc)
            assert code == 3, out[-4000:]
            assert f"stop signal {sig.name} was forwarded to ranks" in out
        code, out = finish(start(job, {"PISWEEP_JOB_ID": "acc-3"}))
        assert code == 0, out[-4000:]

        ref_job = JobFile("train", run.uid, str(tmp_path / "reference"), ref.study_json, params)
        code, out = finish(start(ref_job.write(tmp_path / "ref.json"), {"PISWEEP_JOB_ID": "ref"}))
        assert code == 0, out[-4000:]
        for epoch in range(1, EPOCHS + 1):
            a, b = weights(tmp_path / "reference", epoch), weights(folder, epoch)
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (epoch, k)

        app.reconcile(s)
        attempts = attempts_of(s.ledger, run.uid)
        # outside SLURM, SIGUSR2 is a preemption and SIGTERM/SIGINT a stop; each saved its state
        assert [(a["job_id"], a["restart"], a["outcome"], a["step"]) for a in attempts] == [
            (f"acc-{i}", 0, "preempted" if sig == signal.SIGUSR2 else "stopped", step)
            for i, (step, sig) in enumerate(zip(steps, SIGNALS))] + [("acc-3", 0, "completed", STEPS)]
        assert [a["world_size"] for a in attempts] == [2] * 4
        for a, sig in zip(attempts, SIGNALS):
            assert sig.name in a["reason"]
    finally:
        s.close()
