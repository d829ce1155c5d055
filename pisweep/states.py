"""The one vocabulary of states: of a cell's job, of how an attempt ended, and of an eval. The ledger, the
executors, status, the live view and the docs use these names and the sets below (tests/test_architecture.py
checks that no other state name is compared anywhere in pisweep).

A job stopped on request with its state saved is ``preempted`` when SLURM warned of a preemption or time limit
(SIGUSR2; a SLURM job near its limit is a ``timeout``) and ``stopped`` when its controller asked (Ctrl-C, SIGTERM
to the scheduler, a closed terminal, a lost controller, the local ``SIGTERM`` of ``pisweep cancel`` records
``cancelled``). Neither counts against the retry budget.
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
#: Evals waiting for or inside an eval job.
EVAL_OPEN: frozenset[EvalState] = frozenset({"queued", "running"})
