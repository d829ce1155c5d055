"""The job-file contract between the submit side and the code that runs a job: what a job file holds, where it is
written, the exit codes a job ends with, and the environment names a job's processes pass on. A leaf: the
planner, both executors and the runner import it; it imports nothing above it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pisweep.atomic import atomic_write_json
from pisweep.job.paths import JobPaths

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3
ENV_LAUNCH_DIR = "PISWEEP_LAUNCH_DIR"  # set by the node launcher for its ranks: where they report their exit code
ENV_SLURM_TASK = "PISWEEP_SLURM_TASK"  # set by a SLURM job's launcher: the SlurmTask (JSON) its ranks act for


@dataclass(frozen=True)
class JobFile:
    kind: str  # init | train | posthoc | eval
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


def job_file_path(folder: str | Path, kind: str, attempt_tag: str) -> Path:
    return JobPaths(folder).job_file(kind, attempt_tag)
