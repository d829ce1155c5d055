"""The slurm executor: submits a study's jobs through submitit and reconciles the ledger with SLURM.

- inits and runs go out as jobs whose shapes come from the study and the site profile; a perceptual run waits for
  its init (``afterok``); cells that share a job shape and have no dependency go out as one job array;
- every job runs the snapshot of pisweep's code taken at submit (PYTHONPATH), and :class:`SlurmTask` inside it;
- ``status`` asks SLURM once (one sacct + one squeue) about every job the ledger thinks is queued or running, and
  marks jobs that vanished, timed out or can never start (a failed dependency: the cell is blocked, with reason).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pisweep.errors import ExecutorError
from pisweep.executors import sacct
from pisweep.executors.base import cell_job_file, eval_job_file, init_job_file
from pisweep.executors.profile import SiteProfile
from pisweep.executors.snapshot import take_snapshot
from pisweep.job.contract import JobFile, job_file_path
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, set_eval_states, set_job_state
from pisweep.ledger.queries import Snapshot, queued_evals, snapshot
from pisweep.runner.slurm import SlurmTask, make_executor
from pisweep.states import IN_FLIGHT, SLURM_WATCHED
from pisweep.study.datapaths import DataPaths
from pisweep.study.layout import Layout
from pisweep.study.plan import Plan
from pisweep.study.spec import Study
from pisweep.study.work import Work


@dataclass
class Submitted:
    jobs: dict[str, str] = field(default_factory=dict)  # pisweep uid -> slurm job id
    evals: int = 0
    skipped: list[str] = field(default_factory=list)


def executor_params(study: Study, profile: SiteProfile, kind: str, name: str, snapshot: Path) -> dict[str, Any]:
    """submitit parameters of one job kind: shape, site options, signal, requeue, code snapshot."""
    base = {"init": study.executor.init, "train": study.executor.train, "eval": study.executor.eval,
            "posthoc": study.executor.posthoc}[kind]
    shape, options = profile.resources(kind, base)
    ranks_per_node = max(1, shape.gpus_per_node)
    params: dict[str, Any] = {
        "job_name": name, "time": shape.time_min, "nodes": shape.nodes, "ntasks_per_node": 1,
        "cpus_per_task": shape.cpus_per_task * ranks_per_node, "mem": f"{int(shape.mem_gb * 1024)}M",
        "signal_delay_s": profile.signal_delay_s, "stderr_to_stdout": True,
        "setup": [f"export PYTHONPATH={shlex.quote(str(snapshot))}${{PYTHONPATH:+:$PYTHONPATH}}",
                  "export PISWEEP_EXECUTOR=slurm", *profile.setup],
        "additional_parameters": {"requeue": True, "open-mode": "append", **profile.extra},
    }
    if shape.gpus_per_node:
        params["gpus_per_node"] = shape.gpus_per_node
    for key in ("partition", "qos", "account", "constraint"):
        if key in options:
            params[key] = options[key]
    return params


def job_name(study: str, kind: str, label: str) -> str:
    return f"pisweep.{study}.{kind}.{label}"


class SlurmExecutor:
    name = "slurm"

    def __init__(self, ledger: Ledger, study: Study, study_json: dict[str, Any], plan: Plan, paths: DataPaths,
                 layout: Layout, suite_version: str, profile: SiteProfile):
        self.ledger, self.study, self.study_json, self.plan = ledger, study, study_json, plan
        self.paths, self.layout, self.suite_version, self.profile = paths, layout, suite_version, profile
        self.max_timeouts = profile.max_requeue_timeouts if profile.max_requeue_timeouts is not None \
            else study.executor.max_timeouts

    # -- submission -------------------------------------------------------------------------------------------------
    def submit(self, work: Work, snap: Snapshot) -> Submitted:
        """Submit what ``work`` says is runnable, skipping jobs SLURM is already running or holding."""
        out = Submitted()
        snapshot = take_snapshot(self.layout.root / "code")
        active = {uid for uid, row in snap.jobs.items() if row.state in IN_FLIGHT and row.scheduler_id}
        init_ids = {uid: row.scheduler_id for uid, row in snap.jobs.items() if row.kind == "init"}
        inits = [i for i in work.inits if i.uid not in active]
        self._submit_group("init", [(i.uid, i.label, init_job_file(i, self.study_json, self.paths, self.layout), None)
                                    for i in inits], None, snapshot, out)
        for i in inits:
            init_ids[i.uid] = out.jobs.get(i.uid, init_ids.get(i.uid))
        for i in work.inits_waiting:  # a control waits for the init whose hand-off epoch it takes
            if i.uid in active:
                continue
            self._submit_group("init", [(i.uid, i.label, init_job_file(i, self.study_json, self.paths, self.layout),
                                         None)], init_ids.get(i.after), snapshot, out)
            init_ids[i.uid] = out.jobs.get(i.uid, init_ids.get(i.uid))
        no_dep: dict[str, list] = {"train": [], "posthoc": []}
        with_dep = []
        for run in list(work.runs) + list(work.waiting):
            if run.uid in active:
                out.skipped.append(run.label)
                continue
            jf = cell_job_file(run, self.study_json, self.paths, self.layout)
            evals = self._eval_submit(run, snapshot)
            dep = run.depends_on  # its init, or (posthoc) its source run
            dep_row = snap.jobs.get(dep) if dep else None
            row = snap.jobs.get(run.uid)
            if dep is not None and (dep in out.jobs or (dep_row is not None and dep_row.state != "completed")):
                with_dep.append(((run.uid, run.label, jf, evals), dep))
            elif row is not None and row.scheduler_id:  # a resubmitted cell goes as its own job
                self._submit_group(run.kind, [(run.uid, run.label, jf, evals)], None, snapshot, out)
            else:
                no_dep[run.kind].append((run.uid, run.label, jf, evals))
        for kind, items in no_dep.items():
            self._submit_group(kind, items, None, snapshot, out)
        for item, dep in with_dep:  # each waits for its own init or source run: one job each (in plan order, so a
            # source submitted in this call is known by then)
            dep_id = out.jobs.get(dep) or init_ids.get(dep) or (snap.jobs[dep].scheduler_id if dep in snap.jobs
                                                                 else None)
            self._submit_group(item[2].kind, [item], dep_id, snapshot, out)
        out.evals += self.heal_evals()  # due evals without a live eval job (the train jobs submit the rest)
        return out

    def _submit_group(self, kind: str, jobs: list[tuple[str, str, JobFile, dict | None]], dependency: str | None,
                      snapshot: Path, out: Submitted) -> None:
        """One sbatch for the group: a single job, or an array of cells that share shape and dependency."""
        if not jobs:
            return
        tasks = []
        for uid, label, jf, evals in jobs:
            path = jf.write(job_file_path(jf.folder, kind, f"slurm-{time.time_ns()}"))
            tasks.append(SlurmTask(str(path), self.study.executor.max_failures, self.max_timeouts,
                                   self.profile.signal_delay_s, evals))
        label = jobs[0][1] if len(jobs) == 1 else f"{len(jobs)}-cells"
        params = executor_params(self.study, self.profile, kind, job_name(self.study.name, kind, label), snapshot)
        if dependency:
            params["dependency"] = f"afterok:{dependency}"
        folder = self.layout.root / "slurm" / kind
        ex = make_executor(folder, params)
        try:
            if len(tasks) == 1:
                submitted = [ex.submit(tasks[0])]
            else:
                with ex.batch():
                    submitted = [ex.submit(t) for t in tasks]
        except Exception as e:  # noqa: BLE001 - submitit raises several types; one clear error names the jobs
            raise ExecutorError(f"sbatch refused {kind} job(s) {[j[1] for j in jobs]}: {e}") from None
        for (uid, label, jf, _), job in zip(jobs, submitted):
            log = Path(str(job.paths.stdout)).resolve()
            set_job_state(self.ledger, uid, "queued", None, executor="slurm", scheduler_id=str(job.job_id),
                          log_path=str(log))
            out.jobs[uid] = str(job.job_id)

    def _eval_submit(self, run, snapshot: Path) -> dict[str, Any]:
        """What a train job needs to submit the eval job of each epoch checkpoint itself."""
        return {"epochs": list(run.eval_epochs), "tasks": list(self.plan.tasks), "study_json": self.study_json,
                "eval_root": self.paths.eval_root, "nights": self.paths.nights,
                "cache_dir": self.study.eval.cache_dir or str(self.layout.eval_cache),
                "params": executor_params(self.study, self.profile, "eval",
                                          job_name(self.study.name, "eval", run.label), snapshot),
                "folder": str(self.layout.root / "slurm" / "eval"), "signal_delay_s": self.profile.signal_delay_s}

    def _submit_eval(self, run_uid: str, epoch: int, tasks: list[str], snapshot: Path) -> str:
        jf = eval_job_file(run_uid, [(epoch, t) for t in tasks], self.study_json, self.paths, self.layout,
                           self.study.eval.cache_dir)
        path = jf.write(job_file_path(jf.folder, "eval", f"slurm-e{epoch}-{time.time_ns()}"))
        run = self.plan.run_by_uid()[run_uid]
        params = executor_params(self.study, self.profile, "eval", job_name(self.study.name, "eval", run.label),
                                 snapshot)
        job = make_executor(self.layout.root / "slurm" / "eval", params).submit(
            SlurmTask(str(path), 0, 0, self.profile.signal_delay_s))
        return str(job.job_id)

    # -- reconciliation ---------------------------------------------------------------------------------------------
    def reconcile(self) -> dict[str, str]:
        """Ask SLURM once about every job it may still hold (eval jobs included); record what the jobs could not
        say themselves."""
        watched = self._watched()
        if not watched:
            return {}
        acct, queue = sacct.query([row.scheduler_id for row in watched.values()])
        # Events a job wrote just before it ended must count before its end is judged "unreported".
        ingest(self.ledger, self.plan.study)
        snap = snapshot(self.ledger, self.plan.study, self.suite_version)
        watched = {uid: snap.jobs[uid] for uid in watched}
        after = {i.uid: i.after for i in self.plan.inits if i.after}
        changes: dict[str, str] = {}
        for uid, row in watched.items():
            sid = row.scheduler_id
            info, q = acct.get(sid), queue.get(sid)
            if row.state == "blocked":
                if q is not None:  # blocked from the ledger (its init failed) before SLURM noticed
                    cancel([sid])
                continue
            if q is not None and "DependencyNeverSatisfied" in q[1]:
                dep = row.init_uid or after.get(uid)  # a run's init, or the init a control init waits for
                init = snap.jobs.get(dep) if dep else None
                what = "source run" if row.kind == "posthoc" else "init" if row.init_uid else "perceptual init"
                reason = f"its {what} {init.label if init else dep} failed" + \
                    (f": {init.reason}" if init and init.reason else "")
                cancel([sid])  # SLURM would keep it pending forever
                changes[uid] = "blocked"
                set_job_state(self.ledger, uid, "blocked", reason)
            elif q is not None:
                # pending again after its attempt ended: the job requeued itself (a job that just ended shows
                # RUNNING/COMPLETING for a moment, which is not a requeue)
                if row.state not in IN_FLIGHT and q[0] in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
                    changes[uid] = "queued"
                    set_job_state(self.ledger, uid, "queued", f"requeued after {row.state}: {row.reason or ''}".strip())
            elif row.state in ("preempted", "timeout") and info is not None and info.slurm_state == "CANCELLED":
                # it saved its state and would have requeued, but someone cancelled it outside pisweep
                changes[uid] = "vanished"
                set_job_state(self.ledger, uid, "vanished", f"slurm job {sid} was cancelled outside pisweep after "
                                                            f"it saved its state ({row.state})")
            elif row.state not in IN_FLIGHT:
                continue  # ended, reported by the job itself, and not requeued
            elif info is None:
                changes[uid] = "vanished"
                set_job_state(self.ledger, uid, "vanished", f"slurm job {sid} is in neither squeue nor sacct")
            elif info.state not in IN_FLIGHT:
                # it ended without reporting: killed, node failure, scancel outside pisweep, hard time limit
                state = {"completed": "failed", "cancelled": "vanished"}.get(info.state, info.state)
                changes[uid] = state
                set_job_state(self.ledger, uid, state, f"slurm says {info.slurm_state} (exit {info.exit_code}) on "
                                                       f"{info.nodes or '?'} and the job did not report an end")
        return changes

    def heal_evals(self) -> int:
        """Submit an eval job for every (run, epoch) whose queued evals have no live SLURM job: a training job that
        died before submitting, an eval job that vanished, or evals reconcile found missing (submit and resume
        call this; status never submits)."""
        queued = queued_evals(self.ledger, self.plan.study, self.suite_version)
        ids = sorted({jid for jid in queued.values() if jid})
        alive = set(sacct.query(ids)[1]) if ids else set()
        due: dict[tuple[str, int], list[str]] = {}
        for (run_uid, epoch, task), jid in queued.items():
            if jid is None or jid not in alive:
                due.setdefault((run_uid, epoch), []).append(task)
        runs = self.plan.run_by_uid()
        due = {key: tasks for key, tasks in due.items() if key[0] in runs}
        if not due:
            return 0
        snapshot_dir = take_snapshot(self.layout.root / "code")
        for (run_uid, epoch), tasks in sorted(due.items()):
            job_id = self._submit_eval(run_uid, epoch, sorted(tasks), snapshot_dir)
            set_eval_states(self.ledger, [(run_uid, epoch, t) for t in tasks], "queued", self.suite_version,
                            only_new=False, reason=f"slurm job {job_id}", scheduler_id=job_id)
        return len(due)

    def _watched(self) -> dict:
        snap = snapshot(self.ledger, self.plan.study, self.suite_version)
        return {uid: row for uid, row in snap.jobs.items()
                if row.state in SLURM_WATCHED and row.executor == "slurm" and row.scheduler_id}

    def cancel_jobs(self, snap: Snapshot, uids: list[str]) -> list[str]:
        """scancel the SLURM jobs of ``uids`` that may still run; mark them cancelled."""
        ids = []
        for uid in uids:
            row = snap.jobs.get(uid)
            if row and row.executor == "slurm" and row.scheduler_id and row.state in SLURM_WATCHED - {"blocked"}:
                ids.append(row.scheduler_id)
                set_job_state(self.ledger, uid, "cancelled", "cancelled with pisweep cancel")
        cancel(sorted(set(ids)))
        return ids




def cancel(job_ids: list[str]) -> None:
    import subprocess

    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, timeout=60, capture_output=True)
