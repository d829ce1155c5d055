"""Checks of a study that span several of its sections (each section checks itself in study/spec.py). Pure."""
from __future__ import annotations

from pisweep.study.spec import Study


def cross_field_problems(study: Study) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span several sections, as (field path, message) pairs; empty when the study is consistent."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    known = study.data.scale_names()
    for i, scale in enumerate(study.grid.scale):
        if scale not in known:
            problems.append((("grid", "scale", i), f"scale {scale!r} is not one of the data's scales {known}"))
    if study.eval.tasks != "paper":
        from pisweep.eval.registry import SUITE_KEYS  # pure: task keys only

        for i, task in enumerate(study.eval.tasks):
            if task not in SUITE_KEYS:
                problems.append((("eval", "tasks", i), f"unknown task {task!r}; the suite's keys are: "
                                                       + ", ".join(SUITE_KEYS)))
    if "posthoc" in study.grid.init:
        if "random" not in study.grid.init:
            problems.append((("grid", "init"), "the posthoc arm fine-tunes the random arm's runs: add random"))
        late = [e for e in study.posthoc.from_epochs if isinstance(e, int) and e > max(study.grid.epochs)]
        if late:
            problems.append((("posthoc", "from_epochs"), f"source epochs {late} are after the longest run "
                                                         f"({max(study.grid.epochs)} epochs, grid.epochs)"))
    if study.executor.name == "slurm" and not study.executor.profile:
        problems.append((("executor", "profile"), "executor 'slurm' needs a site profile (a file in slurm_templates/)"))
    return problems
