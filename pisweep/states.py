"""The vocabulary of states: of a cell's job (and of an attempt's outcome), and of an eval."""
from __future__ import annotations

#: A cell's job: planned -> queued -> running -> completed, or one of the ends after it.
JOB_STATES = ("planned", "queued", "running", "completed", "preempted", "stopped", "timeout", "failed", "blocked",
              "cancelled", "vanished")
#: How an attempt ended (a job's state after it is its last attempt's outcome).
ATTEMPT_OUTCOMES = ("completed", "preempted", "stopped", "timeout", "failed", "cancelled", "vanished")
EVAL_STATES = ("queued", "running", "done", "failed", "missing_data")
