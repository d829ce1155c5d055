"""What the submit side writes for a job: the job files of inits, runs, post-hoc fine-tunes and evals, from the plan
and the data paths. Both executors build their jobs here; the runner reads them (job/contract.py)."""
from __future__ import annotations

from typing import Any

from pisweep.job.contract import JobFile
from pisweep.job.paths import JobPaths
from pisweep.study.datapaths import DataPaths
from pisweep.study.layout import Layout
from pisweep.study.plan import InitJob, RunJob


def init_job_file(init: InitJob, study_json: dict[str, Any], paths: DataPaths, layout: Layout) -> JobFile:
    params = {"method": init.method, "seed": init.seed, "nights": paths.nights}
    if init.after is not None:  # the init whose hand-off epoch (or norms) this one takes (its handoff.json)
        params["handoff_from"] = str(layout.init_dir(init.after))
    if init.fraction != 1.0:  # the dose axis: a share of NIGHTS' train triplets
        params["fraction"] = init.fraction
    return JobFile("init", init.uid, str(layout.init_dir(init.uid)), study_json, params)


def cell_job_file(run: RunJob, study_json: dict[str, Any], paths: DataPaths, layout: Layout) -> JobFile:
    """The job file of a cell of the grid: its stage-2 training, or (posthoc) its fine-tune."""
    if run.source is not None:
        return posthoc_job_file(run, study_json, paths, layout)
    return train_job_file(run, study_json, paths, layout)


def posthoc_job_file(run: RunJob, study_json: dict[str, Any], paths: DataPaths, layout: Layout) -> JobFile:
    source = JobPaths(layout.run_dir(run.source)).weights(run.source_epoch)
    return JobFile("posthoc", run.uid, str(layout.run_dir(run.uid)), study_json,
                   {"source_weights": str(source), "source_epoch": run.source_epoch, "seed": run.seed,
                    "nights": paths.nights})


def train_job_file(run: RunJob, study_json: dict[str, Any], paths: DataPaths, layout: Layout) -> JobFile:
    shards, samples = paths.train[run.scale]
    init_weights = str(JobPaths(layout.init_dir(run.init_uid)).init_weights) if run.init_uid else None
    return JobFile("train", run.uid, str(layout.run_dir(run.uid)), study_json,
                   {"init": run.init, "init_weights": init_weights, "shards": shards, "samples": samples,
                    "epochs": run.epochs, "seed": run.seed, "eval_epochs": list(run.eval_epochs),
                    "keep_epochs": list(run.keep_epochs),  # a post-hoc cell's source epochs
                    "start_weights": paths.nights is not None})  # epoch 0: NIGHTS 2AFC of the starting weights


def eval_job_file(run_uid: str, items: list[tuple[int, str]], study_json: dict[str, Any], paths: DataPaths,
                  layout: Layout, cache_dir: str | None) -> JobFile:
    epochs = sorted({e for e, _ in items})
    tasks = sorted({t for _, t in items})
    return JobFile("eval", run_uid, str(layout.run_dir(run_uid)), study_json,
                   {"epochs": epochs, "tasks": tasks, "eval_root": paths.eval_root, "nights": paths.nights,
                    "cache_dir": cache_dir or str(layout.eval_cache)})
