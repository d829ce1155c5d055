"""Site profiles for the slurm executor: what a cluster needs in every job (partition, account, qos, ...).

A profile is a small YAML file in slurm_templates/ that a study names (``executor.profile``). The job shapes
(nodes, GPUs, CPUs, memory, time) come from the study (``executor.init|train|eval|posthoc``); a profile may override them
per job kind for its site. Pure: pydantic models and a loader that raises SpecError naming the file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from pisweep.errors import SpecError
from pisweep.study.spec import Resources, Strict
from pisweep.study.yamlfile import parse_yaml

# sbatch option names: letters, digits and dashes only, so no value can smuggle in another option.
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")
JOB_KINDS = ("init", "train", "eval", "posthoc")


class KindOverride(Strict):
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int | None = Field(None, ge=1)
    partition: str | None = None
    qos: str | None = None


class SiteProfile(Strict):
    """What every job of a site needs; values are passed to sbatch as separate, quoted options. No string may
    hold a control character (a newline would end an #SBATCH line); setup lines are one shell line each."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = Field(default_factory=list)  # shell lines before the job (module load, conda activate)
    extra: dict[str, str | int | bool] = Field(default_factory=dict)  # any other sbatch option
    signal_delay_s: int = Field(120, ge=10)  # USR2 this long before the time limit (and on preemption)
    max_requeue_timeouts: int | None = None  # None: the study's executor.max_timeouts
    kinds: dict[str, KindOverride] = Field(default_factory=dict)  # init | train | eval | posthoc -> overrides

    @field_validator("extra")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in v if not _OPTION.match(k)]
        if bad:
            raise ValueError(f"sbatch option names must be lower-case words with dashes, got {bad}")
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) - set(JOB_KINDS))
        if bad:
            raise ValueError(f"unknown job kinds {bad}; allowed: {', '.join(JOB_KINDS)}")
        return v

    def resources(self, kind: str, base: Resources) -> tuple[Resources, dict[str, Any]]:
        """The job shape of ``kind`` (the study's, overridden by the profile) and its scheduler options."""
        over = self.kinds.get(kind, KindOverride())
        shape = base.model_copy(update={k: v for k, v in over.model_dump().items()
                                        if v is not None and k in Resources.model_fields})
        options = {"partition": over.partition or self.partition, "account": self.account,
                   "qos": over.qos or self.qos, "constraint": self.constraint}
        return shape, {k: v for k, v in options.items() if v}


def load_profile(path: str | Path) -> SiteProfile:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(), path) or {}
    except FileNotFoundError:
        raise SpecError(f"executor.profile: site profile {path} does not exist") from None
    except OSError as e:
        raise SpecError(f"executor.profile: cannot read site profile {path} ({e.strerror})") from None
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors())
        raise SpecError(f"{path}: invalid site profile: {problems}") from None
