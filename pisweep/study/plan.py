"""Expand a study into jobs: stage-1 inits, stage-2 runs and post-hoc fine-tunes of runs, with the epochs each
evaluates. Pure and deterministic.

Every job has a uid: a hash of the canonical JSON of its identity (study/identity.py: everything that changes its
result, and nothing that does not), under the identity version its study was recorded with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pisweep.errors import PlanError
from pisweep.study.identity import (
    IDENTITY_VERSION,
    init_identity,
    posthoc_identity,
    result_view,
    run_identity,
    uid_of,
)
from pisweep.study.arms import CONTROLS, DOSE_INITS, arm_name
from pisweep.study.spec import Study

MAX_JOBS = 100_000  # a grid above these is refused before it is expanded (raise with --max-jobs / --max-evals)
MAX_EVALS = 10_000_000


@dataclass(frozen=True)
class InitJob:
    """One stage-1 training, shared by every run of the same init method, stage-1 config and seed."""

    uid: str
    method: str  # "perceptual" or a control: "shuffled" | "pixel" | "norm_matched" (study/arms.py)
    seed: int
    identity: dict[str, Any] = field(compare=False, repr=False)
    # The init this one waits for: its seed's perceptual init, whose hand-off epoch a control under
    # stage1.handoff "best_val" hands on, and whose norms norm_matched takes; None: it waits for nothing.
    after: str | None = None
    fraction: float = 1.0  # (grid.nights_fraction) the share of NIGHTS' train triplets it trains on

    @property
    def arm(self) -> str:
        return arm_name(self.method, self.fraction)

    @property
    def label(self) -> str:
        return f"init-{self.arm}-s{self.seed}"


@dataclass(frozen=True)
class RunJob:
    """A cell of the grid with weights to evaluate: a stage-2 contrastive training (kind "train"), or a post-hoc
    fine-tune (kind "posthoc": init "posthoc") of the weights a random run has after epoch ``source_epoch``, which
    it evaluates as its epoch ``source_epoch``; its scale, epochs and seed are its source's (its group and pair)."""

    uid: str
    init: str  # an arm of study/arms.py
    init_uid: str | None
    scale: str
    epochs: int
    seed: int
    eval_epochs: tuple[int, ...]
    identity: dict[str, Any] = field(compare=False, repr=False)
    source: str | None = None  # (posthoc) the run whose weights it fine-tunes
    source_epoch: int | None = None  # (posthoc) the epoch of those weights
    keep_epochs: tuple[int, ...] = ()  # (train) epochs whose weights a post-hoc cell needs: kept whatever retention
    fraction: float = 1.0  # (grid.nights_fraction) the share of NIGHTS its init trained on

    @property
    def arm(self) -> str:
        """The report's arm: the init method, with the NIGHTS fraction when it is not all (``perceptual@0.25``)."""
        return arm_name(self.init, self.fraction)

    @property
    def kind(self) -> str:
        return "posthoc" if self.source is not None else "train"

    @property
    def label(self) -> str:
        at = f"-at{self.source_epoch}" if self.source is not None else ""
        return f"{self.arm}-{self.scale}-e{self.epochs}-s{self.seed}{at}"

    @property
    def depends_on(self) -> str | None:
        """The job this one starts from: its init, or (posthoc) its source run."""
        return self.source if self.source is not None else self.init_uid


@dataclass(frozen=True)
class Plan:
    study: str
    inits: tuple[InitJob, ...]
    runs: tuple[RunJob, ...]
    tasks: tuple[str, ...]
    identity_version: int = IDENTITY_VERSION

    def run_by_uid(self) -> dict[str, RunJob]:
        return {r.uid: r for r in self.runs}

    def counts(self) -> dict[str, int]:
        return {"inits": len(self.inits), "runs": len(self.runs), "evals": self.n_evals, "tasks": len(self.tasks)}

    @property
    def n_evals(self) -> int:
        return sum(len(r.eval_epochs) for r in self.runs) * len(self.tasks)


def suite_tasks(study: Study) -> tuple[str, ...]:
    from pisweep.eval.registry import SUITE_KEYS  # pure module: task keys only

    return tuple(SUITE_KEYS) if study.eval.tasks == "paper" else tuple(study.eval.tasks)


def eval_epochs(epochs: int, every: int) -> tuple[int, ...]:
    """Epochs whose checkpoint is evaluated: every ``every``-th, and always the last."""
    return tuple(e for e in range(1, epochs + 1) if e % every == 0 or e == epochs)


@dataclass(frozen=True)
class GridSize:
    inits: int
    runs: int
    evals: int

    @property
    def jobs(self) -> int:
        return self.inits + self.runs


def grid_size(study: Study) -> GridSize:
    """What :func:`make_plan` would make, counted from the axes' lengths alone (nothing is expanded)."""
    g = study.grid
    per_cell = len(g.scale) * len(g.seed)
    evaluated = sum(e // study.eval.every + (1 if e % study.eval.every else 0) for e in g.epochs)
    arms = [(i, f) for i in g.init if i != "posthoc" for f in fractions(study, i)]
    inits = {(m, f) for m, f in arms if m != "random"}
    inits |= {("perceptual", f) for m, f in inits if waits_for_perceptual(m, study)}  # what a control waits for
    posthoc = per_cell * sum(len(study.posthoc.source_epochs(e)) for e in g.epochs) if "posthoc" in g.init else 0
    return GridSize(inits=len(g.seed) * len(inits),
                    runs=per_cell * len(g.epochs) * len(arms) + posthoc,
                    evals=(per_cell * len(arms) * evaluated + posthoc) * len(suite_tasks(study)))


def fractions(study: Study, method: str) -> list[float]:
    """The NIGHTS fractions of ``method``'s arms: the dose axis for the dose inits, all of it for the others."""
    return list(study.grid.nights_fraction) if method in DOSE_INITS else [1.0]


def check_grid_size(study: Study, max_jobs: int = MAX_JOBS, max_evals: int = MAX_EVALS) -> GridSize:
    """Refuse a grid above the limits with its counts, before anything is expanded."""
    size = grid_size(study)
    if size.jobs > max_jobs or size.evals > max_evals:
        raise PlanError(f"study {study.name!r}: the grid expands to {size.jobs:,} jobs ({size.inits:,} inits, "
                        f"{size.runs:,} runs) and {size.evals:,} evals, above the limit of {max_jobs:,} jobs and "
                        f"{max_evals:,} evals; narrow grid.* (axis lengths: init {len(study.grid.init)}, scale "
                        f"{len(study.grid.scale)}, epochs {len(study.grid.epochs)}, seed {len(study.grid.seed)}), or "
                        f"raise the limit with --max-jobs / --max-evals")
    return size


def waits_for_perceptual(method: str, study: Study, identity_version: int = IDENTITY_VERSION) -> bool:
    """Whether an init of ``method`` waits for its seed's perceptual init: norm_matched always (it is made of that
    init's norms), a control that trains under a matched hand-off (:func:`matched_handoff`)."""
    return method == "norm_matched" or (method in CONTROLS and matched_handoff(study, identity_version))


def matched_handoff(study: Study, identity_version: int = IDENTITY_VERSION) -> bool:
    """Whether a control init waits for its seed's perceptual init to learn the epoch it hands on: under
    stage1.handoff "best_val", from identity v3 (before, a control chose its own best-val epoch)."""
    return identity_version >= 3 and study.stage1.fixed_handoff() is None


def make_plan(study: Study, identity_version: int = IDENTITY_VERSION) -> Plan:
    """The study's jobs; ``identity_version``: the one its study is recorded with (new studies: the latest)."""
    view = result_view(study, identity_version)  # once: every job's identity is made of its parts
    tasks = suite_tasks(study)
    inits: dict[tuple[str, int, float], InitJob] = {}
    runs: list[RunJob] = []

    def init_of(method: str, seed: int, fraction: float = 1.0) -> InitJob:
        if (method, seed, fraction) not in inits:
            ident = init_identity(view, identity_version, method, seed + study.stage1.seed_offset,
                                  random_seed=seed if method == "norm_matched" else None, fraction=fraction)
            waits = waits_for_perceptual(method, study, identity_version)
            after = init_of("perceptual", seed, fraction).uid if waits else None  # (the same dose)
            inits[(method, seed, fraction)] = InitJob(uid_of("init", ident), method, seed, ident, after, fraction)
        return inits[(method, seed, fraction)]

    posthoc = "posthoc" in study.grid.init
    for scale in study.grid.scale:
        for epochs in study.grid.epochs:
            sources = study.posthoc.source_epochs(epochs) if posthoc else []
            for seed in study.grid.seed:
                for init, fraction in ((i, f) for i in study.grid.init if i != "posthoc"
                                       for f in fractions(study, i)):
                    init_uid = init_of(init, seed, fraction).uid if init != "random" else None
                    ident = run_identity(view, identity_version, init, init_uid, scale, epochs, seed)
                    keep = tuple(sources) if init == "random" else ()
                    run = RunJob(uid_of("run", ident), init, init_uid, scale, epochs, seed,
                                 eval_epochs(epochs, study.eval.every), ident, keep_epochs=keep, fraction=fraction)
                    runs.append(run)
                    if init == "random":
                        for at in sources:
                            pid = posthoc_identity(view, identity_version, run.uid, at)
                            runs.append(RunJob(uid_of("posthoc", pid), "posthoc", None, scale, epochs, seed, (at,),
                                               pid, source=run.uid, source_epoch=at))
    return Plan(study.name, tuple(inits.values()), tuple(runs), tasks, identity_version)
