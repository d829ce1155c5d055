"""The one place that decides what this process is, for every executor: ``python -m pisweep.runner JOB.json``.

- the top process of a local job with several ranks becomes the node launcher (runner/launch.py);
- a rank started by a SLURM job's launcher acts for that job's SlurmTask (stop outcome, eval submissions);
- anything else runs the job as one rank (runner/run.py).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pisweep.job.contract import ENV_LAUNCH_DIR, ENV_SLURM_TASK, JobFile
from pisweep.job.liveness import watch_controller
from pisweep.job.signals import STOP_SIGNALS, catch_stop_signals
from pisweep.runner.run import process_exit_code, run_job_file
from pisweep.study.spec import Resources, train_ranks


def main(argv: list[str] | None = None) -> int:
    early = catch_stop_signals()  # first thing: a stop signal from here on is kept, never fatal
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m pisweep.runner JOB.json\n")
        return 2
    path = Path(argv[0])
    launched = bool(os.environ.get(ENV_LAUNCH_DIR))
    if not launched:
        watch_controller()  # the top process of a local job stops when its controller dies (job/liveness.py)
        ranks = local_ranks(JobFile.read(path))
        if ranks > 1:
            from pisweep.runner.launch import LaunchSpec, launch_job

            return launch_job(path, LaunchSpec(nproc_per_node=ranks), early=early).code
    stop_outcome, hooks = None, None
    if os.environ.get(ENV_SLURM_TASK):
        from pisweep.runner.slurm import rank_callbacks

        stop_outcome, hooks = rank_callbacks(Path(os.environ[ENV_SLURM_TASK]), JobFile.read(path))
    code = run_job_file(path, stop_outcome=stop_outcome, hooks=hooks, early_signals=early)
    for sig in STOP_SIGNALS:  # the outcome is recorded: a stop signal now must not turn the exit into a kill
        signal.signal(sig, signal.SIG_IGN)
    return process_exit_code(code)


def local_ranks(job: JobFile) -> int:
    """Ranks of a train job run by the local executor: ``executor.train.gpus_per_node`` when above 1, else 1.

    (On one machine ``nodes`` is ignored; under SLURM the job's shape decides, see runner/slurm.py.)"""
    if job.kind != "train" or os.environ.get("PISWEEP_EXECUTOR", "local") != "local":
        return 1
    return train_ranks("local", Resources(**((job.study.get("executor") or {}).get("train") or {})))
