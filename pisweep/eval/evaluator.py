"""Evaluate checkpoints on the zero-shot suite; write CLIP_benchmark-style JSON and per-example .npz files.

A task's outcome is one of: done, missing_data (its folder or a shard is absent: the path is given and
the other tasks still run) or failed (malformed data, non-finite outputs: the reason names the file).
:class:`Evaluator` stays warm across the checkpoints of one run: the model is built once (only weights
change) and task folders, indexes and the image cache are reused.
"""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pisweep.atomic import atomic_open, atomic_write_json
from pisweep.errors import DataError, EvalError
from pisweep.eval import registry
from pisweep.eval.datasets import MissingData, TaskData, load_task
from pisweep.eval.imagecache import DEFAULT_CACHE_MAX_BYTES, ImageCache
from pisweep.eval.zeroshot import CachedTokenizer, evaluate_task

DONE, MISSING, FAILED = "done", "missing_data", "failed"
#: progress(task key, stage, done, total); stage: "load", "cache", "classifier", "images" or a final status.
ProgressFn = Callable[[str, str, int, int], None]


@dataclass
class TaskResult:
    task: str
    status: str  # "done" | "missing_data" | "failed"
    reason: str | None = None
    path: str | None = None  # the task folder (done/failed) or the missing path
    metrics: dict[str, float] = field(default_factory=dict)
    main_metric: str | None = None
    main_value: float | None = None
    per_example_path: str | None = None
    json_path: str | None = None
    n_examples: int | None = None
    seconds: float | None = None  # wall time, informational; never written into result files


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz that is byte-identical for identical arrays (np.savez stamps the current time)."""
    with atomic_open(Path(path)) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def read_per_example(path: Path) -> dict[str, np.ndarray]:
    """Per-example arrays of one task (for the report's paired bootstrap): see metrics.aggregate_*."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EvalError(f"cannot read per-example results {path}: {e}") from e


class Evaluator:
    """Zero-shot suite for one model architecture; ``evaluate`` takes any number of its checkpoints."""

    def __init__(self, model_name: str, model_config: dict | None, eval_root: Path | None,
                 overrides: Mapping[str, str] | None = None, batch_size: int = 64, cache_dir: Path | None = None,
                 cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES, device: str | None = None, amp: bool = False,
                 num_workers: int = 0, text_batch_size: int | None = None, progress: ProgressFn | None = None):
        import torch

        from pisweep.models import create_model  # imports open_clip: only when an evaluator is built

        self.model_name, self.model_config = model_name, model_config
        self.eval_root = Path(eval_root) if eval_root is not None else None
        self.overrides = dict(overrides or {})
        self.batch_size, self.num_workers, self.amp = int(batch_size), int(num_workers), bool(amp)
        self.text_batch_size = text_batch_size  # None: one text pass per class, as CLIP_benchmark
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.progress = progress or (lambda *a: None)
        self.cache = ImageCache(Path(cache_dir), cache_max_bytes) if cache_dir is not None else None
        self.model, _, self.preprocess, tokenizer = create_model(model_name, model_config, None, "cpu")
        self.tokenizer = CachedTokenizer(tokenizer)  # the same texts at every checkpoint: tokenized once
        self.model.to(self.device).eval()
        self._tasks: dict[str, tuple[registry.Task, TaskData | MissingData, Path]] = {}

    # -- tasks

    def _load(self, name: str) -> tuple[registry.Task | None, TaskData | MissingData, Path]:
        if name in self._tasks:
            return self._tasks[name]
        task = registry.lookup(name)
        key = task.key if task else name
        folder = self.folder_of(key)
        self.progress(key, "load", 0, 1)
        if folder is None:
            return task, MissingData(Path(key), f"no eval data root configured for task {key!r} (set the eval "
                                                "root, or an absolute folder override)"), Path(key)
        data = load_task(folder, self.preprocess, self.cache, self.num_workers,
                         lambda stage, done, total: self.progress(key, stage, done, total))
        if isinstance(data, MissingData):  # not remembered: looked for again next time
            return task, data, folder
        if task is None:
            task = registry.folder_task(name, data.kind)
        if data.kind != task.kind:
            raise EvalError(f"{folder}: dataset type {data.kind!r} but task {task.key!r} is {task.kind}")
        self._tasks[name] = (task, data, folder)
        return task, data, folder

    def folder_of(self, key: str) -> Path | None:
        """The folder task ``key`` is read from (None: no eval root, and no absolute override)."""
        if self.eval_root is not None:
            return registry.resolve_folder(self.eval_root, key, self.overrides)
        override = Path(self.overrides[key]).expanduser() if key in self.overrides else None
        return override if override is not None and override.is_absolute() else None

    # -- checkpoints

    def load_weights(self, weights: Path) -> None:
        """Load a ``{"epoch", "state_dict"}`` (or bare state dict) file into the warm model."""
        import open_clip

        weights = Path(weights)
        if not weights.is_file():
            raise EvalError(f"checkpoint not found: {weights}")
        try:
            open_clip.load_checkpoint(self.model, str(weights), strict=True)
        except Exception as e:  # torch/pickle/shape errors all mean "bad checkpoint for this model"
            raise EvalError(f"cannot load checkpoint {weights} into {self.model_name}: {e}") from e
        self.model.eval()

    def evaluate(self, weights_path: Path, tasks: Sequence[str], out_dir: Path | None = None) -> list[TaskResult]:
        """Evaluate one checkpoint on ``tasks`` (DataComp keys or folder names under the eval root)."""
        self.load_weights(weights_path)
        return [self._evaluate_one(name, Path(weights_path), out_dir) for name in tasks]

    def _evaluate_one(self, name: str, weights: Path, out_dir: Path | None) -> TaskResult:
        start = time.monotonic()
        if name in registry.PSEUDO_TASKS:
            return TaskResult(name, FAILED, f"{name} is not a zero-shot task (stage 1 reports it)")
        known = registry.lookup(name)
        key = known.key if known else name
        folder = self.folder_of(key)
        try:
            task, data, folder = self._load(name)
            if isinstance(data, MissingData):
                self.progress(key, MISSING, 0, 0)
                return TaskResult(key, MISSING, data.reason, str(data.path) if folder else None)
            report = lambda stage, done, total: self.progress(key, stage, done, total)  # noqa: E731
            values, per_example = evaluate_task(self.model, self.tokenizer, data, task.key, self.device, self.amp,
                                                self.batch_size, self.num_workers, report, self.text_batch_size)
        except (EvalError, DataError) as e:
            self.progress(key, FAILED, 0, 0)
            return TaskResult(key, FAILED, str(e), str(folder) if folder else None)
        result = TaskResult(task.key, DONE, None, str(folder), values, task.main_metric, values[task.main_metric],
                            n_examples=data.n)
        if out_dir is not None:
            self._write(Path(out_dir), task, data, weights, values, per_example, result)
        result.seconds = time.monotonic() - start
        self.progress(task.key, DONE, data.n, data.n)
        return result

    def _write(self, out_dir: Path, task: registry.Task, data: TaskData, weights: Path, values: dict,
               per_example: dict, result: TaskResult) -> None:
        npz = out_dir / f"{task.file_stem}.npz"
        js = out_dir / f"{task.file_stem}.json"
        write_npz(npz, {**per_example, "suite_version": np.array(registry.SUITE_VERSION)})
        dataset = f"wds/{task.cb_name}" if task.cb_name else f"wds/{task.key}"
        atomic_write_json(js, {
            "dataset": dataset, "model": self.model_name, "pretrained": str(weights),
            "task": "zeroshot_retrieval" if task.kind == registry.RETRIEVAL else "zeroshot_classification",
            "metrics": values, "language": "en",
            "pisweep": {"task": task.key, "main_metric": task.main_metric, "main_value": values[task.main_metric],
                        "suite_version": registry.SUITE_VERSION, "n_examples": data.n, "amp": self.amp,
                        "per_example": npz.name, "folder": str(data.info.folder)},
        })
        result.per_example_path, result.json_path = str(npz), str(js)


def evaluate_checkpoint(weights: Path, model_name: str, model_config: dict | None, eval_root: Path | None,
                        tasks: list[str], overrides: Mapping[str, str] | None = None, out_dir: Path | None = None,
                        batch_size: int = 64, cache_dir: Path | None = None,
                        progress: ProgressFn | None = None, **kwargs: Any) -> list[TaskResult]:
    """One-shot form of :class:`Evaluator` (extra keyword arguments go to it: device, amp, num_workers...)."""
    ev = Evaluator(model_name, model_config, eval_root, overrides, batch_size, cache_dir, progress=progress, **kwargs)
    return ev.evaluate(Path(weights), tasks, out_dir)


def available_folders(eval_root: Path) -> list[str]:
    """Folder names under the eval root that look like task folders (for ``pisweep eval --tasks``)."""
    root = Path(eval_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if registry.shards_listing(p).is_file())
