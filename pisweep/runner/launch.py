"""The node launcher: one per node, it starts this node's ranks of a training job with torchrun semantics.

``python -m pisweep.runner.launch [--nnodes N --node-rank R --master-addr HOST --master-port P] --nproc-per-node G JOB.json``

torch.distributed.elastic does the work that must not be re-implemented: the c10d rendezvous (its store hosted
by node 0 at MASTER_ADDR:MASTER_PORT), rank assignment, and each rank's RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR/PORT. Each rank is ``python -m pisweep.runner JOB.json`` in its own session.

What the launcher adds is the ownership of stop signals. torchrun's agent turns SIGTERM/SIGINT into killing its
workers, and it does not handle SIGUSR2 at all (the default action kills it), so a SLURM preemption warning would
take the job down without a save. Here SIGUSR2, SIGTERM and SIGINT only set a flag; the first one is forwarded
once to every rank (as soon as the rank has installed its own handler, read from /proc), and the ranks agree at
a step boundary, save and stop. Ranks exit 0 when they stopped and report their job code in a file (runner/run.py),
because the agent takes any non-zero exit for a failure and would shoot the other ranks while rank 0 saves.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pisweep.job.contract import ENV_LAUNCH_DIR, EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from pisweep.job.signals import STOP_SIGNALS

log = logging.getLogger("pisweep.launch")
AGENT_SIGNALS = "SIGHUP,SIGQUIT"  # what torch's agent may still handle: not the stop signals, which are ours
PORT_BASE, PORT_SPAN = 10000, 20000  # rendezvous ports derived from a job id: below Linux's ephemeral range
_ENV_KEEP = (ENV_LAUNCH_DIR, "PISWEEP_THREADS", "OMP_NUM_THREADS", "TORCHELASTIC_SIGNALS_TO_HANDLE")


@dataclass(frozen=True)
class LaunchSpec:
    """Where this node's launcher stands: torchrun's nnodes, nproc_per_node, node rank and rendezvous endpoint."""

    nnodes: int = 1
    nproc_per_node: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: any free port (one node only)
    run_id: str = "pisweep"
    rdzv_timeout_s: int = 900  # how long the first node waits for the others to join
    threads_per_rank: int | None = None  # None: this node's thread budget divided among its ranks
    monitor_s: float = 0.5

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass
class LaunchResult:
    """The node's outcome as a job exit code (0 completed, 3 stopped, 1 failed), with the reason of a failure
    and the job code each of this node's ranks reported."""

    code: int
    reason: str | None = None
    codes: dict[int, int] = field(default_factory=dict)


def port_for_job(job_id: str | int) -> int:
    """A rendezvous port that every node of a SLURM job derives alike from its id (array ids: the task's id)."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[01-04]``), as ``scontrol show hostnames`` expands it."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        from pisweep.errors import ExecutorError

        raise ExecutorError(f"cannot expand the SLURM node list {nodelist!r} with scontrol: {exc}") from exc
    if not out:
        from pisweep.errors import ExecutorError

        raise ExecutorError(f"scontrol show hostnames {nodelist!r} printed no host")
    return out[0]


def slurm_spec(nproc_per_node: int, env: dict[str, str] | None = None) -> LaunchSpec:
    """This SLURM task's launcher: one task per node (executors/slurm.py), so the tasks are the nodes.

    Node rank = SLURM_PROCID, nnodes = SLURM_NTASKS, the rendezvous on the first host of SLURM_JOB_NODELIST with a
    port derived from the job id (a requeued attempt gets the same one; its run id carries the restart count).
    """
    env = dict(os.environ if env is None else env)
    job_id = env.get("SLURM_JOB_ID", "0")
    restart = env.get("SLURM_RESTART_COUNT", "0")
    cpus = env.get("SLURM_CPUS_PER_TASK")
    return LaunchSpec(nnodes=int(env.get("SLURM_NTASKS") or env.get("SLURM_NNODES") or 1),
                      nproc_per_node=nproc_per_node, node_rank=int(env.get("SLURM_PROCID", "0")),
                      master_addr=first_host(env.get("SLURM_JOB_NODELIST") or "localhost"),
                      master_port=port_for_job(job_id), run_id=f"pisweep-{job_id}-{restart}",
                      threads_per_rank=max(1, int(cpus) // nproc_per_node) if cpus else None)


def launch(job_file: Path, spec: LaunchSpec, env: dict[str, str] | None = None,
           early: list[int] | None = None) -> LaunchResult:
    """Run this node's ranks of ``job_file`` until they end; ``env`` is added to theirs. ``early``: the live list
    into which the caller's handlers put stop signals until the launcher takes over (read once its own handlers
    are in place, so none is lost; the first one is forwarded like one that comes later)."""
    forwarder = SignalForwarder()
    with forwarder.installed(early):
        return _launch(job_file, spec, env or {}, forwarder)


def _launch(job_file: Path, spec: LaunchSpec, env: dict[str, str], forwarder: "SignalForwarder") -> LaunchResult:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    folder = Path(tempfile.mkdtemp(prefix="pisweep-launch-"))
    threads = spec.threads_per_rank or max(1, _thread_budget() // spec.nproc_per_node)
    added = {ENV_LAUNCH_DIR: str(folder), "PISWEEP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
             **env}
    saved = {k: os.environ.get(k) for k in set(_ENV_KEEP) | set(added)}
    endpoint_port = spec.master_port if spec.master_port or spec.nnodes > 1 else 0
    if spec.nnodes > 1 and not spec.master_port:
        raise ValueError("a launch on several nodes needs a rendezvous port (master_port)")
    config = LaunchConfig(
        min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc_per_node, run_id=spec.run_id,
        rdzv_backend="c10d", rdzv_endpoint=f"{spec.master_addr}:{endpoint_port}",
        rdzv_configs={"is_host": spec.node_rank == 0, "timeout": spec.rdzv_timeout_s},
        max_restarts=0, monitor_interval=spec.monitor_s, start_method="spawn", signals_to_handle=AGENT_SIGNALS,
        logs_specs=DefaultLogsSpecs(log_dir=str(folder / "elastic")))
    log.info("launching %d rank(s) on node %d of %d (rendezvous %s:%s, %d threads each): %s", spec.nproc_per_node,
             spec.node_rank, spec.nnodes, spec.master_addr, endpoint_port or "any", threads, job_file)
    failure: str | None = None
    try:
        os.environ.update(added)
        try:
            elastic_launch(config, sys.executable)("-u", "-m", "pisweep.runner", str(Path(job_file).resolve()))
        except ChildFailedError as exc:
            failure = _describe_failures(exc)
        except Exception as exc:  # noqa: BLE001 - rendezvous timeouts and the like: this node failed
            failure = f"launcher: {type(exc).__name__}: {exc}"
        codes = _read_codes(folder)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
    result = _result(codes, failure, spec)
    if forwarder.received is not None:
        log.info("stop signal %s was forwarded to ranks %s", signal.Signals(forwarder.received).name,
                 sorted(forwarder.forwarded))
    log.info("node %d ends with code %d%s", spec.node_rank, result.code, f": {result.reason}" if result.reason else "")
    return result


def launch_job(job_file: Path, spec: LaunchSpec, env: dict[str, str] | None = None,
               early: list[int] | None = None) -> LaunchResult:
    """:func:`launch`, and on node 0 the end of an attempt that failed before rank 0 could record it (a rank
    killed, a rendezvous that never completed): the ledger must never show such an attempt as still running."""
    from pisweep.job.events import attempt_from_env

    added = dict(env or {})
    attempt = attempt_from_env()
    if not (os.environ.get("SLURM_JOB_ID") or os.environ.get("PISWEEP_JOB_ID")):
        added["PISWEEP_JOB_ID"] = attempt["job_id"]  # one attempt identity for the launcher and its ranks
    result = launch(job_file, spec, added, early)
    if result.code == EXIT_FAILED and spec.node_rank == 0:
        record_unreported_failure(Path(job_file), attempt, result.reason or "the launch failed")
    return result


def record_unreported_failure(job_file: Path, attempt: dict, reason: str) -> bool:
    """Write a failed ``attempt_ended`` for ``attempt`` unless one exists; True when written."""
    from pisweep.job.contract import JobFile
    from pisweep.job.events import attempt_ended, write_event

    job = JobFile.read(job_file)
    if job.kind == "eval" or attempt_ended(Path(job.folder), attempt):
        return False
    write_event(Path(job.folder), job.uid, "attempt_ended", attempt, outcome="failed",
                reason=f"{reason} (no rank recorded the end of this attempt)"[:2000])
    return True


def _result(codes: dict[int, int], failure: str | None, spec: LaunchSpec) -> LaunchResult:
    """The node's outcome. The ranks' own reports decide when all of them reported: a rank killed after it
    recorded its end (a job-wide SIGTERM while it exits, say) did its job."""
    failed = sorted(r for r, c in codes.items() if c not in (EXIT_OK, EXIT_STOPPED))
    if failure is not None and len(codes) == spec.nproc_per_node:
        log.info("ranks ended after reporting their outcome (%s); their reports stand", failure)
        failure = None
    if failure is not None or failed or len(codes) < spec.nproc_per_node:
        reason = failure or (f"rank(s) {failed} failed" if failed else
                             f"only ranks {sorted(codes)} of this node reported an end")
        return LaunchResult(EXIT_FAILED, reason, codes)
    if any(c == EXIT_STOPPED for c in codes.values()):
        return LaunchResult(EXIT_STOPPED, None, codes)
    return LaunchResult(EXIT_OK, None, codes)


def _describe_failures(exc) -> str:
    parts = []
    for rank, f in sorted(exc.failures.items()):
        how = f"killed by {f.signal_name()}" if f.exitcode < 0 else f"exit code {f.exitcode}"
        parts.append(f"rank {rank} (pid {f.pid}) {how}")
    return "; ".join(parts) or str(exc)


def _read_codes(folder: Path) -> dict[int, int]:
    import json

    codes = {}
    for path in folder.glob("rank-*.json"):
        try:
            data = json.loads(path.read_text())
            codes[int(data["rank"])] = int(data["code"])
        except (OSError, ValueError, KeyError):
            continue
    return codes


def _thread_budget() -> int:
    n = os.environ.get("PISWEEP_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    return int(n) if n else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# -- signals -------------------------------------------------------------------------------------------------------
class SignalForwarder:
    """Owns SIGUSR2/SIGTERM/SIGINT while the ranks run: the first one is kept and forwarded once to each rank.

    The handler only records, in one attribute: no lock, since a handler can run inside another one (two signals
    milliseconds apart) and would wait forever for the lock of its outer run. A thread polls that attribute and does
    the forwarding, and it waits until a rank catches the signal (SigCgt in /proc/PID/status): before that, the
    signal would kill the rank.
    Ranks are this process's children that lead their own session (the agent starts each in a new one); other
    children (an ``scontrol`` call, say) are left alone.
    """

    def __init__(self, poll_s: float = 0.05):
        self.received: int | None = None
        self.forwarded: set[int] = set()
        self.poll_s = poll_s
        self._done = threading.Event()  # set by __exit__, outside any handler

    def _on_signal(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum

    def _run(self) -> None:
        while not self._done.wait(self.poll_s):
            sig = self.received
            if sig is None:
                continue
            for pid in rank_pids():
                if pid not in self.forwarded and catches(pid, sig):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        continue
                    self.forwarded.add(pid)

    def installed(self, early: list[int] | None = None):
        """A context in which this forwarder owns the stop signals (``early``: see :func:`launch`)."""
        forwarder = self

        class _Ctx:
            def __enter__(self):
                self.previous = {s: signal.signal(s, forwarder._on_signal) for s in STOP_SIGNALS}
                if early and forwarder.received is None:
                    forwarder._on_signal(early[0], None)
                self.thread = threading.Thread(target=forwarder._run, name="pisweep-signal-forwarder", daemon=True)
                self.thread.start()
                return forwarder

            def __exit__(self, *exc):
                forwarder._done.set()
                self.thread.join(timeout=5)
                for s, h in self.previous.items():
                    signal.signal(s, h if h is not None else signal.SIG_DFL)
                return False

        return _Ctx()


def _children(pid: int) -> Iterator[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children, or a scan of /proc without it)."""
    tasks = Path(f"/proc/{pid}/task")
    found, listed = set(), False
    try:
        for task in tasks.iterdir():
            try:
                found.update(int(x) for x in (task / "children").read_text().split())
                listed = True
            except OSError:
                continue
    except OSError:
        pass
    if not listed:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat and stat[1] == pid:
                    found.add(int(entry.name))
    yield from sorted(found)


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def rank_pids(parent: int | None = None) -> list[int]:
    """The ranks the agent started under ``parent`` (default: this process): children that lead a session."""
    parent = os.getpid() if parent is None else parent
    out = []
    for pid in _children(parent):
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[3] == pid:
            out.append(pid)
    return out


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (its SigCgt mask in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except OSError:
        return False
    return False


# -- command line --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pisweep.runner.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("job_file", type=Path)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=0)
    parser.add_argument("--run-id", default="pisweep")
    parser.add_argument("--slurm", action="store_true", help="take nnodes, node rank and the rendezvous from "
                                                            "SLURM's environment (one task per node)")
    args = parser.parse_args(argv)
    early: list[int] = []
    for sig in STOP_SIGNALS:  # until launch() takes over
        signal.signal(sig, lambda s, f: early.append(s))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    if args.slurm:
        spec = slurm_spec(args.nproc_per_node)
    else:
        spec = LaunchSpec(nnodes=args.nnodes, nproc_per_node=args.nproc_per_node, node_rank=args.node_rank,
                          master_addr=args.master_addr, master_port=args.master_port, run_id=args.run_id)
    return launch_job(args.job_file, spec, early=early).code


if __name__ == "__main__":
    sys.exit(main())
