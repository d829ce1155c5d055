"""What several test files share: small real webdataset shards, a tiny stage-2 study, the pause hook's environment.
(Fixtures live in conftest.py; this module holds plain functions, imported as ``helpers``.)"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pisweep.models import TINY_CONFIG
from pisweep.study.spec import DataSpec, GridSpec, ModelSpec, OptimSpec, ScaleData, Stage2Spec, Study, WandbSpec

NAME = "pisweep-tiny"
HOOKS = Path(__file__).resolve().parent / "hooks"


def make_shards(folder: Path, sizes: list[int]) -> str:
    folder.mkdir(parents=True)
    r = np.random.default_rng(0)
    for s, n in enumerate(sizes):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in range(n):
                buf = io.BytesIO()
                Image.fromarray(r.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"caption {j % 5}".encode())):
                    info = tarfile.TarInfo(f"{s:05d}{j:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "sizes.json").write_text(json.dumps({f"{s:05d}.tar": n for s, n in enumerate(sizes)}))
    return f"{folder}/{{00000..{len(sizes) - 1:05d}}}.tar"


def study(pattern: str, workers: int = 0, every: int | None = None, accumulation: int = 1, **optim) -> Study:
    root = Path(pattern).parent.parent / "out"
    return Study(name="t", output_root=str(root),
                 data=DataSpec(train={"s": ScaleData(shards=pattern, samples=40)}),
                 model=ModelSpec(name=NAME, config=TINY_CONFIG),
                 stage2=Stage2Spec(global_batch_size=8, workers=workers, log_every_steps=2,
                                   checkpoint_every_steps=every, accumulation_steps=accumulation,
                                   optim=OptimSpec(**{"warmup_steps": 2, **optim})),
                 grid=GridSpec(scale=["s"]), wandb=WandbSpec(mode="disabled"))


def pause_env(steps: str | int) -> dict[str, str]:
    """Environment for a process a test starts: its job contexts wait at ``steps`` until asked to stop, rank 0
    touching ``paused-<step>`` in the job folder (tests/hooks/sitecustomize.py, pisweep.testing.install_pause)."""
    path = os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PISWEEP_TEST_PAUSE_AT": str(steps), "PYTHONPATH": path}


def pause_setup(steps: str | int) -> list[str]:
    """The same as lines of a SLURM job's setup."""
    return [f"export {k}={v}" for k, v in pause_env(steps).items()]


class Pace:
    """Bounds for waits on real processes, scaled from what this machine measured in the same test instead of a
    fixed wall-clock limit (a loaded CI machine is slow everywhere, not at one step): before anything is measured a
    wait may take ``first_s``; afterwards ``factor`` x the slowest measured stretch, at least ``floor_s``."""

    def __init__(self, floor_s: float = 120.0, factor: float = 4.0, first_s: float = 480.0):
        self.floor_s, self.factor, self.first_s = floor_s, factor, first_s
        self.reference: float | None = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        """Begin a stretch to measure (say, from starting a job until it reaches a step)."""
        self._t0 = time.monotonic()

    def measured(self) -> float:
        """End the stretch begun by :meth:`start`; it scales every later bound."""
        took = time.monotonic() - self._t0
        self.reference = max(self.reference or 0.0, took)
        return took

    def bound(self) -> float:
        return self.first_s if self.reference is None else max(self.floor_s, self.factor * self.reference)
