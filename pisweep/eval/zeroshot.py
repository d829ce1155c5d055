"""Zero-shot classification and retrieval with an open_clip model: the torch side of the suite.

The tensor operations follow CLIP_benchmark's (metrics/zeroshot_classification.py, zeroshot_retrieval.py)
one for one, in the same order and shapes, so that the logits and scores are the same numbers; the
metrics are then computed by :mod:`pisweep.eval.metrics` from compact per-example results. Default is
fp32 without autocast (DataComp evaluates classification with amp=False); ``amp=True`` enables
torch.autocast as CLIP_benchmark's default does. Measured against clip-benchmark 1.6.2 on the same
checkpoint and folders (CPU, --no_amp): classifier and logits bit-identical, every per-example hit and
every aggregate identical, ties included.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pisweep.errors import EvalError
from pisweep.eval import metrics, registry
from pisweep.eval.datasets import TaskData

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _autocast(device: str | torch.device, amp: bool):
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=True) if amp else contextlib.nullcontext()


def _noop(stage: str, done: int, total: int) -> None:
    return None


def torch_topk(block: np.ndarray, k: int) -> np.ndarray:
    """CLIP_benchmark's top-k: torch.topk (largest, sorted) on the CPU, whose order among ties we keep."""
    return torch.from_numpy(block).topk(k, dim=1, largest=True, sorted=True)[1].numpy()


class CachedTokenizer:
    """A tokenizer that remembers its answers, keyed by the exact list of texts.

    Why: a warm :class:`~pisweep.eval.evaluator.Evaluator` tokenizes the same prompts and captions, in the same
    lists, at every checkpoint, and tokens depend only on the text. Python BPE costs about a fifth of a tiny
    model's epoch. The model gets equal token tensors (a copy each time), so every output is unchanged.
    Memory is bounded by ``max_bytes`` of tokens (then the memo starts afresh).
    """

    def __init__(self, tokenizer: Callable, max_bytes: int = 1 << 30):
        self.tokenizer, self.max_bytes = tokenizer, int(max_bytes)
        self._memo: dict[tuple[str, ...], torch.Tensor] = {}
        self._bytes = 0

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        key = (texts,) if isinstance(texts, str) else tuple(texts)
        tokens = self._memo.get(key)
        if tokens is None:
            tokens = self.tokenizer(texts)
            size = tokens.numel() * tokens.element_size()
            if self._bytes + size > self.max_bytes:
                self._memo.clear()
                self._bytes = 0
            self._memo[key] = tokens
            self._bytes += size
        return tokens.clone()

    def __getattr__(self, name: str):  # context_length, vocab_size... of the wrapped tokenizer
        if name.startswith("__") or name in ("tokenizer", "_memo"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Per class, every template formatted with it (``template.format(c=name)``, as CLIP_benchmark)."""
    out = []
    for name in classnames:
        try:
            out.append([t.format(c=name) for t in templates])
        except (KeyError, IndexError, ValueError) as e:
            raise EvalError(f"bad zero-shot template (expects only '{{c}}'): {e!r} in {list(templates)[:3]}...") from e
    return out


@torch.no_grad()
def build_classifier(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                     templates: Sequence[str], device: str | torch.device = "cpu", amp: bool = False,
                     text_batch_size: int | None = None, progress: Progress = _noop) -> torch.Tensor:
    """(D, C) zero-shot classifier: per class, the re-normalized mean of its normalized prompt embeddings.

    By default one text forward pass per class, as CLIP_benchmark does: the classifier is then bit-identical
    to its own. ``text_batch_size`` lets several whole classes share a pass (faster; the embeddings may
    then differ in the last bits, since matrix kernels depend on the batch shape).
    """
    per_class = prompts(classnames, templates)
    n_t = len(templates)
    if n_t == 0 or not per_class:
        raise EvalError("zero-shot classifier needs at least one class name and one template")
    step = max(1, (text_batch_size or 0) // n_t)
    columns = []
    for s in range(0, len(per_class), step):
        chunk = per_class[s:s + step]
        tokens = tokenizer([t for texts in chunk for t in texts]).to(device)
        with _autocast(device, amp):
            emb = model.encode_text(tokens)
            for i in range(len(chunk)):
                col = F.normalize(emb[i * n_t:(i + 1) * n_t], dim=-1).mean(dim=0)
                col /= col.norm()
                columns.append(col)
        progress("classifier", min(s + step, len(per_class)), len(per_class))
    classifier = torch.stack(columns, dim=1).to(device)
    if not torch.isfinite(classifier).all():
        raise EvalError("text embeddings contain NaN or inf (a diverged checkpoint?)")
    return classifier


@torch.no_grad()
def classify(model: torch.nn.Module, classifier: torch.Tensor, batches: Iterable[torch.Tensor],
             targets: np.ndarray, device: str | torch.device = "cpu", amp: bool = False,
             progress: Progress = _noop) -> dict[str, np.ndarray]:
    """Per-example classification results (see metrics.classification_per_example), batch by batch."""
    n_classes, total, done, parts = classifier.shape[1], len(targets), 0, []
    for images in batches:
        with _autocast(device, amp):
            features = F.normalize(model.encode_image(images.to(device)), dim=-1)
            logits = 100. * features @ classifier
        b = len(images)
        parts.append(metrics.classification_per_example(logits.float().cpu().numpy(), targets[done:done + b],
                                                        n_classes, topk=torch_topk))
        done += b
        progress("images", done, total)
    if done != total:
        raise EvalError(f"{done} images but {total} labels")
    return metrics.concat_classification(parts)


@torch.no_grad()
def retrieve(model: torch.nn.Module, tokenizer: Callable, batches: Iterable[torch.Tensor],
             captions: Sequence[Sequence[str]], device: str | torch.device = "cpu", amp: bool = False,
             progress: Progress = _noop) -> dict[str, np.ndarray]:
    """Per-example retrieval hits: images and their captions embedded batch by batch, then all-vs-all.

    Scores and top-k are computed on the CPU in fp32 (CLIP_benchmark takes the top-k on the eval device and,
    under amp, in half precision; both only matter for exactly tied scores).
    """
    image_embs, text_embs, text_image_index = [], [], []
    done, total = 0, len(captions)
    for images in batches:
        b = len(images)
        caps = captions[done:done + b]
        texts = [t for cs in caps for t in cs]
        text_image_index.extend(done + j for j, cs in enumerate(caps) for _ in cs)
        with _autocast(device, amp):
            image_embs.append(F.normalize(model.encode_image(images.to(device)), dim=-1).float().cpu())
            if texts:
                tokens = tokenizer(texts).to(device)
                text_embs.append(F.normalize(model.encode_text(tokens), dim=-1).float().cpu())
        done += b
        progress("images", done, total)
    if done != total:
        raise EvalError(f"{done} images but {total} caption lists")
    if not text_embs:
        raise EvalError("retrieval task has no captions")
    scores = torch.cat(text_embs) @ torch.cat(image_embs).t()
    return metrics.retrieval_per_example(scores.numpy(), np.asarray(text_image_index, dtype=np.int64),
                                         registry.RECALL_K, topk=torch_topk)


def evaluate_task(model: torch.nn.Module, tokenizer: Callable, data: TaskData, key: str,
                  device: str | torch.device = "cpu", amp: bool = False, batch_size: int = 64,
                  num_workers: int = 0, progress: Progress = _noop,
                  text_batch_size: int | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, per-example results) of one task folder; the classifier is built here, once per call."""
    batches = data.image_batches(batch_size, num_workers)
    if data.kind == registry.RETRIEVAL:
        per_example = retrieve(model, tokenizer, batches, data.captions, device, amp, progress)
        return metrics.aggregate_retrieval(per_example), per_example
    classnames, templates = class_prompts(data, key)
    classifier = build_classifier(model, tokenizer, classnames, templates, device, amp, text_batch_size, progress)
    if data.labels is not None and len(data.labels) and int(data.labels.max()) >= len(classnames):
        raise EvalError(f"{data.info.folder}: label {int(data.labels.max())} but only {len(classnames)} class names")
    per_example = classify(model, classifier, batches, data.labels, device, amp, progress)
    return metrics.aggregate_classification(per_example), per_example


def class_prompts(data: TaskData, key: str) -> tuple[list[str], list[str]]:
    """(class names, templates): the folder's own files win, then pisweep's built-ins for the task key."""
    classnames = data.info.classnames or registry.builtin_classnames(key)
    if not classnames:
        raise EvalError(f"{data.info.folder}: no classnames.txt and no built-in class names for task {key!r}")
    return classnames, data.info.templates or registry.builtin_templates(key)
