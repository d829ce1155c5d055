"""Fixtures for tests that run against the real single-node SLURM dev cluster.

The cluster is brought up by ``slurm_templates/dev-cluster.sh up`` (see docs/dev-cluster.md).
When it is not usable these tests are skipped, unless ``PISWEEP_REQUIRE_SLURM=1`` (set by CI):
then they fail, so a SLURM test can never pass CI by being silently skipped.

Every test in this folder gets the ``slurm`` marker (``-m "not slurm"`` deselects them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

REQUIRE_ENV = "PISWEEP_REQUIRE_SLURM"
UP_COMMAND = "slurm_templates/dev-cluster.sh up"
HERE = Path(__file__).resolve().parent
# Bound on any single SLURM client call: a hung slurmctld must fail a test, not stall CI.
CLIENT_TIMEOUT_S = 30.0
REQUIRED_TOOLS = ("sbatch", "srun", "scontrol", "scancel", "sinfo", "sacct")
USABLE_NODE_STATES = frozenset({"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"})
# Final sacct states; PREEMPTED/REQUEUED are not final for a requeueable job.
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)

T = TypeVar("T")


SLURM_MARKER = "slurm: needs the real SLURM dev cluster (slurm_templates/dev-cluster.sh up)"


def pytest_configure(config: pytest.Config) -> None:
    # pytest may call this more than once for this conftest; register the marker once.
    if SLURM_MARKER not in config.getini("markers"):
        config.addinivalue_line("markers", SLURM_MARKER)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only ours: mark just the ones under this folder.
    # tryfirst so that `-m "not slurm"` deselection (a later hook) already sees the marker.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def run_client(args: list[str], timeout_s: float = CLIENT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a SLURM client command, never raising on a non-zero exit (callers judge it)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)


def cluster_problem() -> str | None:
    """Why the dev cluster cannot run jobs, or None when it can (controller, node and sacct)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"SLURM client tools not on PATH: {', '.join(missing)}"
    try:
        ping = run_client(["scontrol", "ping"])
        if "is UP" not in ping.stdout:
            return f"`scontrol ping` does not report UP: {(ping.stdout + ping.stderr).strip()!r}"
        sinfo = run_client(["sinfo", "-h", "-N", "-o", "%N %t"])
        states = dict(line.split(maxsplit=1) for line in sinfo.stdout.splitlines() if line.strip())
        if sinfo.returncode != 0 or not any(s in USABLE_NODE_STATES for s in states.values()):
            return f"no usable node in `sinfo -N`: {states or sinfo.stderr.strip()!r}"
        sacct = run_client(["sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID"])
        if sacct.returncode != 0 or sacct.stderr.strip():
            return f"`sacct` does not work (accounting via slurmdbd): {sacct.stderr.strip()!r}"
    except subprocess.TimeoutExpired as exc:
        return f"`{' '.join(map(str, exc.cmd))}` hung for more than {exc.timeout:.0f}s"
    return None


def _base_state(state: str) -> str:
    # sacct writes e.g. "CANCELLED by 0"; the first word is the state.
    return state.split()[0] if state.strip() else state


@dataclass
class SlurmCluster:
    """Thin, test-oriented wrapper over the SLURM clients of the dev cluster."""

    cpus: int
    submitted: list[str] = field(default_factory=list)

    def track(self, job_id: str) -> str:
        """Remember a job (e.g. one submitit submitted) so the test's teardown cancels it."""
        self.submitted.append(job_id)
        return job_id

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run any SLURM client command (bounded in time; exit status left to the caller)."""
        return run_client(list(args))

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable``; return the job id (tracked for cancellation)."""
        proc = run_client(["sbatch", "--parsable", *args])
        if proc.returncode != 0:
            pytest.fail(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}", pytrace=False)
        return self.track(proc.stdout.strip().split(";")[0])

    def scontrol(self, *args: str) -> str:
        """Run ``scontrol``; fail the test with its stderr on a non-zero exit."""
        proc = run_client(["scontrol", *args])
        if proc.returncode != 0:
            pytest.fail(f"scontrol {' '.join(args)} failed: {proc.stderr.strip()}", pytrace=False)
        return proc.stdout

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Reason, Restarts, ...); {} if unknown."""
        proc = run_client(["scontrol", "show", "job", "-o", job_id])
        fields: dict[str, str] = {}
        for token in proc.stdout.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        return fields

    def sacct_states(self, job_id: str, duplicates: bool = False) -> dict[str, list[str]]:
        """Allocation-level sacct states by JobID (array tasks appear as ``ID_N``).

        With ``duplicates`` every attempt of a requeued job is listed, oldest first.
        """
        args = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State"]
        proc = run_client(args + (["-D"] if duplicates else []))
        states: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            jid, sep, state = line.partition("|")
            if sep:
                states.setdefault(jid, []).append(_base_state(state))
        return states

    def wait_until(self, check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.5) -> T:
        """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}", pytrace=False)
            time.sleep(poll_s)

    def wait_for_state(
        self, job_id: str, states: Iterable[str], timeout_s: float = 60.0, tasks: int = 1
    ) -> dict[str, str]:
        """Wait until sacct shows ``tasks`` records of the job (array tasks), all in ``states``.

        For an array pass its size as ``tasks``: sacct may list the tasks one by one as they
        reach the database. Returns {JobID: state}. Fails early if a task ends in another
        terminal state, and on timeout; both messages carry the last sacct and scontrol view.
        """
        wanted = {s.upper() for s in states}
        deadline = time.monotonic() + timeout_s
        last: dict[str, str] = {}
        while True:
            last = {jid: attempts[-1] for jid, attempts in self.sacct_states(job_id).items()}
            pending_array = any("[" in jid for jid in last)
            if len(last) >= tasks and not pending_array and all(s in wanted for s in last.values()):
                return last
            unexpected = {j: s for j, s in last.items() if s in TERMINAL_STATES and s not in wanted}
            if unexpected or time.monotonic() >= deadline:
                why = f"ended as {unexpected}" if unexpected else f"timed out after {timeout_s:.0f}s"
                pytest.fail(
                    f"job {job_id} never reached {sorted(wanted)}: {why}; sacct: {last}; "
                    f"scontrol: {self.job_fields(job_id)}",
                    pytrace=False,
                )
            time.sleep(0.5)

    def cancel_submitted(self) -> None:
        """Cancel every job this helper submitted or tracked (no-op for finished ones)."""
        if self.submitted:
            run_client(["scancel", *self.submitted])
            self.submitted.clear()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The dev cluster, checked once per session: skip if unusable, or fail under CI's flag."""
    problem = cluster_problem()
    if problem is not None:
        message = f"SLURM dev cluster not usable: {problem}. Start it with `{UP_COMMAND}` (as root)."
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1, so this is a failure, not a skip.)", pytrace=False)
        pytest.skip(message)
    cpus = run_client(["sinfo", "-h", "-o", "%c"]).stdout.split()
    cluster = SlurmCluster(cpus=int(cpus[0]) if cpus and cpus[0].isdigit() else 1)
    yield cluster
    cluster.cancel_submitted()


@pytest.fixture(autouse=True)
def _cancel_slurm_jobs_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    # Jobs left pending/running by a failed test must not hold the node for the next test.
    yield
    if "slurm_cluster" in request.fixturenames:
        request.getfixturevalue("slurm_cluster").cancel_submitted()
