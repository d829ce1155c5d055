"""The one place that names the files of a job folder (an init's or a run's). Everything that writes or reads a
job folder asks a :class:`JobPaths`; docs/architecture.md draws the tree.

```
<job folder>/
  jobs/<kind>-<tag>.json       the job files the executors wrote (job/contract.py); slurm-task-<tag>.json
  logs/<kind>-<job id>.log     what a local job printed (SLURM logs are submitit's, under <output_root>/slurm/)
  events/<ns>-<pid>-<kind>.json  the job's reports (job/events.py); audit.log: one line per audited event
  provenance/<job id>-<restart>.json
  live/job.lock  live/eval.lock  live/cancel     (job/liveness.py)
  resume/state.pt  resume/state.step.json
  init.pt                      an init's hand-off: the vision tower stage 2 starts from
  data/manifest.json           a run's training data: shards, sizes, digest
  checkpoints/epoch_<N>.pt (+ <model>.json for inline model configs)
  evals/epoch_<N>/<task>.json + <task>.npz       CLIP_benchmark's output format + per-example arrays
```
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVENTS = "events"
LIVE = "live"
AUDIT = "audit.log"


@dataclass(frozen=True)
class JobPaths:
    folder: Path

    def __init__(self, folder: str | Path):
        object.__setattr__(self, "folder", Path(folder))

    # -- what the executors and the runner write ------------------------------------------------------------------
    def job_file(self, kind: str, tag: str) -> Path:
        return self.folder / "jobs" / f"{kind}-{tag}.json"

    def slurm_task_file(self, tag: str) -> Path:
        return self.folder / "jobs" / f"slurm-task-{tag}.json"

    def log(self, kind: str, job_id: str) -> Path:
        return self.folder / "logs" / f"{kind}-{job_id}.log"

    @property
    def events(self) -> Path:
        return self.folder / EVENTS

    @property
    def audit(self) -> Path:
        return self.folder / AUDIT

    def provenance(self, job_id: str, restart: int) -> Path:
        return self.folder / "provenance" / f"{job_id}-{restart}.json"

    @property
    def live(self) -> Path:
        return self.folder / LIVE

    # -- what training writes ---------------------------------------------------------------------------------------
    @property
    def resume_state(self) -> Path:
        return self.folder / "resume" / "state.pt"

    @property
    def init_weights(self) -> Path:
        return self.folder / "init.pt"

    @property
    def handoff(self) -> Path:
        """(inits) the epoch ``init.pt`` holds and why: what a control init of the same seed hands on too."""
        return self.folder / "handoff.json"

    @property
    def manifest(self) -> Path:
        return self.folder / "data" / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    def weights(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.pt"

    # -- what evaluation writes -------------------------------------------------------------------------------------
    def evals(self, epoch: int) -> Path:
        return self.folder / "evals" / f"epoch_{epoch}"

    def eval_result(self, epoch: int, file_stem: str) -> Path:
        return self.evals(epoch) / f"{file_stem}.json"

    def per_example(self, epoch: int, file_stem: str) -> Path:
        return self.evals(epoch) / f"{file_stem}.npz"
