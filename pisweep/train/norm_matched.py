"""The norm_matched control: does perceptual init help because of what it learned, or because it leaves the vision
tower at other scales? No training: the random arm's vision init of the seed (the tower that seed's random run
starts from), each tensor rescaled to the L2 norm of the same tensor of that seed's perceptual init (the epoch it
hands on). Directions are random, norms perceptual. A random tensor that is all zeros (no direction: e.g. the biases
open_clip starts at 0) stays zero; ``handoff.json`` lists those tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pisweep.atomic import atomic_write_json
from pisweep.errors import TrainingError
from pisweep.job.context import JobContext
from pisweep.job.paths import JobPaths
from pisweep.study.spec import Study
from pisweep.train.checkpoint import save_weights
from pisweep.train.stage1 import handed_on_epoch
from pisweep.train.stage2 import build_model


def rescale_to_norms(directions: dict[str, torch.Tensor], norms_of: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each floating tensor of ``directions`` scaled to the L2 norm of the same tensor of ``norms_of`` (computed in
    float64); (the tensors, the names left as they were: all-zero, or not floating point)."""
    if set(directions) != set(norms_of):
        raise TrainingError(f"the tensors differ: {sorted(set(directions) ^ set(norms_of))[:5]}")
    out, kept = {}, []
    for name, d in directions.items():
        target = norms_of[name]
        if d.shape != target.shape:
            raise TrainingError(f"tensor {name}: shape {tuple(d.shape)} vs {tuple(target.shape)}")
        norm = d.double().norm() if d.is_floating_point() else torch.zeros((), dtype=torch.float64)
        if norm == 0:
            out[name] = d.clone()
            kept.append(name)
            continue
        out[name] = (d.double() * (target.double().norm() / norm)).to(d.dtype)
    return out, kept


def run_norm_matched(ctx: JobContext, study: Study, seed: int, perceptual: Path) -> Path:
    """Write the norm_matched init of run seed ``seed`` as ``<ctx.folder>/init.pt``; ``perceptual``: the folder of
    that seed's perceptual init."""
    paths = JobPaths(ctx.folder)
    epoch = handed_on_epoch(perceptual)
    source = JobPaths(perceptual).init_weights
    try:
        perc = torch.load(source, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as exc:  # noqa: BLE001 - an unreadable init is one clear error
        raise TrainingError(f"the perceptual init {source} is unreadable: {exc}") from exc
    model = build_model(study, "random", None, seed)[0]  # exactly the random arm's start of this seed
    visual = {k[len("visual."):]: v for k, v in perc.items() if k.startswith("visual.")}
    scaled, kept = rescale_to_norms(model.visual.state_dict(), visual)
    model.visual.load_state_dict(scaled, strict=True)
    sha, nbytes = save_weights(paths.init_weights, epoch, model) if ctx.rank == 0 else ("", 0)
    if ctx.rank == 0:
        atomic_write_json(paths.handoff, {"epoch": epoch, "rule": "norm_matched", "sha256": sha,
                                          "random_seed": seed, "norms_of": str(source), "kept_as_random": kept})
    ctx.emit("init_selected", epoch=epoch, path=str(paths.init_weights), val_loss=None, kind="init", sha256=sha,
             bytes=nbytes)
    return paths.init_weights
