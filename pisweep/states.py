"""The one vocabulary of states: of a cell's job, of how an attempt ended, and of an eval. The ledger, the
executors, status, the live view and the docs use these names and the sets below (tests/test_architecture.py
checks that no other state name is compared anywhere in pisweep).

A job that saved its state because it was asked to stop is ``preempted`` when SLURM warned of a preemption
(SIGUSR2; near the job's time limit the same warning makes it a ``timeout``), and ``stopped`` when its own
controller asked: Ctrl-C, SIGTERM or SIGHUP to the local scheduler, a closed terminal, a controller that died.
A stop asked by ``pisweep cancel`` is ``cancelled``. ``preempted`` and ``stopped`` never count against a budget;
timeouts have their own (``executor.max_timeouts``).
"""
from __future__ import annotations

from typing import Literal, get_args

JobState = Literal["planned", "queued", "running", "completed", "preempted", "stopped", "timeout", "failed",
                   "blocked", "cancelled", "vanished"]
AttemptOutcome = Literal["completed", "preempted", "stopped", "timeout", "failed", "cancelled", "vanished"]
EvalState = Literal["queued", "running", "done", "failed", "missing_data"]

#: A cell's job: planned -> queued -> running -> completed, or one of the ends after it.
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
#: How an attempt ended (a job's state after it is its last attempt's outcome).
ATTEMPT_OUTCOMES: tuple[AttemptOutcome, ...] = get_args(AttemptOutcome)
EVAL_STATES: tuple[EvalState, ...] = get_args(EvalState)

#: A job a scheduler may still hold (local: a live process; SLURM: pending or running).
IN_FLIGHT: frozenset[JobState] = frozenset({"queued", "running"})
#: Ended on request with the state saved: nothing after the last save is lost.
SAVED_STOPS: frozenset[AttemptOutcome] = frozenset({"preempted", "stopped"})
#: Ended without saving: the work after its last checkpoint is done again by the next attempt.
UNSAVED_ENDS: frozenset[AttemptOutcome] = frozenset({"failed", "timeout", "vanished", "cancelled"})
#: What status shows in red: it needs a person (or a retry budget) to go on.
PROBLEM_STATES: frozenset[JobState] = frozenset({"failed", "blocked", "vanished"})
#: SLURM jobs the ledger still watches: in flight, or ended in a way SLURM may still requeue or never start.
SLURM_WATCHED: frozenset[JobState] = frozenset({"queued", "running", "preempted", "timeout", "failed", "blocked"})
#: Evals with nothing left to do: a result, or no data for the task.
EVAL_SETTLED: frozenset[EvalState] = frozenset({"done", "missing_data"})
