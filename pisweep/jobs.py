"""The in-job entry point, the same for every executor: ``python -m pisweep.jobs JOB.json``.

A job file names the kind (init, train, eval), the job's uid and folder, the study (as validated JSON) and the
job's parameters, with every data path already resolved. The job reports through events only; it never opens the
ledger. Exit codes: 0 completed, 3 stopped on request (state saved), 1 failed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .jobctx import JobContext, Preempted

log = logging.getLogger("pisweep.job")
EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m pisweep.jobs JOB.json\n")
        return 2
    return run_job_file(Path(argv[0]))


def run_job_file(path: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout,
                        force=True)
    job = JobFile.read(path)
    _threads()
    ctx = JobContext(uid=job.uid, folder=Path(job.folder))
    ctx.install_signal_handlers()
    import signal
    signal.signal(signal.SIGINT, lambda s, f: ctx.request_stop("SIGINT"))
    tracked = job.kind != "eval"  # an eval job reports eval states into its run; it is not an attempt of the run
    if tracked:
        write_provenance(ctx)
        ctx.emit("attempt_started", executor=os.environ.get("PISWEEP_EXECUTOR", "local"), host=socket.gethostname(),
                 pid=os.getpid(), world_size=ctx.world_size)
    try:
        dispatch(job, ctx)
    except Preempted as stop:
        log.info("%s", stop)
        if tracked:
            ctx.emit("attempt_ended", outcome="preempted", reason=str(stop), step=ctx.step, epoch=ctx.epoch)
        return EXIT_STOPPED
    except BaseException as e:  # noqa: BLE001 - every failure is recorded with its reason, then re-raised as exit 1
        log.error("job %s failed:\n%s", job.uid, traceback.format_exc())
        if tracked:
            ctx.emit("attempt_ended", outcome="failed", reason=f"{type(e).__name__}: {e}"[:2000], step=ctx.step,
                     epoch=ctx.epoch)
        return EXIT_FAILED
    if tracked:
        ctx.emit("attempt_ended", outcome="completed", reason=None, step=ctx.step, epoch=ctx.epoch)
    return EXIT_OK


def dispatch(job: JobFile, ctx: JobContext) -> None:
    from .spec_load import study_from_json

    study = study_from_json(job.study)
    p = job.params
    device = "cuda" if _cuda() else "cpu"
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


def _threads() -> None:
    n = os.environ.get("PISWEEP_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
