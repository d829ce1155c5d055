"""What to run next, given the plan and the ledger's snapshot. Pure: the executors act on its answer.

A stage-1 init runs when it is not completed (a control that hands on its seed's perceptual epoch, once that
init is completed); a stage-2 run when its init is completed (or it needs none); an init that failed past the
retry budget blocks its runs (and the controls that wait for it), with the reason. A post-hoc fine-tune runs
when its source run has the weights of its source epoch (or is completed), and is blocked when that run failed for
good. An eval is due for every evaluated epoch whose weights file exists and whose task has no result yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pisweep.states import EVAL_SETTLED
from pisweep.study.plan import InitJob, Plan, RunJob

if TYPE_CHECKING:
    from pisweep.ledger.queries import Snapshot



@dataclass
class Work:
    inits: list[InitJob] = field(default_factory=list)
    inits_waiting: list[InitJob] = field(default_factory=list)  # for the init they take their hand-off from
    runs: list[RunJob] = field(default_factory=list)  # ready now
    waiting: list[RunJob] = field(default_factory=list)  # their init (posthoc: their source epoch) is not done yet
    blocked: dict[str, str] = field(default_factory=dict)  # run or init uid -> reason
    failed: dict[str, str] = field(default_factory=dict)  # job uid -> reason (retry budget spent)
    evals: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # run uid -> [(epoch, task)]

    def empty(self) -> bool:
        return not (self.inits or self.inits_waiting or self.runs or self.waiting or self.evals)


def next_work(plan: Plan, snap: Snapshot, max_failures: int, retry_failed_evals: bool = False) -> Work:
    work = Work()
    init_state: dict[str, str] = {}
    for init in plan.inits:
        row = snap.jobs.get(init.uid)
        state = row.state if row else "planned"
        if state == "completed":
            init_state[init.uid] = "ok"
        elif row is not None and row.failed_for_good(max_failures):
            init_state[init.uid] = "failed"
            work.failed[init.uid] = row.reason or "failed"
        else:
            init_state[init.uid] = "todo"
    by_uid = {i.uid: i for i in plan.inits}
    for init in plan.inits:
        if init_state[init.uid] != "todo":
            continue
        if init.after is None or init_state.get(init.after) == "ok":
            work.inits.append(init)
        elif init_state.get(init.after) == "failed":
            init_state[init.uid] = "failed"
            work.blocked[init.uid] = (f"it hands on the epoch of {by_uid[init.after].label}, which failed: "
                                      f"{work.failed.get(init.after, 'failed')}")
        else:
            work.inits_waiting.append(init)
    for run in plan.runs:
        row = snap.jobs.get(run.uid)
        state = row.state if row else "planned"
        if state != "completed":
            if row is not None and row.failed_for_good(max_failures):
                work.failed[run.uid] = row.reason or "failed"
            elif run.source is not None:
                _posthoc(work, run, snap)
            elif run.init_uid is None or init_state.get(run.init_uid) == "ok":
                work.runs.append(run)
            elif init_state.get(run.init_uid) == "failed":
                init_row = snap.jobs.get(run.init_uid)
                work.blocked[run.uid] = (f"init {init_row.label if init_row else run.init_uid} failed: "
                                         f"{work.failed.get(run.init_uid) or work.blocked.get(run.init_uid, 'failed')}")
            else:
                work.waiting.append(run)
        have = snap.weights.get(run.uid, set())
        due = []
        for epoch in run.eval_epochs:
            if epoch not in have:
                continue
            for task in plan.tasks:
                state = snap.evals.get((run.uid, epoch, task))
                if state in EVAL_SETTLED or (state == "failed" and not retry_failed_evals):
                    continue
                due.append((epoch, task))
        if due:
            work.evals[run.uid] = due
    return work


def _posthoc(work: Work, run: RunJob, snap: Snapshot) -> None:
    """A post-hoc cell (its source run comes before it in the plan, so the source's fate is known)."""
    src = snap.jobs.get(run.source)
    if src is not None and src.state == "completed" or run.source_epoch in snap.weights.get(run.source, set()):
        work.runs.append(run)
    elif run.source in work.failed or run.source in work.blocked:
        why = work.failed.get(run.source) or work.blocked.get(run.source)
        work.blocked[run.uid] = f"its source run {src.label if src else run.source} failed: {why}"
    else:
        work.waiting.append(run)
