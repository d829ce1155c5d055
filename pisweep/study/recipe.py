"""Recipes: the named sets of defaults a study starts from. Pure.

A study file names one (``recipe: openclip`` when it names none); every field the file sets wins over the recipe,
and the two warmup fields are one choice: a file that sets either replaces both. Every value names its source:
the authors' fork (cheesepuff90/Brain_Initialization at 38f3395: file and key) or shared/reference/
paper-protocol.md (§). What the fork does that open_clip cannot express is in docs/recipes.md.

- ``openclip``: the spec's own defaults (open_clip_train's conventions and §1.4-1.5), with the stage-2 warmup a
  fraction of the run so that scales compare fairly.
- ``authors``: the fork as its code runs.

Studies recorded under identity v1 and v2 (before recipes) are loaded with what they ran (``LEGACY``), so their
results and uids stay theirs.
"""
from __future__ import annotations

import copy
from typing import Any

#: ln(100) as the fork's model config writes it (init_logit_scale): exp(logit_scale) = 100, the clamp both hold.
LN_100 = 4.60517

#: §1.5's 2500 warmup steps as the share of its run they are: 2500 of 58 592 (15M // 8192 steps x 32 epochs).
WARMUP_FRACTION = 0.04267

#: The post-hoc fine-tune's optimizer: config/trainingconfig/nights_ft_from_yfcc.json optimizer Adam lr 1e-5,
#: weight_decay 0, betas (0.9, 0.999); scheduler warmup_steps 150 (Adam = AdamW at weight decay 0).
POSTHOC_OPTIM: dict[str, Any] = {"lr": 1e-5, "weight_decay": 0.0, "betas": [0.9, 0.999], "warmup_steps": 150}

#: What a section that a file gives in part still needs from the recipe (the rest are the spec's defaults).
OPENCLIP: dict[str, Any] = {
    "stage1": {"optim": {"warmup_steps": 150}},  # §1.4: 150 warmup steps
    "stage2": {"optim": {"warmup_fraction": WARMUP_FRACTION}},
    "posthoc": {"optim": POSTHOC_OPTIM},
}

AUTHORS: dict[str, Any] = {
    # config/modelconfig/vit_b_32.json init_logit_scale: 4.60517 (exp = 100 from the first step)
    "model": {"init_logit_scale": LN_100},
    "stage1": {
        # perceptual_init_yfcc15m_vitb32.json init_ckpt_path .../checkpoints/last.ckpt (and nights_ft_from_yfcc.json
        # .../pi/last.ckpt): stage 2 loads the last stage-1 epoch
        "handoff": "last",
        # src/dataset.py: the NIGHTS train loader (or its DistributedSampler) has drop_last=True
        "drop_last": True,
        # nights_init_vitb32.json scheduler warmup_steps 150; src/lightning_module.py _get_lr_scheduler (one
        # scheduler for both stages)
        "optim": {"warmup_steps": 150, "schedule": "fork"},
    },
    "stage2": {
        # declip_yfcc15m_litdata_vitb32.json data.batch_size 1024 per device x accumulate_grad_batches 6, on
        # "devices": "auto": 8 devices assumed (the node of §4.1); 6144 x your device count matches another
        "global_batch_size": 1024 * 6 * 8,
        "accumulation_steps": 6,
        # src/train.py: pl.Trainer(... #gradient_clip_val=config.gradient_clip_val ...): the preset's 3 is unused
        "grad_clip": None,
        # src/loss.py ClipLoss: torch.clamp(logit_scale.exp(), max=100); the parameter itself is never clamped
        "logit_scale_clamp": "in_loss",
        # src/dataset.py get_transform: RandomResizedCrop(image_size, scale=(0.2, 1.)) at torchvision's default
        # (bilinear); the preset's "interpolation": "bicubic" is for eval only
        "interpolation": "bilinear",
        # declip_yfcc15m_litdata_vitb32.json scheduler warmup_steps 2500, min_lr 0; _get_lr_scheduler as it runs:
        # the loader's length is unknown when configure_optimizers runs, so 12 500 steps per epoch
        "optim": {"warmup_steps": 2500, "schedule": "fork"},
    },
    "posthoc": {
        # nights_ft_from_yfcc.json: the same NIGHTS loader (drop_last=True) and _get_lr_scheduler as stage 1
        "drop_last": True,
        "optim": {**POSTHOC_OPTIM, "schedule": "fork"},
    },
}

RECIPES: dict[str, dict[str, Any]] = {"openclip": OPENCLIP, "authors": AUTHORS}

#: What studies recorded before identity v3 ran where v3 changed a default: a fixed 2500-step warmup (§1.5) and
#: the first shards of the pattern. (Their controls also chose their own best-val epoch: study/plan.py.)
_BEFORE_V3: dict[str, Any] = {"stage2": {"optim": {"warmup_steps": 2500}}, "data": {"subset": "prefix"}}
LEGACY: dict[int, dict[str, Any]] = {1: _BEFORE_V3, 2: _BEFORE_V3}

#: Keys that are one choice: a mapping that sets any of them replaces all of them.
_ONE_CHOICE = (frozenset({"warmup_steps", "warmup_fraction"}),)


def recipe_defaults(name: str, version: int | None = None) -> dict[str, Any]:
    """The defaults recipe ``name`` gives a study recorded under identity ``version`` (None: a new study)."""
    return merge(RECIPES[name], LEGACY.get(version, {}))  # (merge copies)


def with_recipe(data: dict[str, Any], version: int | None = None) -> dict[str, Any]:
    """A study's raw mapping with its recipe's defaults beneath what it sets. An unknown recipe is left for the
    spec's validation to name."""
    name = data.get("recipe", "openclip")
    if not isinstance(name, str) or name not in RECIPES:
        return data
    return merge(recipe_defaults(name, version), data)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping; a key of a one-choice group in ``over`` drops the group's
    keys from ``base``."""
    out = copy.deepcopy(base)
    for group in _ONE_CHOICE:
        if group & over.keys():
            for key in group:
                out.pop(key, None)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
