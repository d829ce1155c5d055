"""Where a study's files live under its output root: the ledger, the job folders (each named inside by
job/paths.py), the shared eval cache and the reports. Files of the output root itself are named by their owners:
``ledger.json`` (ledger/owner.py), ``controller.lock`` (executors/controller.py), ``logs/scheduler.log``
(executors/schedlog.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pisweep.job.paths import JobPaths
from pisweep.study.spec import Study


@dataclass(frozen=True)
class Layout:
    """Where each job keeps its files under the study's output root."""

    root: Path

    def init_dir(self, uid: str) -> Path:
        return self.root / "inits" / uid

    def run_dir(self, uid: str) -> Path:
        return self.root / "runs" / uid

    def job_dir(self, kind: str, uid: str) -> Path:
        return self.init_dir(uid) if kind == "init" else self.run_dir(uid)

    @property
    def eval_cache(self) -> Path:
        return self.root / "cache" / "eval"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def paths(self, kind: str, uid: str) -> JobPaths:
        """The named files of one job's folder."""
        return JobPaths(self.job_dir(kind, uid))


def default_ledger(study: Study) -> Path:
    return Path(study.ledger) if study.ledger else Path(study.output_root) / "ledger.sqlite"
