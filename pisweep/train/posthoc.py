"""The post-hoc arm: a pretrained random run's weights at one epoch, fine-tuned on NIGHTS (the paper's contrast to
perceptual *initialization*: the same human data, applied after pretraining).

The fork's recipe (config/trainingconfig/nights_ft_from_yfcc.json, the section ``posthoc``): the vision blocks'
attention QKV projections train (``posthoc.trainable``: fnmatch patterns over parameter names), every other
parameter is frozen and stays bitwise the source's; the 2AFC hinge on 1 - cos, Adam without weight decay, warmup
then cosine per step, the last epoch handed on. The weights handed on are written as the cell's
``checkpoints/epoch_<source epoch>.pt`` (the source's text tower untouched), so the suite and NIGHTS 2AFC are
evaluated at the epoch the source run was: the pair the report compares. The loop, its resume and its per-epoch
NIGHTS report are stage 1's (train/stage1.py).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch

from pisweep.atomic import atomic_write_json, sha256_file
from pisweep.errors import TrainingError
from pisweep.job.context import JobContext
from pisweep.job.paths import JobPaths
from pisweep.models import create_model, write_model_config
from pisweep.study.spec import Study
from pisweep.train.checkpoint import save_weights
from pisweep.train.stage1 import NightsTrainer


def run_posthoc(ctx: JobContext, study: Study, source_weights: Path, source_epoch: int, seed: int,
                nights_root: Path, device: str = "cpu") -> Path:
    """Fine-tune the weights file ``source_weights`` (a run's epoch ``source_epoch``); return the path of the cell's
    ``checkpoints/epoch_<source_epoch>.pt``."""
    return _Posthoc(ctx, study, Path(source_weights), source_epoch, seed, Path(nights_root), device).run()


def trainable_names(names: list[str], patterns: list[str]) -> list[str]:
    """The parameter names that match one of the fnmatch ``patterns``, in the model's order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class _Posthoc(NightsTrainer):
    report_task = "finetune"  # its epochs are the fine-tune's, not pretraining epochs

    def __init__(self, ctx: JobContext, study: Study, source: Path, source_epoch: int, seed: int, root: Path,
                 device: str):
        if not source.is_file():
            raise TrainingError(f"job {ctx.uid}: the source weights {source} (epoch {source_epoch} of the run it "
                                f"fine-tunes) do not exist; that run's retention may have removed them")
        self.source, self.source_epoch = source, source_epoch
        self.source_sha = sha256_file(source)
        self.out_path = JobPaths(ctx.folder).weights(source_epoch)
        super().__init__(ctx, study, "perceptual", seed, root, device, study.posthoc.fixed_handoff(),
                         fit=study.posthoc)

    def _make_model(self) -> torch.nn.Module:
        model, _, _, _ = create_model(self.study.model.name, self.study.model.config, device="cpu",
                                      init_logit_scale=self.study.model.init_logit_scale)
        try:
            ckpt = torch.load(self.source, map_location="cpu", weights_only=True)
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatched file is one clear error
            raise TrainingError(f"job {self.ctx.uid}: the source weights {self.source} do not load into "
                                f"{self.study.model.name}: {exc}") from exc
        return model

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        named = dict(self.model.named_parameters())
        names = trainable_names(list(named), list(self.study.posthoc.trainable))
        if not names:
            raise TrainingError(f"posthoc.trainable {list(self.study.posthoc.trainable)} matches no parameter of "
                                f"{self.study.model.name} (its vision tower's are named like "
                                f"{next(n for n in named if n.startswith('visual.'))})")
        chosen = set(names)
        for name, p in named.items():
            p.requires_grad_(name in chosen)  # frozen: no gradient, so no update of any kind
        return [(n, named[n]) for n in names]

    def _fingerprint(self) -> dict[str, Any]:
        return {"source_sha256": self.source_sha, "source_epoch": self.source_epoch,
                "trainable": list(self.study.posthoc.trainable)}

    @property
    def precision(self) -> str:
        return self.study.posthoc.precision

    def _save_chosen(self, epoch: int) -> tuple[str, int]:
        write_model_config(self.out_path.parent, self.study.model.name, self.study.model.config)
        return save_weights(self.out_path, self.source_epoch, self.model)

    def _hand_on(self) -> Path:
        if self.best is None or not self.out_path.exists():
            raise TrainingError(f"the post-hoc fine-tune in {self.folder} finished without weights")
        if self.ctx.rank == 0:
            atomic_write_json(JobPaths(self.folder).handoff, {
                "epoch": self.best["epoch"], "rule": self.s1.handoff, "val_loss": self.best["val_loss"],
                "sha256": self.best["sha256"], "source": str(self.source), "source_sha256": self.source_sha,
                "source_epoch": self.source_epoch})
        # the weights of the cell's one evaluated epoch: what its eval job reads (and checks against this sha256)
        self.ctx.emit("checkpoint", epoch=self.source_epoch, kind="weights", path=str(self.out_path),
                      sha256=self.best["sha256"], bytes=self.best["bytes"], step=self.step)
        return self.out_path
