"""Agreement of pisweep's zero-shot evaluator with CLIP_benchmark 1.6.2, on a checkpoint trained well above chance.

What it checks (issue 4): on the same checkpoint, the same task folders, fp32 without autocast on both sides and
the same batch size, the per-example predictions are equal except at exact ties, and every aggregate agrees within
1e-6. Agreement at chance proves little, so the tiny model is first trained for a short while (contrastive, on
procedurally drawn images and captions of :mod:`pisweep.data.world`) until it is far above chance on every task.
The tasks cover a classification task with fewer than 5 classes (acc5 is NaN there), a task whose main metric is
mean per-class recall (class sizes unequal, so it differs from acc1), retrieval with 5 captions per image
(duplicate captions give exact ties) and, here, a task with a duplicated class name (exact ties in every row).

How: CLIP_benchmark runs as its users run it, ``clip_benchmark eval`` (its CLI, all datasets in one call) in its
own environment (``benchmarks/peer_env.sh`` makes ``.venv-peer``). This file is also the small wrapper that the
peer python runs (``eval_agreement.py peer ...``): it registers the custom model config with
``open_clip.add_model_config`` (CLIP_benchmark then finds it), optionally records what CLIP_benchmark's own
functions return per example (``run_classification``'s logits and targets; ``batchify``'s per-query recalls) and
how long its ``load_clip`` calls take, then calls ``clip_benchmark.cli.main()``. Nothing is changed in what it
computes: every hook passes the original return value through.

Usage (from the project root, after ``benchmarks/peer_env.sh``)::

    .venv/bin/python benchmarks/eval_agreement.py                 # larger sets, prints a table; exit 1 on disagreement
    .venv/bin/python benchmarks/eval_agreement.py --steps 300 --per-class 60 --retrieval-images 200 --batch-size 32

``tests/test_eval_agreement.py`` imports this file and runs the same check at a small size.
Only the standard library is imported at module level: the peer side must not need pisweep.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
MODEL = "pisweep-tiny"
RECALL_K = (1, 5, 10)
TOL = 1e-6


def peer_python() -> Path:
    """The peer environment's python (env PISWEEP_PEER_PYTHON overrides ``<root>/.venv-peer/bin/python``)."""
    return Path(os.environ.get("PISWEEP_PEER_PYTHON") or ROOT / ".venv-peer" / "bin" / "python")


# ===================================================================================== eval folders

@dataclass(frozen=True)
class EvalSet:
    """One task folder, named as CLIP_benchmark names it (``wds/<cb_name>``) and as pisweep names it (``key``)."""

    cb_name: str  # e.g. "vtab/pets"; the folder is wds_<cb_name with / -> ->
    key: str  # pisweep task: a suite key (DataComp) or, for ad-hoc folders, the folder name
    kind: str  # "classification" | "retrieval"
    classes: tuple[dict, ...] = ()  # per class: world.sample_scene kwargs
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()  # relative class sizes
    ext: str = "png"
    stream: int = 40  # random stream of the world (training uses stream 1)
    note: str = ""

    @property
    def folder(self) -> str:
        return "wds_" + self.cb_name.replace("/", "-")

    @property
    def chance(self) -> float:
        """Chance level of the main metric (acc1 / mean per-class recall: 1/C); retrieval: set by n_images."""
        return 1.0 / len(self.classnames) if self.kind == "classification" else math.nan


_COLOURS4 = ("red", "green", "blue", "yellow")
_COLOURS6 = ("red", "green", "blue", "yellow", "purple", "orange")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def eval_sets(full: bool) -> list[EvalSet]:
    """The tasks compared; ``full`` adds a many-class task with a duplicated class name (exact ties)."""
    sets = [
        EvalSet("colours4", "wds_colours4", "classification", tuple({"colour": c} for c in _COLOURS4), _COLOURS4,
                ("a photo of a {c} shape.", "a {c} object.", "something {c}."), ext="png", stream=41,
                note="4 classes: acc5 is NaN"),
        # two objects per image, the class is the first one's colour: hard enough that classes differ in recall
        EvalSet("vtab/pets", "vtab/pets", "classification", tuple({"colour": c, "n_objects": 2} for c in _COLOURS6),
                _COLOURS6, ("a photo of a {c} shape.", "something {c}.", "a {c} object."),
                (2.0, 1.0, 0.5, 1.5, 0.6, 1.0), ext="jpg", stream=42,
                note="main metric mean_per_class_recall; unequal classes"),
        EvalSet("flickr30k", "retrieval/flickr_1k_test_image_text_retrieval", "retrieval", ext="jpg", stream=43,
                note="5 captions per image"),
    ]
    if full:
        names = [f"{c} {s}" for s in _SHAPES for c in _COLOURS4]
        classes = tuple({"shape": s, "colour": c} for s in _SHAPES for c in _COLOURS4)
        names[1] = names[0]  # a duplicated class name (as ImageNet's "missile"): identical columns, exact ties
        sets.append(EvalSet("imagenet1k", "imagenet1k", "classification", classes, tuple(names),
                            ("a photo of a {c}.", "a picture of a {c}.", "a drawing of a {c}."), ext="webp",
                            stream=44, note="24 classes, one name duplicated: exact ties"))
        sets.append(EvalSet("mscoco_captions", "retrieval/mscoco_2014_5k_test_image_text_retrieval", "retrieval",
                            ext="png", stream=45, note="5 captions per image"))
    return sets


def write_eval_sets(root: Path, sets: Sequence[EvalSet], per_class: int, retrieval_images: int,
                    image_size: int = 64, shards: int = 2, seed: int = 0) -> None:
    """Write each set in CLIP_benchmark's webdataset layout under ``root`` (deterministic bytes)."""
    import io
    import tarfile

    import numpy as np

    from pisweep.data import world

    def encode(img, ext: str) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext],
                 **({"quality": 90} if ext != "png" else {}))
        return buf.getvalue()

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
        tar.addfile(info, io.BytesIO(data))

    for s in sets:
        folder = Path(root) / s.folder
        (folder / "test").mkdir(parents=True, exist_ok=True)
        if s.kind == "retrieval":
            (folder / "dataset_type.txt").write_text("retrieval\n")
            n, labels = retrieval_images, None
        else:
            (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in s.classnames))
            (folder / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in s.templates))
            weights = s.weights or (1.0,) * len(s.classes)
            labels = [c for c, w in enumerate(weights) for _ in range(max(2, round(w * per_class)))]
            labels = [labels[i] for i in np.random.default_rng([seed, s.stream]).permutation(len(labels))]
            n = len(labels)
        (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
        per = math.ceil(n / shards)
        for sh in range(shards):
            with tarfile.open(folder / "test" / f"{sh}.tar", "w") as tar:
                for i in range(sh * per, min(n, (sh + 1) * per)):
                    rng = world.rng_for(seed, s.stream, i)
                    if labels is None:
                        scene = world.sample_scene(rng)
                        picks = rng.permutation(len(world.CAPTION_TEMPLATES))[:5]
                        add(tar, f"s{i:06d}.txt", "\n".join(world.caption(scene, int(t)) for t in picks).encode())
                    else:
                        scene = world.sample_scene(rng, **s.classes[labels[i]])
                        add(tar, f"s{i:06d}.cls", str(labels[i]).encode())
                    add(tar, f"s{i:06d}.{s.ext}", encode(world.render(scene, image_size), s.ext))


# ===================================================================================== the checkpoint

def train_checkpoint(out_dir: Path, steps: int = 150, batch_size: int = 64, lr: float = 2e-3, pool: int = 1024,
                     seed: int = 0) -> Path:
    """Train the tiny model briefly (open_clip's ClipLoss, AdamW, warm-up + cosine) and save ``epoch_1.pt``.

    Images and captions are drawn from the world's training stream (colour, shape and texture are named in
    every caption), rendered once into a pool and preprocessed by the model's eval transform. The initial
    weights go to ``epoch_0.pt``; the config ``pisweep-tiny.json`` beside them is what the peer registers.
    """
    import open_clip
    import torch

    from pisweep.data import world
    from pisweep.models import TINY_CONFIG, create_model, write_model_config
    from pisweep.train.checkpoint import save_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, _, preprocess, tokenizer = create_model(MODEL, TINY_CONFIG)
    images, captions = [], []
    for i in range(pool):
        rng = world.rng_for(seed, 1, i)
        scene = world.sample_scene(rng)
        captions.append(world.caption(scene, int(rng.integers(len(world.CAPTION_TEMPLATES)))))
        images.append(preprocess(world.render(scene, 64)))
    x_all, t_all = torch.stack(images), tokenizer(captions)
    save_weights(out_dir / "epoch_0.pt", 0, model)  # the initial weights: pisweep's warm-up checkpoint
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 10)
    model.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, pool, (batch_size,), generator=gen)
        image_features, text_features, logit_scale = model(x_all[idx], t_all[idx])
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = out_dir / "epoch_1.pt"
    save_weights(path, 1, model)
    write_model_config(out_dir, MODEL, TINY_CONFIG)
    return path


# ===================================================================================== the two sides

def run_clip_benchmark(checkpoints: Sequence[Path], sets: Sequence[EvalSet], eval_root: Path, out_dir: Path,
                       batch_size: int, model: str = MODEL, model_config: Path | None = None,
                       capture: bool = True, num_workers: int = 0, timing: Path | None = None,
                       python: Path | None = None) -> dict[str, Any]:
    """One ``clip_benchmark eval`` process over all (checkpoint, dataset) pairs, as its CLI loops over them.

    Returns ``{"wall_s", "results": {(cb_name, ckpt name): metrics}, "captured": {...: arrays}}``;
    raises RuntimeError (with the log's tail) if the process fails.
    """
    import numpy as np

    python = Path(python or peer_python())
    if not python.is_file():
        raise FileNotFoundError(f"no CLIP_benchmark peer python at {python} (run benchmarks/peer_env.sh)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = [str(python), str(Path(__file__).resolve()), "peer"]
    if model_config is not None:
        wrapper += ["--config", str(model_config)]
    if capture:
        wrapper += ["--capture", str(out_dir / "capture")]
    if timing is not None:
        wrapper += ["--timing", str(timing)]
    cmd = wrapper + ["--", "eval", "--dataset", *[f"wds/{s.cb_name}" for s in sets],
                     "--dataset_root", str(Path(eval_root) / "wds_{dataset_cleaned}"),
                     "--model", model, "--pretrained", *[str(c) for c in checkpoints],
                     "--no_amp", "--batch_size", str(batch_size), "--num_workers", str(num_workers),
                     "--recall_k", *[str(k) for k in RECALL_K],
                     "--output", str(out_dir / "{dataset}__{pretrained}.json")]
    log = out_dir / "clip_benchmark.log"
    env = {**os.environ, "PISWEEP_T_LAUNCH": repr(time.time())}
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=out_dir, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"clip_benchmark failed (exit {proc.returncode}); log {log}:\n{tail}")
    results, captured = {}, {}
    for s in sets:
        slug = s.cb_name.replace("/", "_")
        for c in checkpoints:
            results[(s.cb_name, Path(c).name)] = json.loads((out_dir / f"{slug}__{Path(c).name}.json").read_text())[
                "metrics"]
            if capture:
                with np.load(out_dir / "capture" / f"{_capture_name(f'wds/{s.cb_name}', str(c))}.npz") as z:
                    captured[(s.cb_name, Path(c).name)] = {k: z[k] for k in z.files}
    return {"wall_s": wall, "results": results, "captured": captured, "log": log}


def run_pisweep(checkpoint: Path, sets: Sequence[EvalSet], eval_root: Path, out_dir: Path, batch_size: int,
                cache_dir: Path | None, warm_up: Path | None = None) -> dict[str, tuple[dict, dict]]:
    """pisweep's Evaluator on one checkpoint: {cb_name: (metrics, per-example arrays)} (fp32, no autocast).

    With ``warm_up``, the same Evaluator first evaluates that checkpoint, as in a run's earlier epoch: the
    compared evaluation then reads the image cache and the remembered tokens, as a warm evaluator does.
    """
    from pisweep.eval import evaluator
    from pisweep.models import TINY_CONFIG

    ev = evaluator.Evaluator(MODEL, TINY_CONFIG, Path(eval_root), batch_size=batch_size, cache_dir=cache_dir,
                          device="cpu", amp=False)
    if warm_up is not None:
        ev.evaluate(Path(warm_up), [s.key for s in sets], Path(out_dir) / "warm-up")
    results = ev.evaluate(Path(checkpoint), [s.key for s in sets], Path(out_dir))
    out = {}
    for s, r in zip(sets, results):
        if r.status != "done":
            raise RuntimeError(f"pisweep: task {r.task} {r.status}: {r.reason}")
        out[s.cb_name] = (r.metrics, evaluator.read_per_example(Path(r.per_example_path)))
    return out


# ===================================================================================== comparison

@dataclass
class Agreement:
    """Agreement of one task: aggregates and per-example predictions (mismatches outside exact ties = 0)."""

    task: str
    kind: str
    n: int  # examples (retrieval: texts + images)
    main_metric: str
    ours: float
    theirs: float
    max_abs_diff: float  # over all aggregates (NaN == NaN counts as equal)
    per_example_compared: int
    mismatches: int  # per-example decisions that differ
    mismatches_at_ties: int  # ... of which at an exact tie of the decisive scores
    tied: int  # queries with an exact tie at a decision boundary
    scores_bitwise: bool | None  # pisweep's logits / score matrix bit-identical to the peer's (None: not compared)
    chance: float = math.nan  # main metric at chance: 1/classes, or 1/images for retrieval R@1
    note: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _tied_at(scores, k: int):
    """Rows whose k-th and (k+1)-th largest scores are exactly equal: top-k membership there is arbitrary."""
    import numpy as np

    if scores.shape[1] <= k:
        return np.zeros(scores.shape[0], bool)
    part = -np.sort(-scores, axis=1)
    return part[:, k - 1] == part[:, k]


def compare(s: EvalSet, main_metric: str, ours: tuple[dict, dict], theirs_metrics: dict,
            captured: dict, our_scores=None) -> Agreement:
    """Compare pisweep's metrics and per-example arrays with CLIP_benchmark's (JSON + captured arrays).

    ``our_scores``: pisweep's own logits / score matrix, to report whether they are bit-identical to the peer's.
    """
    import numpy as np

    metrics, per = ours
    problems: list[str] = []
    diffs = []
    for k, v in theirs_metrics.items():
        if k not in metrics:
            problems.append(f"metric {k} missing on pisweep's side")
            continue
        a, b = float(metrics[k]), float(v)
        if math.isnan(a) and math.isnan(b):
            diffs.append(0.0)
        elif math.isnan(a) or math.isnan(b):
            problems.append(f"{k}: {a} vs {b}")
            diffs.append(math.inf)
        else:
            diffs.append(abs(a - b))
            if abs(a - b) > TOL:
                problems.append(f"{k}: pisweep {a!r} vs CLIP_benchmark {b!r}")
    mismatches = at_ties = tied = compared = 0
    if s.kind == "classification":
        logits, target = captured["logits"], captured["target"]
        n = len(target)
        if not np.array_equal(per["target"].astype(np.int64), target.astype(np.int64)):
            problems.append("targets differ (order or labels)")
        checks = [("pred", per["pred"].astype(np.int64) == captured["argmax"].astype(np.int64), _tied_at(logits, 1)),
                  ("top1", per["top1"] == (captured["topk"][:, 0] == target), _tied_at(logits, 1))]
        if logits.shape[1] >= 5:
            checks.append(("top5", per["top5"] == (captured["topk"] == target[:, None]).any(1), _tied_at(logits, 5)))
        any_tie = np.zeros(n, bool)
        for name, equal, ties in checks:
            compared += n
            mismatches += int((~equal).sum())
            at_ties += int((~equal & ties).sum())
            any_tie |= ties
            if (~equal & ~ties).any():
                problems.append(f"{name}: {int((~equal & ~ties).sum())} examples differ without a tie")
        tied = int(any_tie.sum())
        total = n
    else:
        scores = captured["scores"]  # (n_texts, n_images)
        n_texts, n_images = scores.shape
        tii = per["text_image_index"].astype(np.int64)
        if len(tii) != n_texts or len(per["text_hits"]) != n_images:
            problems.append(f"shapes differ: {len(tii)}x{len(per['text_hits'])} vs {n_texts}x{n_images}")
        any_t, any_i = np.zeros(n_texts, bool), np.zeros(n_images, bool)
        for j, k in enumerate(RECALL_K):
            for hits, cb, sc, any_tie, what in ((per["image_hits"][:, j], captured[f"image@{k}"] > 0, scores, any_t,
                                                 "text->image"),
                                                (per["text_hits"][:, j], captured[f"text@{k}"] > 0, scores.T, any_i,
                                                 "image->text")):
                ties = _tied_at(sc, k)
                equal = hits == cb
                compared += len(equal)
                mismatches += int((~equal).sum())
                at_ties += int((~equal & ties).sum())
                any_tie |= ties
                if (~equal & ~ties).any():
                    problems.append(f"{what} R@{k}: {int((~equal & ~ties).sum())} queries differ without a tie")
        tied = int(any_t.sum() + any_i.sum())
        total = n_texts + n_images
    bitwise = None
    if our_scores is not None:
        theirs_scores = captured["logits"] if s.kind == "classification" else captured["scores"]
        bitwise = bool(np.array_equal(np.asarray(our_scores), theirs_scores))
    if main_metric == "mean_recall@1":  # DataComp's, not in CLIP_benchmark's output: from its two R@1
        theirs_main = 0.5 * (theirs_metrics["text_retrieval_recall@1"] + theirs_metrics["image_retrieval_recall@1"])
    else:
        theirs_main = theirs_metrics[main_metric]
    chance = 1.0 / captured["logits"].shape[1] if s.kind == "classification" else 1.0 / captured["scores"].shape[1]
    return Agreement(s.cb_name, s.kind, total, main_metric, float(metrics[main_metric]), float(theirs_main),
                     max(diffs) if diffs else math.nan, compared, mismatches, at_ties, tied, bitwise, chance, s.note,
                     problems)


def raw_scores(checkpoint: Path, s: EvalSet, eval_root: Path, batch_size: int):
    """pisweep's own logits / score matrix for one set (to report whether they are bit-identical to the peer's)."""
    import torch
    import torch.nn.functional as F

    from pisweep.eval import datasets, zeroshot
    from pisweep.models import TINY_CONFIG, create_model

    model, _, preprocess, tokenizer = create_model(MODEL, TINY_CONFIG, checkpoint)
    model.eval()
    data = datasets.load_task(Path(eval_root) / s.folder, preprocess)
    with torch.no_grad():
        if s.kind == "classification":
            names, templates = zeroshot.class_prompts(data, s.key)
            clf = zeroshot.build_classifier(model, tokenizer, names, templates)
            return torch.cat([100. * F.normalize(model.encode_image(x), dim=-1) @ clf
                              for x in data.image_batches(batch_size)]).numpy()
        images, texts, done = [], [], 0
        for x in data.image_batches(batch_size):
            caps = [t for cs in data.captions[done:done + len(x)] for t in cs]
            images.append(F.normalize(model.encode_image(x), dim=-1))
            texts.append(F.normalize(model.encode_text(tokenizer(caps)), dim=-1))
            done += len(x)
        return (torch.cat(texts) @ torch.cat(images).t()).numpy()


def check_agreement(work: Path, *, steps: int, per_class: int, retrieval_images: int, batch_size: int,
                    full: bool, cache: bool = True, bitwise: bool = True,
                    checkpoint: Path | None = None) -> tuple[list[Agreement], dict[str, float]]:
    """Build data (and a checkpoint unless given), run both sides, compare. Returns (rows, timings)."""
    from pisweep.eval import registry

    work = Path(work)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sets = eval_sets(full)
    eval_root = work / "eval"
    if not eval_root.is_dir():
        write_eval_sets(eval_root, sets, per_class, retrieval_images)
    timings["data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if checkpoint is None:
        checkpoint = train_checkpoint(work / "ckpt", steps=steps)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    peer = run_clip_benchmark([checkpoint], sets, eval_root, work / "cb", batch_size,
                              model_config=Path(checkpoint).parent / f"{MODEL}.json")
    timings["clip_benchmark_s"] = time.perf_counter() - t
    t = time.perf_counter()
    warm_up = Path(checkpoint).with_name("epoch_0.pt")
    ours = run_pisweep(checkpoint, sets, eval_root, work / "ours", batch_size, work / "cache" if cache else None,
                       warm_up if warm_up.is_file() else None)
    timings["pisweep_s"] = time.perf_counter() - t
    rows = []
    for s in sets:
        ck = Path(checkpoint).name
        raw = raw_scores(checkpoint, s, eval_root, batch_size) if bitwise else None
        task = registry.lookup(s.key)
        main = task.main_metric if task else ("acc1" if s.kind == "classification" else "mean_recall@1")
        rows.append(compare(s, main, ours[s.cb_name], peer["results"][(s.cb_name, ck)],
                            peer["captured"][(s.cb_name, ck)], raw))
    return rows, timings


def format_table(rows: Sequence[Agreement]) -> str:
    """One line per task. n: examples (retrieval: texts + images, each a query); per-example: decisions compared
    (classification: argmax, top-1 and top-5 hit per example; retrieval: a hit per query and k in 1, 5, 10)."""
    head = (f"{'task':<16} {'kind':<14} {'n':>5} {'main metric':<21} {'chance':>6} {'pisweep':>8} {'CLIP_bm':>8} "
            f"{'max|Δ|':>7} {'decisions':>9} {'differ':>6} {'at ties':>7} {'tied':>5} {'bitwise':>7}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.task:<16} {r.kind:<14} {r.n:>5} {r.main_metric:<21} {r.chance:>6.3f} {r.ours:>8.4f} "
                     f"{r.theirs:>8.4f} {r.max_abs_diff:>7.0e} {r.per_example_compared:>9} {r.mismatches:>6} "
                     f"{r.mismatches_at_ties:>7} {r.tied:>5} {str(r.scores_bitwise):>7}  {r.note}")
        lines += [f"    PROBLEM: {p}" for p in r.problems]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a fresh temp folder)")
    p.add_argument("--steps", type=int, default=300, help="training steps of the tiny model")
    p.add_argument("--per-class", type=int, default=60, help="mean images per class")
    p.add_argument("--retrieval-images", type=int, default=200, help="images per retrieval set (5 captions each)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-cache", action="store_true", help="pisweep decodes every image (no image cache)")
    args = p.parse_args(argv)
    import tempfile
    work = args.work or Path(tempfile.mkdtemp(prefix="pisweep-agreement-"))
    rows, timings = check_agreement(work, steps=args.steps, per_class=args.per_class,
                                    retrieval_images=args.retrieval_images, batch_size=args.batch_size, full=True,
                                    cache=not args.no_cache)
    print(f"pisweep vs CLIP_benchmark 1.6.2 | tiny model trained {args.steps} steps | batch {args.batch_size} | "
          f"fp32, no autocast, CPU | image cache {'off' if args.no_cache else 'on'} | work {work}")
    print(format_table(rows))
    print("decisions: argmax, top-1 and top-5 hits per example; retrieval hits per query and k (1, 5, 10). "
          "tied: queries with an exact tie at a decision boundary. bitwise: logits / score matrices bit-identical.")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    ok = all(r.ok for r in rows)
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


# ===================================================================================== peer side (in .venv-peer)

def _capture_name(dataset: str, pretrained: str) -> str:
    import hashlib
    return dataset.replace("/", "_") + "__" + hashlib.sha256(pretrained.encode()).hexdigest()[:12]


def peer_main(argv: Sequence[str]) -> int:
    """Run ``clip_benchmark`` with a model config registered; record per-example outputs and load times.

    ``peer [--config JSON]... [--capture DIR] [--timing FILE] -- <clip_benchmark arguments>``
    """
    t_enter = time.time()
    p = argparse.ArgumentParser(prog="eval_agreement.py peer")
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--capture", type=Path)
    p.add_argument("--timing", type=Path)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    import numpy as np
    import open_clip
    import torch

    for cfg in args.config:
        open_clip.add_model_config(cfg)
    import clip_benchmark.cli as cli
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    t_imported = time.time()
    loads: list[float] = []
    original_load = cli.load_clip

    def load_clip(*a, **kw):
        start = time.time()
        try:
            return original_load(*a, **kw)
        finally:
            loads.append(time.time() - start)

    cli.load_clip = load_clip
    if args.capture is not None:
        args.capture.mkdir(parents=True, exist_ok=True)
        current: dict[str, Any] = {}
        original_run, original_rc, original_batchify = cli.run, zsc.run_classification, zsr.batchify

        def run(a):
            current.clear()
            result = original_run(a)
            arrays = {}
            if "logits" in current:
                logits, target = current["logits"], current["target"]
                k = 5 if logits.shape[1] >= 5 else 1  # as CLIP_benchmark's accuracy(): one topk with max(topk)
                arrays = {"logits": logits.numpy(), "target": target.numpy(), "argmax": logits.argmax(axis=1).numpy(),
                          "topk": logits.topk(k, 1, True, True)[1].numpy(), "classifier": current["classifier"].numpy()}
            elif "batchify" in current:
                outs = current["batchify"]  # per k: image retrieval (per text), then text retrieval (per image)
                arrays = {"scores": current["scores"].numpy()}
                for i, k in enumerate(a.recall_k):
                    arrays[f"image@{k}"] = outs[2 * i].numpy()
                    arrays[f"text@{k}"] = outs[2 * i + 1].numpy()
            np.savez(args.capture / f"{_capture_name(a.dataset, a.pretrained)}.npz", **arrays)
            return result

        def run_classification(model, classifier, dataloader, device, amp=True):
            logits, target = original_rc(model, classifier, dataloader, device, amp=amp)
            current.update(logits=logits, target=target, classifier=classifier.detach().cpu())
            return logits, target

        def batchify(func, X, Y, batch_size, device, *a, **kw):
            result = original_batchify(func, X, Y, batch_size, device, *a, **kw)
            current.setdefault("scores", X)  # the first call gets texts_emb @ images_emb.T
            current.setdefault("batchify", []).append(result)
            return result

        cli.run, zsc.run_classification, zsr.batchify = run, run_classification, batchify
    sys.argv = ["clip_benchmark", *rest]
    code = cli.main()
    t_end = time.time()
    if args.timing is not None:
        launch = float(os.environ.get("PISWEEP_T_LAUNCH", t_enter))
        args.timing.write_text(json.dumps({"launch_to_imported_s": t_imported - launch, "load_clip_s": loads,
                                           "launch_to_end_s": t_end - launch,
                                           "torch_threads": torch.get_num_threads()}))
    return int(code or 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["peer"]:
        sys.exit(peer_main(sys.argv[2:]))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
