"""Image transforms of the two stages, and a wrapper that makes a random transform a pure function of a seed.

Stage 1 (§1.4): Resize((s, s), bicubic) -> ToTensor -> CLIP normalize; no augmentation.
Stage 2 (§1.5, MoCo-v2/DeCLIP): RandomResizedCrop(s, scale 0.2-1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 ->
grayscale p 0.2 -> GaussianBlur(sigma 0.1-2) p 0.5 -> horizontal flip -> ToTensor -> CLIP normalize.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def model_image_size(model: torch.nn.Module) -> int:
    """The square input size of an open_clip model's vision tower."""
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def model_mean_std(model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


def nights_transform(size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN,
                     std: Sequence[float] = OPENAI_DATASET_STD) -> T.Compose:
    """Stage 1: the authors' ``nights_transform`` at the model's input size."""
    return T.Compose([
        T.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        T.Lambda(_rgb),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def declip_train_transform(size: int, mean: Sequence[float] = OPENAI_DATASET_MEAN,
                           std: Sequence[float] = OPENAI_DATASET_STD, interpolation: str = "bicubic") -> T.Compose:
    """Stage 2 training augmentation (§1.5); ``interpolation``: RandomResizedCrop's (stage2.interpolation)."""
    return T.Compose([
        T.Lambda(_rgb),
        T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=InterpolationMode(interpolation)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PILGaussianBlur(0.1, 2.0)], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class PILGaussianBlur:
    """MoCo-v2's blur (which DeCLIP reuses): PIL's GaussianBlur with radius sigma ~ U(lo, hi).

    Faster than torchvision's tensor blur (about 2 ms against 8 ms at 224 px) and what the recipe used.
    Sigma is drawn from torch's global RNG, like every torchvision transform, so seeding covers it.
    """

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = float(torch.empty(1).uniform_(self.lo, self.hi))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma=({self.lo}, {self.hi}))"


def _rgb(img: Any) -> Any:
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def apply_seeded(transform: Callable[[Any], torch.Tensor], img: Any, seed: int) -> torch.Tensor:
    """Apply ``transform`` with torch's global RNG seeded by ``seed`` (torchvision draws from it).

    In a loader worker the global RNG belongs to the worker, so it is simply reseeded; in the main process it
    is forked, so training's own RNG stream is not disturbed.
    """
    gen = torch.random.default_generator  # CPU only: torch.manual_seed would also queue CUDA seeding (slow)
    if torch.utils.data.get_worker_info() is not None:
        gen.manual_seed(seed)
        return transform(img)
    state = gen.get_state()
    try:
        gen.manual_seed(seed)
        return transform(img)
    finally:
        gen.set_state(state)
