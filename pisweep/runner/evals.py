"""An eval job: every (epoch, task) asked for one run, in one warm process.

The model is built once; each epoch's weights file is loaded into it; the eval sets (decoded and preprocessed)
stay cached across epochs. A task already evaluated for this suite version is reported from its result file, not
recomputed, so running an eval job twice never does the work twice nor duplicates a row.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pisweep.atomic import sha256_file
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
            _nights_2afc(ctx, study, evaluator, epoch, Path(nights), out)
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


def _nights_2afc(ctx: JobContext, study: Study, evaluator, epoch: int, nights: Path, out: Path) -> None:
    """Human alignment of a stage-2 checkpoint: NIGHTS 2AFC on val and both test subsets."""
    path = out / "nights_2afc.json"
    prev = _previous(path, NIGHTS_VERSION)
    if prev is None:
        evaluator.load_weights(JobPaths(ctx.folder).weights(epoch))
        scores = nights_2afc(evaluator.model, nights, study.stage1.min_votes, evaluator.device,
                             study.eval.batch_size)
        from pisweep.atomic import atomic_write_json

        atomic_write_json(path, {"metrics": scores, "pisweep": {"suite_version": NIGHTS_VERSION,
                                                                 "main_metric": "nights_val_2afc"}})
        prev = {"state": "done", "path": str(path), "metrics": scores, "main_metric": "nights_val_2afc"}
    ctx.emit("eval_state", epoch=epoch, task="nights_2afc", suite_version=NIGHTS_VERSION, **prev)


NIGHTS_VERSION = "nights-1"


def nights_2afc(model, root: Path, min_votes: int, device: str, batch_size: int = 64) -> dict[str, float]:
    """DreamSim's 2AFC score of ``model``'s image embeddings on NIGHTS val and the two test subsets."""
    import torch

    from pisweep.data import nights
    from pisweep.train.augment import model_image_size, model_mean_std, nights_transform
    from pisweep.train.stage1 import triplet_distances

    transform = nights_transform(model_image_size(model), *model_mean_std(model))
    scores: dict[str, float] = {}
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
        scores[f"nights_{name}_2afc"] = float(nights.score_2afc(torch.cat(d0s).numpy(), torch.cat(d1s).numpy(),
                                                                 ds.targets))
    return scores
