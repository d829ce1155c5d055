"""The in-job entry point, the same for every executor: ``python -m pisweep.jobs JOB.json``.

A job file names the kind (init, train, eval), the job's uid and folder, the study (as validated JSON) and the
job's parameters, with every data path already resolved. The job reports through events only; it never opens the
ledger. Exit codes: 0 completed, 3 stopped on request (state saved), 1 failed.

Under the node launcher (pisweep.launch) this is one rank: RANK, WORLD_SIZE and LOCAL_RANK come from torchrun's
environment, the device is ``cuda:LOCAL_RANK`` (or the CPU), and only rank 0 writes events. A rank reports its
exit code in the launcher's folder and exits 0 when stopped, so that the launcher's agent does not take a saved,
stopped rank for a failed one (see launch.py).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_write_json
from .errors import PisweepError
from .job.liveness import take_cancel_marker, watch_controller
from .jobctx import JobContext, Preempted, signal_label

log = logging.getLogger("pisweep.job")
EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3
ENV_LAUNCH_DIR = "PISWEEP_LAUNCH_DIR"  # set by pisweep.launch for its ranks: where they report their exit code
ENV_SLURM_TASK = "PISWEEP_SLURM_TASK"  # set by a SLURM job's launcher: the SlurmTask (JSON) its ranks act for
TEARDOWN_LIMIT_S = 120.0  # a rank whose process-group teardown hangs longer exits anyway (its events are written)
_STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class JobFile:
    kind: str  # init | train | eval
    uid: str  # the job whose folder receives the events (an eval job reports into its run)
    folder: str
    study: dict[str, Any]
    params: dict[str, Any]

    def write(self, path: Path) -> Path:
        atomic_write_json(path, self.__dict__)
        return path

    @classmethod
    def read(cls, path: Path) -> "JobFile":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class RankEnv:
    """This process's place in a distributed job, from torchrun's variables (one rank when they are absent)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> "RankEnv":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def main(argv: list[str] | None = None) -> int:
    early = _catch_stop_signals()  # first thing: a stop signal from here on is kept, never fatal
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m pisweep.jobs JOB.json\n")
        return 2
    path = Path(argv[0])
    launched = bool(os.environ.get(ENV_LAUNCH_DIR))
    if not launched:
        watch_controller()  # the top process of a local job stops when its controller dies (job/liveness.py)
        ranks = local_ranks(JobFile.read(path))
        if ranks > 1:
            from .launch import LaunchSpec, launch_job

            return launch_job(path, LaunchSpec(nproc_per_node=ranks), early=early).code
    stop_outcome, hooks = None, None
    if os.environ.get(ENV_SLURM_TASK):
        from .executors.slurm_job import rank_callbacks

        stop_outcome, hooks = rank_callbacks(Path(os.environ[ENV_SLURM_TASK]), JobFile.read(path))
    code = run_job_file(path, stop_outcome=stop_outcome, hooks=hooks, early_signals=early)
    for sig in _STOP_SIGNALS:  # the outcome is recorded: a stop signal now must not turn the exit into a kill
        signal.signal(sig, signal.SIG_IGN)
    return process_exit_code(code)


def local_stop_outcome(signal_name: str | None) -> str:
    """Outside SLURM: SIGUSR2 is a preemption; any other stop (the controller's SIGTERM, Ctrl-C, a cancel, a lost
    controller) is ``stopped``. Both saved their state; neither counts against the retry budget."""
    return "preempted" if (signal_name or "").startswith("SIGUSR2") else "stopped"


def local_ranks(job: JobFile) -> int:
    """Ranks of a train job run by the local executor: ``executor.train.gpus_per_node`` when above 1, else 1.

    (On one machine ``nodes`` is ignored; under SLURM the job's shape decides, see executors/slurm_job.py.)"""
    if job.kind != "train" or os.environ.get("PISWEEP_EXECUTOR", "local") != "local":
        return 1
    train = (job.study.get("executor") or {}).get("train") or {}
    return max(1, int(train.get("gpus_per_node") or 0))


def process_exit_code(code: int) -> int:
    """The exit status of this process for a job code: a stopped rank under the launcher exits 0."""
    if os.environ.get(ENV_LAUNCH_DIR) and code == EXIT_STOPPED:
        return EXIT_OK
    return code


def run_job_file(path: Path, stop_outcome: Callable[[], str] | None = None,
                 hooks: list[Callable[[str, dict[str, Any]], None]] | None = None,
                 early_signals: list[int] | None = None) -> int:
    """Run one job; ``stop_outcome`` tells a preemption from a time limit when the job was asked to stop."""
    env = RankEnv.from_env()
    where = f" [rank {env.rank}/{env.world_size}]" if env.world_size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s",
                        stream=sys.stdout, force=True)
    job = JobFile.read(path)
    threads = _threads()
    ctx = JobContext(uid=job.uid, folder=Path(job.folder), rank=env.rank, world_size=env.world_size,
                     on_event=list(hooks or []))
    ctx.install_signal_handlers()
    signal.signal(signal.SIGINT, lambda s, f: ctx.request_stop("SIGINT"))
    for sig in early_signals or []:
        ctx.request_stop(signal_label(sig))
    device = _device(env)
    if env.world_size > 1:
        log.info("rank %d of %d (local rank %d of %d, %d nodes) on %s, device %s, %s threads", env.rank,
                 env.world_size, env.local_rank, env.local_world_size, env.nodes, socket.gethostname(), device,
                 threads or "default")
    tracked = job.kind != "eval"  # an eval job reports eval states into its run; it is not an attempt of the run
    if tracked:
        if ctx.rank == 0:
            write_provenance(ctx)
        ctx.emit("attempt_started", executor=os.environ.get("PISWEEP_EXECUTOR", "local"), host=socket.gethostname(),
                 pid=os.getpid(), world_size=ctx.world_size, nodes=env.nodes)
    try:
        if env.world_size > 1:
            from .train.runtime import init_distributed

            init_distributed(device)
        dispatch(job, ctx, device)
    except Preempted as stop:
        log.info("%s", stop)
        if tracked:
            outcome = stop_outcome() if stop_outcome else local_stop_outcome(ctx.stop_signal)
            reason = str(stop)
            if not stop_outcome and ctx.rank == 0 and take_cancel_marker(ctx.folder):
                outcome, reason = "cancelled", f"cancelled by `pisweep cancel`: {stop}"
            ctx.emit("attempt_ended", outcome=outcome, reason=reason, step=ctx.step, epoch=ctx.epoch)
        code = EXIT_STOPPED
    except BaseException as e:  # noqa: BLE001 - every failure is recorded with its reason, then re-raised as exit 1
        log.error("job %s failed:\n%s", job.uid, traceback.format_exc())
        if tracked:
            retry = getattr(e, "retry", True) if isinstance(e, PisweepError) else True
            ctx.emit("attempt_ended", outcome="failed", reason=f"{type(e).__name__}: {e}"[:2000], step=ctx.step,
                     epoch=ctx.epoch, retry=bool(retry), stop_signal=ctx.stop_signal)
        code = EXIT_FAILED
    else:
        if tracked:
            ctx.emit("attempt_ended", outcome="completed", reason=None, step=ctx.step, epoch=ctx.epoch)
        code = EXIT_OK
    _report_code(env, code)
    if env.world_size > 1:
        _leave_process_group(code)
    return code


def dispatch(job: JobFile, ctx: JobContext, device: str | None = None) -> None:
    from .spec_load import study_from_json

    study = study_from_json(job.study)
    p = job.params
    device = device or ("cuda" if _cuda() else "cpu")
    if job.kind == "init":
        from .train.stage1 import run_stage1

        run_stage1(ctx, study, p["method"], p["seed"], Path(p["nights"]), device=device)
    elif job.kind == "train":
        from .train.stage2 import run_stage2

        run_stage2(ctx, study, init=p["init"], init_weights=Path(p["init_weights"]) if p.get("init_weights") else None,
                   shards=p["shards"], samples=p["samples"], epochs=p["epochs"], seed=p["seed"], device=device)
    elif job.kind == "eval":
        from .eval_job import run_evals

        run_evals(ctx, study, epochs=p["epochs"], tasks=p["tasks"], eval_root=p.get("eval_root"),
                  nights=p.get("nights"), cache_dir=p.get("cache_dir"), device=device)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")


def write_provenance(ctx: JobContext) -> None:
    from .provenance import collect

    att = ctx.attempt
    atomic_write_json(ctx.folder / "provenance" / f"{att['job_id']}-{att['restart']}.json", collect())


def _catch_stop_signals() -> list[int]:
    """Until the job context takes over, remember stop signals (a signal's default action would kill us)."""
    caught: list[int] = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda s, f: caught.append(s))
    return caught


def _report_code(env: RankEnv, code: int) -> None:
    folder = os.environ.get(ENV_LAUNCH_DIR)
    if folder:
        atomic_write_json(Path(folder) / f"rank-{env.rank}.json", {"rank": env.rank, "code": code, "pid": os.getpid()})


def _leave_process_group(code: int) -> None:
    """Tear the process group down; should gloo hang there, exit anyway after TEARDOWN_LIMIT_S."""
    from .train.runtime import teardown_distributed

    def stuck() -> None:
        log.error("process-group teardown hung for %.0f s; exiting", TEARDOWN_LIMIT_S)
        logging.shutdown()
        os._exit(process_exit_code(code))

    timer = threading.Timer(TEARDOWN_LIMIT_S, stuck)
    timer.daemon = True
    timer.start()
    try:
        teardown_distributed(clean=code != EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - the job's outcome is recorded; a failed goodbye must not change it
        log.warning("process-group teardown failed: %s", e)
    finally:
        timer.cancel()


def _threads() -> int | None:
    n = os.environ.get("PISWEEP_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if n:
        import torch

        torch.set_num_threads(int(n))
        return int(n)
    return None


def _device(env: RankEnv) -> str:
    if not _cuda():
        return "cpu"
    return f"cuda:{env.local_rank}" if env.world_size > 1 else "cuda"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
