"""An eval job: every (epoch, task) asked for one run, in one warm process.

The model is built once; each epoch's weights file is loaded into it; the eval sets (decoded and preprocessed)
stay cached across epochs. A task already evaluated for this suite version is reported from its result file, not
recomputed, so running an eval job twice never does the work twice nor duplicates a row.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pisweep.atomic import sha256_file
from pisweep.eval import registry
from pisweep.job.context import JobContext, Preempted
from pisweep.job.paths import JobPaths
from pisweep.study.spec import Study

log = logging.getLogger("pisweep.eval")


def run_evals(ctx: JobContext, study: Study, *, epochs: list[int], tasks: list[str], eval_root: str | None,
              nights: str | None, cache_dir: str | None, device: str = "cpu") -> None:
    from pisweep.eval.evaluator import Evaluator
    from pisweep.eval.registry import SUITE_VERSION, get_task

    evaluator = Evaluator(study.model.name, study.model.config, Path(eval_root) if eval_root else None,
                          overrides=dict(study.eval.folders), batch_size=study.eval.batch_size,
                          cache_dir=Path(cache_dir) if cache_dir else None, device=device)
    recorded = _recorded_weights(ctx.folder)
    if nights and JobPaths(ctx.folder).weights(0).is_file():  # the weights the run started from: NIGHTS only
        _nights_2afc(ctx, study, evaluator, 0, Path(nights), recorded)
    for epoch in sorted(epochs):
        out = JobPaths(ctx.folder).evals(epoch)
        todo = []
        for task in tasks:
            done = _previous(JobPaths(ctx.folder).eval_result(epoch, get_task(task).file_stem), SUITE_VERSION,
                             evaluator.folder_of(task))
            if done is not None:
                ctx.emit("eval_state", epoch=epoch, task=task, suite_version=SUITE_VERSION, **done)
            else:
                todo.append(task)
        if nights:
            _nights_2afc(ctx, study, evaluator, epoch, Path(nights), recorded)
        if not todo:
            continue
        if ctx.should_stop():
            raise Preempted(ctx.stop_signal or "stop", ctx.step)
        changed = _weights_changed(JobPaths(ctx.folder).weights(epoch), epoch, recorded.get(epoch))
        if changed:  # evaluating it would report numbers of some other model as this epoch's
            for task in todo:
                ctx.emit("eval_state", epoch=epoch, task=task, suite_version=SUITE_VERSION, state="failed",
                         reason=changed)
            continue
        for task in todo:
            ctx.emit("eval_state", epoch=epoch, task=task, suite_version=SUITE_VERSION, state="running")
        log.info("evaluating epoch %d on %d tasks", epoch, len(todo))
        for res in evaluator.evaluate(JobPaths(ctx.folder).weights(epoch), todo, out_dir=out):
            ctx.emit("eval_state", epoch=epoch, task=res.task, suite_version=SUITE_VERSION, state=res.status,
                     reason=res.reason, path=res.json_path or res.path, metrics=_finite(res.metrics),
                     main_metric=res.main_metric)


def _recorded_weights(folder: Path) -> dict[int, str]:
    """epoch -> the sha256 training recorded for its weights file (the last checkpoint event of each epoch)."""
    out: dict[int, str] = {}
    for path in sorted(JobPaths(folder).events.glob("*-checkpoint.json")):
        try:
            data = json.loads(path.read_text()).get("data") or {}
        except (OSError, ValueError):
            continue
        if data.get("kind") == "weights" and data.get("sha256"):
            out[int(data["epoch"])] = data["sha256"]
    return out


def _weights_changed(path: Path, epoch: int, recorded: str | None) -> str | None:
    """Why the weights file of ``epoch`` is not the one training wrote, or None when it is (or nothing was recorded
    to compare with)."""
    if not recorded or not path.is_file():
        return None
    actual = sha256_file(path)
    if actual == recorded:
        return None
    return (f"{path} is not the file training wrote (sha256 {actual[:12]}, recorded {recorded[:12]}): it was "
            f"replaced or damaged after epoch {epoch} was saved")


def _previous(path: Path, version: str, folder: Path | None = None) -> dict | None:
    """The recorded outcome of a task evaluated before, or None when it must run: no result, another suite version,
    or another folder (by name: the same folder on a new mount is the same data)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    info = data.get("pisweep", {})
    if str(info.get("suite_version")) != str(version) or "metrics" not in data:
        return None
    if folder is not None and Path(str(info.get("folder", ""))).name != folder.name:
        return None
    return {"state": "done", "path": str(path), "metrics": _finite(data["metrics"]), "main_metric": info.get("main_metric")}


def _finite(metrics: dict) -> dict:
    import math

    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in (metrics or {}).items()}


def _nights_2afc(ctx: JobContext, study: Study, evaluator, epoch: int, nights: Path, recorded: dict[int, str]) -> None:
    """Human alignment of a stage-2 checkpoint: NIGHTS 2AFC on val, both test subsets and their total, with each
    triplet's outcome beside it (the report's intervals), reported from its files when this version has them."""
    paths = JobPaths(ctx.folder)
    stem = registry.NIGHTS_2AFC.file_stem
    path, npz = paths.eval_result(epoch, stem), paths.per_example(epoch, stem)
    prev = _previous(path, registry.NIGHTS_VERSION)
    if prev is None or not npz.is_file():
        weights = paths.weights(epoch)
        changed = _weights_changed(weights, epoch, recorded.get(epoch))
        if changed:
            ctx.emit("eval_state", epoch=epoch, task=stem, suite_version=registry.NIGHTS_VERSION, state="failed",
                     reason=changed)
            return
        evaluator.load_weights(weights)
        outcomes, ids = nights_outcomes(evaluator.model, nights, study.stage1.min_votes, evaluator.device,
                                        study.eval.batch_size)
        from pisweep.atomic import atomic_write_json
        from pisweep.data.nights import scores_by_subset
        from pisweep.eval.evaluator import write_npz

        scores = scores_by_subset(outcomes)
        arrays = {f"{k}_outcome": v for k, v in outcomes.items()} | {f"{k}_id": v for k, v in ids.items()}
        write_npz(npz, {**arrays, "suite_version": np.array(registry.NIGHTS_VERSION)})
        atomic_write_json(path, {"metrics": scores, "pisweep": {"suite_version": registry.NIGHTS_VERSION,
                                                                 "main_metric": registry.NIGHTS_2AFC.main_metric,
                                                                 "per_example": npz.name, "folder": str(nights)}})
        prev = {"state": "done", "path": str(path), "metrics": scores, "main_metric": registry.NIGHTS_2AFC.main_metric}
    ctx.emit("eval_state", epoch=epoch, task=stem, suite_version=registry.NIGHTS_VERSION, **prev)


def nights_outcomes(model, root: Path, min_votes: int, device: str,
                    batch_size: int = 64) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each NIGHTS triplet's 2AFC outcome under ``model``'s image embeddings, and its csv id, per eval subset (val,
    test_imagenet, test_no_imagenet; an empty subset is left out)."""
    import torch

    from pisweep.data import nights
    from pisweep.train.augment import model_image_size, model_mean_std, nights_transform
    from pisweep.train.stage1 import triplet_distances

    transform = nights_transform(model_image_size(model), *model_mean_std(model))
    outcomes: dict[str, np.ndarray] = {}
    ids: dict[str, np.ndarray] = {}
    model.eval()
    for name, triplets in nights.subsets(root, min_votes).items():
        if not triplets:
            continue
        ds = nights.TripletDataset(triplets, transform)
        d0s, d1s = [], []
        with torch.no_grad():
            for ref, left, right, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size):
                d0, d1 = triplet_distances(model, ref.to(device), left.to(device), right.to(device))
                d0s.append(d0.cpu())
                d1s.append(d1.cpu())
        outcomes[name] = nights.outcomes_2afc(torch.cat(d0s).numpy(), torch.cat(d1s).numpy(), ds.targets)
        ids[name] = np.array([t.id for t in triplets])
    return outcomes, ids
