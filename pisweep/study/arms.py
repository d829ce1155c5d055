"""The arms of the grid (``grid.init``) and what each starts from. Pure: the one vocabulary every layer uses.

- ``random``: stage 2 from open_clip's seeded init.
- ``perceptual``: stage 2 from a vision tower trained on NIGHTS' human votes (stage 1).
- The specificity controls, each a stage-1 init job that hands on the epoch its seed's perceptual init hands on:
  ``shuffled`` (stage 1 on the votes permuted across triplets), ``pixel`` (stage 1 on votes from pixel distance:
  the same images, order and updates, judged by no one), ``norm_matched`` (no training: the random arm's vision
  init of the seed, each tensor rescaled to the norm of that seed's perceptual init's tensor).
- ``posthoc``: a random run's weights at a pretraining epoch, fine-tuned on NIGHTS (the paper's contrast).
"""
from __future__ import annotations

from typing import Literal

InitMethod = Literal["random", "perceptual", "shuffled", "pixel", "norm_matched", "posthoc"]
ARMS: tuple[str, ...] = ("random", "perceptual", "shuffled", "pixel", "norm_matched", "posthoc")  # report order

#: the controls of the perceptual init: each is an init job matched to its seed's perceptual init
CONTROLS: tuple[str, ...] = ("shuffled", "pixel", "norm_matched")
#: the arms whose stage 2 starts from an init job's vision tower (its init.pt)
INIT_ARMS: tuple[str, ...] = ("perceptual", *CONTROLS)
#: the init methods that train on NIGHTS (stage 1)
TRAINED_INITS: tuple[str, ...] = ("perceptual", "shuffled", "pixel")
#: the inits with a dose axis (grid.nights_fraction): trained on a share of NIGHTS' train triplets
DOSE_INITS: tuple[str, ...] = ("perceptual", "shuffled")
#: the arms that read NIGHTS (to train, or to be derived from what did)
POSTHOC = "posthoc"  # results at its source epochs only: compared there, never along a curve
NIGHTS_ARMS: tuple[str, ...] = (*INIT_ARMS, POSTHOC)


def arm_name(method: str, fraction: float = 1.0) -> str:
    """The arm a run belongs to: its init method, and the share of NIGHTS its init trained on when it is not all
    (``perceptual@0.25``)."""
    return method if fraction == 1.0 else f"{method}@{fraction:g}"


def arm_fraction(arm: str) -> tuple[str, float]:
    """(method, fraction) of an arm name (the inverse of :func:`arm_name`)."""
    method, _, fraction = arm.partition("@")
    return method, float(fraction) if fraction else 1.0


def arm_order(arm: str) -> tuple[int, float]:
    """The order arms are shown in: ARMS', each method's NIGHTS doses after it (largest first)."""
    method, fraction = arm_fraction(arm)
    return (ARMS.index(method) if method in ARMS else len(ARMS), -fraction)
