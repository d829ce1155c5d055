"""Run one job file as one rank: the same for every executor (runner/entry.py decides that this process is one).

A job file (job/contract.py) names the kind (init, train, posthoc, eval), the job's uid and folder, the study (as validated
JSON) and the job's parameters, with every data path already resolved. The job reports through events only; it
never opens the ledger. Exit codes: 0 completed, 3 stopped on request (state saved), 1 failed.

Under the node launcher (runner/launch.py) this is one rank: RANK, WORLD_SIZE and LOCAL_RANK come from torchrun's
environment, the device is ``cuda:LOCAL_RANK`` (or the CPU), and only rank 0 writes events. A rank reports its
exit code in the launcher's folder and exits 0 when stopped, so that the launcher's agent does not take a saved,
stopped rank for a failed one.
"""
from __future__ import annotations

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

from pisweep.atomic import atomic_write_json
from pisweep.errors import PisweepError
from pisweep.job.context import JobContext, Preempted, signal_label
from pisweep.job.contract import ENV_LAUNCH_DIR, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, JobFile
from pisweep.job.liveness import take_cancel_marker
from pisweep.job.paths import JobPaths

log = logging.getLogger("pisweep.job")
TEARDOWN_LIMIT_S = 120.0  # a rank whose process-group teardown hangs longer exits anyway (its events are written)


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


def local_stop_outcome(signal_name: str | None) -> str:
    """Outside SLURM: SIGUSR2 is a preemption; any other stop (the controller's SIGTERM, Ctrl-C, a cancel, a lost
    controller) is ``stopped``. Both saved their state; neither counts against the retry budget."""
    return "preempted" if (signal_name or "").startswith("SIGUSR2") else "stopped"


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
            from pisweep.train.runtime import init_distributed

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
    from pisweep.study.load import study_from_json

    study = study_from_json(job.study)
    p = job.params
    device = device or ("cuda" if _cuda() else "cpu")
    if job.kind == "init" and p["method"] == "norm_matched":  # no training: rescaled from its perceptual init
        from pisweep.train.norm_matched import run_norm_matched

        run_norm_matched(ctx, study, p["seed"], Path(p["handoff_from"]))
    elif job.kind == "init":
        from pisweep.train.stage1 import run_stage1

        run_stage1(ctx, study, p["method"], p["seed"], Path(p["nights"]), device=device,
                   handoff_from=Path(p["handoff_from"]) if p.get("handoff_from") else None,
                   fraction=float(p.get("fraction", 1.0)))
    elif job.kind == "train":
        from pisweep.train.stage2 import run_stage2

        run_stage2(ctx, study, init=p["init"], init_weights=Path(p["init_weights"]) if p.get("init_weights") else None,
                   shards=p["shards"], samples=p["samples"], epochs=p["epochs"], seed=p["seed"],
                   eval_epochs=p["eval_epochs"], device=device, start_weights=bool(p.get("start_weights")),
                   keep_epochs=p.get("keep_epochs", []))
    elif job.kind == "posthoc":
        from pisweep.train.posthoc import run_posthoc

        run_posthoc(ctx, study, Path(p["source_weights"]), p["source_epoch"], p["seed"], Path(p["nights"]),
                    device=device)
    elif job.kind == "eval":
        from pisweep.runner.evals import run_evals

        run_evals(ctx, study, epochs=p["epochs"], tasks=p["tasks"], eval_root=p.get("eval_root"),
                  nights=p.get("nights"), cache_dir=p.get("cache_dir"), device=device)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")


def write_provenance(ctx: JobContext) -> None:
    from pisweep.runner.provenance import collect

    att = ctx.attempt
    atomic_write_json(JobPaths(ctx.folder).provenance(att["job_id"], att["restart"]), collect())


def _report_code(env: RankEnv, code: int) -> None:
    folder = os.environ.get(ENV_LAUNCH_DIR)
    if folder:
        atomic_write_json(Path(folder) / f"rank-{env.rank}.json", {"rank": env.rank, "code": code, "pid": os.getpid()})


def _leave_process_group(code: int) -> None:
    """Tear the process group down; should gloo hang there, exit anyway after TEARDOWN_LIMIT_S."""
    from pisweep.train.runtime import teardown_distributed

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

