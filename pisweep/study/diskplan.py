"""How much disk a plan's checkpoints take, estimated from the model's config without building the model.

Pure apart from reading open_clip's model config JSON (found without importing open_clip, so no torch). A ViT
CLIP has about 12·width² parameters per transformer block plus its embeddings and projections; weights files are
fp32 state dicts (4 bytes a parameter), and a resume state holds the model and AdamW's two moments (12 bytes).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pisweep.study.plan import Plan
from pisweep.study.spec import Study


def model_config(study: Study) -> dict[str, Any] | None:
    """The open_clip config of the study's model: inline, or open_clip's own JSON; None if it is not found."""
    if study.model.config is not None:
        return study.model.config
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model_configs" / f"{study.model.name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def vit_clip_params(cfg: dict[str, Any]) -> int | None:
    """Parameters of a ViT + text-transformer CLIP from its config (within a few per cent); None for other towers."""
    v, t, embed = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}, int(cfg.get("embed_dim", 512))
    if not all(k in v for k in ("width", "layers", "patch_size", "image_size")) or "timm_model_name" in v:
        return None
    if "hf_model_name" in t or not all(k in t for k in ("width", "layers")):
        return None
    w, layers, p = int(v["width"]), int(v["layers"]), int(v["patch_size"])
    size = v["image_size"] if isinstance(v["image_size"], int) else v["image_size"][0]
    tokens = (int(size) // p) ** 2 + 1
    vision = layers * 12 * w * w + 3 * p * p * w + tokens * w + w * embed
    tw = int(t["width"])
    text = int(t["layers"]) * 12 * tw * tw + int(t.get("vocab_size", 49408)) * tw + int(t.get("context_length", 77)) * tw \
        + tw * embed
    return vision + text


@dataclass(frozen=True)
class DiskNeed:
    params: int
    weights_files: int
    bytes: int

    def describe(self) -> str:
        return (f"about {self.bytes / 1e9:.1f} GB ({self.weights_files} weights files of {self.params * 4 / 1e6:.0f} MB "
                f"and the resume states of the jobs that run at once)")


def disk_needed(study: Study, plan: Plan, done: Iterable[str] = ()) -> DiskNeed | None:
    """What the plan's jobs not yet ``done`` (uids) will write: weights files of the epochs retention keeps, init
    weights, and resume states (model + AdamW) of the jobs that run at once. None when the model is unknown."""
    cfg = model_config(study)
    params = vit_clip_params(cfg) if cfg else None
    if params is None:
        return None
    done = set(done)
    keep_all = study.stage2.keep_weights == "all"
    start = 1 if study.data.synthetic is not None or study.data.nights is not None else 0  # epoch 0, for NIGHTS
    files = sum((r.epochs if keep_all else len(r.eval_epochs)) + start for r in plan.runs if r.uid not in done)
    files += sum(1 for i in plan.inits if i.uid not in done)
    parallel = study.executor.max_parallel if study.executor.name == "local" else len(plan.runs) + len(plan.inits)
    resume = min(parallel, len(plan.runs) + len(plan.inits)) * params * 12
    return DiskNeed(params, files, files * params * 4 + resume)


def free_bytes(path: str | Path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
