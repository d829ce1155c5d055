"""Speed of five epochs' worth of zero-shot evaluations: pisweep's warm Evaluator vs ``clip_benchmark eval``.

The same checkpoints (five "epochs" of one run), the same synthetic task folders (``pisweep.data.synth``, sizes
printed), the same batch size, fp32 without autocast, on the CPU, the same number of data-loader workers.

- pisweep: one process, one :class:`pisweep.eval.evaluator.Evaluator` (model built once, only the weights change),
  image cache on (cold at the start: epoch 1 builds it, epochs 2-5 read preprocessed pixels).
- CLIP_benchmark 1.6.2 (in ``.venv-peer``, see ``peer_env.sh``): its CLI as users run it. ``--peer-mode one-call``
  (default, its best normal usage): one ``clip_benchmark eval --dataset <all> --pretrained <all five>`` process,
  which loops over (checkpoint, dataset) and loads the model for each pair. ``per-checkpoint``: one such process
  per checkpoint, all datasets each (what one runs as each epoch's checkpoint lands). ``both`` runs both.

Start-up is reported apart from evaluation: start-up = process launch to "libraries imported" + building the model
+ loading the weights (pisweep: Evaluator() once, then load_weights per checkpoint; CLIP_benchmark: its load_clip
per (checkpoint, dataset)); evaluation = the rest of the process's wall time (data, forward passes, metrics,
result files, interpreter exit). Numbers: every metric of every (task, checkpoint) must be identical on both sides.
``--threads N`` sets OMP/MKL threads for both sides (steadier timings on a shared machine); ``--repeat R``
alternates the sides R times and reports the best run of each. Figures measured here: benchmarks/README.md.

Usage (project root; the peer environment must exist)::

    .venv/bin/python benchmarks/eval_throughput.py                       # tiny model
    .venv/bin/python benchmarks/eval_throughput.py --model ViT-B-32      # random weights, smaller sets
    .venv/bin/python benchmarks/eval_throughput.py --peer-mode both --json out.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
TINY = "pisweep-tiny"
CB_TASKS = ("imagenet1k", "vtab/cifar10", "vtab/pets", "renderedsst2", "flickr30k", "mscoco_captions")
# Per model: mean images per class, images per retrieval set (5 captions each), rendered image side.
DEFAULT_SIZES = {TINY: (100, 500, 64), "ViT-B-32": (2, 10, 224)}
# ViT-B-32 on 2 cores, 1 thread: ~0.12 s per image, ~0.06 s per prompt: imagenet1k (120 prompts), mscoco left out.
DEFAULT_TASKS = {TINY: CB_TASKS, "ViT-B-32": ("vtab/cifar10", "vtab/pets", "renderedsst2", "flickr30k")}


def _agreement_module():
    spec = importlib.util.spec_from_file_location("eval_agreement", Path(__file__).with_name("eval_agreement.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_agreement", module)
    spec.loader.exec_module(module)
    return module


# ================================================================================== data and checkpoints

def make_data(work: Path, per_class: int, retrieval_images: int, image_size: int, tasks: Sequence[str]):
    """Synthetic CLIP_benchmark-layout folders, in several shards where the sizes allow (with --workers N,
    CLIP_benchmark's webdataset loader needs at least N shards per task)."""
    from pisweep.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(seed=0, image_size=image_size, nights_triplets=30, nights_low_vote_rows=1,
                      train_scales={"tiny": 8}, min_shards=1, eval_examples_per_class=per_class,
                      eval_retrieval_images=retrieval_images,
                      eval_samples_per_shard=max(8, min(100, retrieval_images // 2, per_class)),
                      eval_tasks=list(tasks))
    return synthesize(work / "synth", cfg)


def make_checkpoints(work: Path, model_name: str, n: int) -> tuple[list[Path], Path | None]:
    """``n`` checkpoints of one "run": a random init, perturbed a little more at every epoch (seeded)."""
    import torch

    from pisweep.models import TINY_CONFIG, create_model, write_model_config
    from pisweep.train.checkpoint import save_weights

    out = work / "checkpoints"
    config = TINY_CONFIG if model_name == TINY else None
    paths = [out / f"epoch_{e}.pt" for e in range(1, n + 1)]
    cfg_path = out / f"{model_name}.json" if config else None
    if all(p.is_file() for p in paths):
        return paths, cfg_path
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, *_ = create_model(model_name, config)
    gen = torch.Generator().manual_seed(1)
    for path in paths:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * (0.01 * (float(p.std()) if p.numel() > 1 else 0.0)))
        save_weights(path, int(path.stem.split("_")[1]), model)
    write_model_config(out, model_name, config)
    return paths, cfg_path


# ================================================================================== the two sides

def run_pisweep(model_name: str, eval_root: Path, folders: Sequence[str], checkpoints: Sequence[Path],
                out: Path, batch_size: int, workers: int) -> dict[str, Any]:
    """pisweep in its own process (this file, ``pisweep-side``), timed like the peer."""
    timing = out / "pisweep-timing.json"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "pisweep-side", "--model", model_name,
           "--eval-root", str(eval_root), "--cache", str(out / "cache"), "--out", str(out / "results"),
           "--timing", str(timing), "--batch-size", str(batch_size), "--workers", str(workers),
           "--tasks", *folders, "--checkpoints", *[str(c) for c in checkpoints]]
    env = {**os.environ, "PISWEEP_T_LAUNCH": repr(time.time())}
    start = time.perf_counter()
    log = out / "pisweep.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pisweep side failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    t = json.loads(timing.read_text())
    startup = t["launch_to_imported_s"] + t["build_s"] + sum(t["load_weights_s"])
    return {"wall_s": wall, "startup_s": startup, "eval_s": wall - startup, "epochs_s": t["epoch_eval_s"],
            "detail": t}


def pisweep_side(argv: Sequence[str]) -> int:
    """The pisweep process: imports, one Evaluator, every checkpoint in turn; writes its timings."""
    p = argparse.ArgumentParser(prog="eval_throughput.py pisweep-side")
    p.add_argument("--model", required=True)
    p.add_argument("--eval-root", type=Path, required=True)
    p.add_argument("--cache", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (counted in start-up, as on the peer's side)

    from pisweep.eval import evaluator
    from pisweep.models import TINY_CONFIG

    t_imported = time.time()
    ev = evaluator.Evaluator(args.model, TINY_CONFIG if args.model == TINY else None, args.eval_root,
                          batch_size=args.batch_size, cache_dir=args.cache, device="cpu", amp=False,
                          num_workers=args.workers)
    build = time.time() - t_imported
    loads: list[float] = []
    load = ev.load_weights

    def timed_load(path):
        start = time.time()
        try:
            return load(path)
        finally:
            loads.append(time.time() - start)

    ev.load_weights = timed_load
    epochs = []
    for ckpt in args.checkpoints:
        start = time.time()
        results = ev.evaluate(ckpt, args.tasks, args.out / ckpt.stem)
        epochs.append(time.time() - start - loads[-1])
        bad = [f"{r.task}: {r.status} {r.reason}" for r in results if r.status != "done"]
        if bad:
            raise SystemExit("pisweep: " + "; ".join(bad))
    launch = float(os.environ.get("PISWEEP_T_LAUNCH", t_imported))
    args.timing.write_text(json.dumps({"launch_to_imported_s": t_imported - launch, "build_s": build,
                                       "load_weights_s": loads, "epoch_eval_s": epochs,
                                       "launch_to_end_s": time.time() - launch,
                                       "torch_threads": torch.get_num_threads()}))
    return 0


def run_peer(ea, model_name: str, cfg_path: Path | None, eval_root: Path, tasks: Sequence[str],
             checkpoints: Sequence[Path], out: Path, batch_size: int, workers: int, mode: str) -> dict[str, Any]:
    """``clip_benchmark eval`` once over everything (one-call) or once per checkpoint; timed per process."""
    sets = [ea.EvalSet(t, t, "retrieval" if t in ("flickr30k", "mscoco_captions") else "classification")
            for t in tasks]
    groups = [list(checkpoints)] if mode == "one-call" else [[c] for c in checkpoints]
    wall = startup = 0.0
    results: dict = {}
    for i, group in enumerate(groups):
        timing = out / f"timing-{i}.json"
        r = ea.run_clip_benchmark(group, sets, eval_root, out, batch_size, model=model_name, model_config=cfg_path,
                                  capture=False, num_workers=workers, timing=timing)
        t = json.loads(timing.read_text())
        wall += r["wall_s"]
        startup += t["launch_to_imported_s"] + sum(t["load_clip_s"])
        results.update(r["results"])
    return {"wall_s": wall, "startup_s": startup, "eval_s": wall - startup, "results": results,
            "processes": len(groups)}


# ================================================================================== comparison and report

def compare_numbers(pisweep_out: Path, peer_results: dict, folders: dict[str, str],
                    checkpoints: Sequence[Path]) -> tuple[int, int, float]:
    """(identical metric values, compared values, max |difference|) over every (task, checkpoint, metric)."""
    from pisweep.eval import registry

    same = total = 0
    worst = 0.0
    for cb_name, folder in folders.items():
        stem = registry.lookup(folder).file_stem
        for c in checkpoints:
            ours = json.loads((pisweep_out / c.stem / f"{stem}.json").read_text())["metrics"]
            for k, v in peer_results[(cb_name, c.name)].items():
                total += 1
                a, b = float(ours[k]), float(v)
                if a == b or (math.isnan(a) and math.isnan(b)):
                    same += 1
                else:
                    worst = max(worst, abs(a - b))
    return same, total, worst


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=TINY, help="pisweep-tiny (default) or an open_clip model name, e.g. ViT-B-32")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--per-class", type=int, help="mean images per class (default: by model)")
    p.add_argument("--retrieval-images", type=int, help="images per retrieval set (default: by model)")
    p.add_argument("--image-size", type=int, help="side of the rendered images (default: by model)")
    p.add_argument("--tasks", nargs="+", choices=CB_TASKS, help="CLIP_benchmark task names (default: by model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data-loader workers, both sides")
    p.add_argument("--threads", type=int, help="OMP/MKL threads, both sides (default: torch's, one per core)")
    p.add_argument("--peer-mode", choices=("one-call", "per-checkpoint", "both"), default="one-call")
    p.add_argument("--repeat", type=int, default=1, help="alternate the sides this many times; best of each is shown")
    p.add_argument("--work", type=Path, help="working folder (default: a fresh temp folder)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    ea = _agreement_module()
    if not ea.peer_python().is_file():
        print(f"no CLIP_benchmark peer at {ea.peer_python()}: run benchmarks/peer_env.sh", file=sys.stderr)
        return 2
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # inherited by both
    per_class, n_ret, size = DEFAULT_SIZES.get(args.model, DEFAULT_SIZES["ViT-B-32"])
    per_class, n_ret = args.per_class or per_class, args.retrieval_images or n_ret
    size = args.image_size or size
    tasks = args.tasks or list(DEFAULT_TASKS.get(args.model, DEFAULT_TASKS["ViT-B-32"]))
    work = args.work or Path(tempfile.mkdtemp(prefix="pisweep-throughput-"))
    layout = make_data(work, per_class, n_ret, size, tasks)
    folders = {t: layout.eval_tasks[t].name for t in tasks}
    checkpoints, cfg_path = make_checkpoints(work, args.model, args.epochs)
    sizes = _sizes(layout, tasks)

    import shutil
    modes = ("one-call", "per-checkpoint") if args.peer_mode == "both" else (args.peer_mode,)
    runs: dict[str, list[dict]] = {"pisweep": [], **{m: [] for m in modes}}
    checks: dict[str, tuple[int, int, float]] = {}
    for _ in range(args.repeat):
        ours_dir = work / "pisweep"
        shutil.rmtree(ours_dir, ignore_errors=True)  # cold cache and fresh results every time
        runs["pisweep"].append(run_pisweep(args.model, layout.eval_root, list(folders.values()), checkpoints,
                                           ours_dir, args.batch_size, args.workers))
        for mode in modes:
            shutil.rmtree(work / f"cb-{mode}", ignore_errors=True)
            peer = run_peer(ea, args.model, cfg_path, layout.eval_root, tasks, checkpoints, work / f"cb-{mode}",
                            args.batch_size, args.workers, mode)
            same, total, worst = compare_numbers(ours_dir / "results", peer.pop("results"), folders, checkpoints)
            if mode in checks:  # over the repeats: the fewest identical values, the largest difference
                same, worst = min(same, checks[mode][0]), max(worst, checks[mode][2])
            checks[mode] = (same, total, worst)
            runs[mode].append(peer)
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    ours = best["pisweep"]

    threads = args.threads or f"torch default ({os.cpu_count()})"
    print(f"model {args.model} | {args.epochs} checkpoints | batch {args.batch_size} | fp32, no autocast, CPU, "
          f"{os.cpu_count()} cores, threads {threads} | loader workers {args.workers} | images {size}x{size} | "
          f"best of {args.repeat} | work {work}")
    print("sets: " + "; ".join(f"{t} {s}" for t, s in sizes.items()))
    head = f"{'':<40} {'start-up s':>10} {'evaluation s':>12} {'total s':>8}   numbers"
    print(head)
    print("-" * len(head))
    print(f"{'pisweep (1 process, warm, image cache)':<40} {ours['startup_s']:>10.1f} {ours['eval_s']:>12.1f} "
          f"{ours['wall_s']:>8.1f}")
    report: dict[str, Any] = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
                              "workers": args.workers, "threads": args.threads, "image_size": size, "sets": sizes,
                              "repeat": args.repeat, "runs": runs, "checks": checks}
    ok = True
    for mode in modes:
        peer, (same, total, worst) = best[mode], checks[mode]
        ok &= same == total
        label = f"clip_benchmark eval, {mode} ({peer['processes']} proc.)"
        print(f"{label:<40} {peer['startup_s']:>10.1f} {peer['eval_s']:>12.1f} {peer['wall_s']:>8.1f}   "
              f"{same}/{total} identical" + ("" if same == total else f", max |diff| {worst:.2e}"))
    for mode in modes:
        peer = best[mode]
        print(f"pisweep speed-up vs {mode}: overall {peer['wall_s'] / ours['wall_s']:.2f}x, start-up "
              f"{peer['startup_s'] / ours['startup_s']:.2f}x, evaluation {peer['eval_s'] / ours['eval_s']:.2f}x")
    print("pisweep per-epoch evaluation s: " + ", ".join(f"{x:.1f}" for x in ours["epochs_s"])
          + " (epoch 1 builds the image cache)")
    if args.repeat > 1:
        for k, v in runs.items():
            print(f"all runs, {k}: total s " + ", ".join(f"{r['wall_s']:.1f}" for r in v))
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if ok else 1


def _sizes(layout, tasks: Sequence[str]) -> dict[str, str]:
    out = {}
    for t in tasks:
        folder = layout.eval_tasks[t]
        n = 0
        import tarfile
        for shard in sorted((folder / "test").glob("*.tar")):
            with tarfile.open(shard) as tar:
                n += sum(1 for m in tar if m.name.endswith((".cls", ".txt")))
        if (folder / "classnames.txt").is_file():
            c = len((folder / "classnames.txt").read_text().splitlines())
            tm = len((folder / "zeroshot_classification_templates.txt").read_text().splitlines())
            out[t] = f"{n} images, {c} classes x {tm} templates"
        else:
            out[t] = f"{n} images x 5 captions"
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["pisweep-side"]:
        sys.exit(pisweep_side(sys.argv[2:]))
    sys.exit(main())
