"""Where a study's data lies, as concrete paths, and the preflight check run before anything is submitted."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pisweep.data.shardlist import DeclaredSizes, expand_shards
from pisweep.errors import DataError, PreflightError
from pisweep.study.arms import NIGHTS_ARMS
from pisweep.study.spec import Study, train_ranks


@dataclass(frozen=True)
class DataPaths:
    nights: str | None
    train: dict[str, tuple[str, int]]  # scale -> (shard pattern, samples per epoch)
    eval_root: str | None


def resolve(study: Study, generate: bool = False,
            progress: Callable[[str, int, int], None] | None = None) -> DataPaths:
    """Concrete paths of the study's data; for synthetic data, make it first when ``generate`` (idempotent)."""
    synth = study.data.synthetic
    if synth is None:
        return DataPaths(study.data.nights, {k: (v.shards, v.samples) for k, v in study.data.train.items()},
                         study.data.eval_root)
    from pisweep.data.synth import SynthConfig, layout_for, synthesize

    cfg = SynthConfig(**synth.model_dump(exclude={"root"}, exclude_none=True))
    lay = synthesize(Path(synth.root), cfg, progress) if generate else layout_for(Path(synth.root), cfg)
    return DataPaths(str(lay.nights_root), {k: (v.pattern, v.num_samples) for k, v in lay.train.items()},
                     str(lay.eval_root))


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    coverage_present: list[str] = field(default_factory=list)
    coverage_missing: dict[str, str] = field(default_factory=dict)

    def raise_if_problems(self, spec_name: str) -> None:
        if self.problems:
            raise PreflightError(f"study {spec_name!r}: preflight found {len(self.problems)} problem(s):\n  "
                                 + "\n  ".join(self.problems))


def preflight(study: Study, paths: DataPaths) -> Preflight:
    """Find what would fail later: missing paths, sample counts that don't add up, too few shards, a global batch
    the ranks cannot split, eval coverage."""
    pf = Preflight()
    train = study.executor.train
    ranks = train_ranks(study.executor.name, train)
    accumulation = study.stage2.accumulation_steps  # a step sees per-rank batch x ranks x accumulation samples
    if study.stage2.global_batch_size % (ranks * accumulation):
        pf.problems.append(
            f"stage2.global_batch_size: {study.stage2.global_batch_size} does not split over the {ranks} ranks of a "
            f"train job (executor.train: nodes {train.nodes} x gpus_per_node {train.gpus_per_node}"
            + (", nodes ignored by the local executor" if study.executor.name == "local" else "")
            + f") x stage2.accumulation_steps {accumulation}: it must be per-rank batch x ranks x accumulation "
              f"steps")
    nights_arms = [a for a in study.grid.init if a in NIGHTS_ARMS]
    if nights_arms:
        if not paths.nights:
            pf.problems.append(f"data.nights: the arms {nights_arms} need NIGHTS, and no path is set")
        elif not (Path(paths.nights) / "data.csv").exists():
            pf.problems.append(f"data.nights: {Path(paths.nights) / 'data.csv'} does not exist")
    workers = max(1, study.stage2.workers)
    for scale in study.grid.scale:
        pattern, samples = paths.train[scale]
        try:
            shards = expand_shards(pattern)
        except DataError as e:
            pf.problems.append(f"data.train.{scale}.shards: {e}")
            continue
        missing = [s for s in shards if "://" not in s and not Path(s).exists()]
        if missing:
            pf.problems.append(f"data.train.{scale}.shards: {len(missing)} of {len(shards)} shards missing "
                               f"(first: {missing[0]})")
            continue
        sizes = DeclaredSizes().all_of(shards)
        if sizes is not None:
            total = sum(sizes.values())
            if total < samples:
                pf.problems.append(f"data.train.{scale}.samples: {samples} samples asked, but the shards hold {total}")
            else:
                used, n = 0, 0
                for s in shards:
                    used += sizes.get(s, 0)
                    n += 1
                    if used >= samples:
                        break
                shards = shards[:n]
        if len(shards) < workers * ranks:
            pf.problems.append(f"data.train.{scale}: {len(shards)} shards cover the scale but stage2.workers x ranks = "
                               f"{workers} x {ranks}; every loader worker needs at least one shard")
    from pisweep.eval.registry import coverage
    from pisweep.study.plan import suite_tasks

    tasks = suite_tasks(study)
    if paths.eval_root:
        present, missing_map = coverage(Path(paths.eval_root), list(tasks), dict(study.eval.folders))
        pf.coverage_present = list(present)
        pf.coverage_missing = {k: str(v) for k, v in missing_map.items()}
    else:
        pf.coverage_missing = {t: "(data.eval_root not set)" for t in tasks}
    return pf
