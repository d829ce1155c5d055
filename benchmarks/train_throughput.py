"""Training throughput: pisweep's stage-2 loop against open_clip_train's own loop, on equal terms.

Both loops train the same model on the same webdataset shards with the same global batch, precision, thread count,
loader workers, learning-rate warm-up and logging cadence; each run is a fresh process, and the two loops alternate
several times in one invocation (ABBA order, so drift in the machine's speed does not favour one side). Each side
skips the same number of warm-up steps and then times the same number of steps.

Where the time goes is measured the same way in both processes, by hooks that do not change what runs:
- data: time in the loader iterator's ``__next__`` (``torch.utils.data.DataLoader.__iter__`` is wrapped; open_clip's
  ``wds.WebLoader`` iterates a torch DataLoader too);
- optimizer: ``optimizer.step()``, through torch's global optimizer step hooks (which also mark the step ends);
- logging: pisweep's log flush (``_Stage2._flush``: losses to the host, wandb/log calls); open_clip_train's
  ``logging`` calls;
- forward/backward: the rest of the step (forward, loss, backward, gradient clipping, schedule, logit clamp).
On a GPU (``--precision bf16``) the measured window starts and ends with a device synchronization, so samples/s is
exact, and the peak GPU memory and MFU are printed too (FLOPs counted by step_mfu.py's counter over one forward and
backward); the phases are not synchronized there and only say where the host waits.

The peer is open_clip_train 3.x as shipped in open_clip_torch (``python -m open_clip_train.main``, its own argument
parser, data pipeline and loop), run in pisweep's venv (it needs pandas, which is there). webdataset 1.0.2 breaks
its loader at the end of each shard (KeyError 'fname', open_clip#935): the peer process applies the known fix,
``tar_file_expander(eof_value=None)``, before calling its ``main``; nothing else is changed. pisweep's side runs
``pisweep.runner.run.run_job_file`` on a stage-2 job file, the entry point every executor uses.

Usage (from the project root)::

    .venv/bin/python benchmarks/train_throughput.py                          # tiny model, batch 64
    .venv/bin/python benchmarks/train_throughput.py --model ViT-B-32 --batch 32 --warmup 2 --steps 6
    python3 benchmarks/train_throughput.py --model ViT-B-32 --precision bf16 --batch 256 --workers 12   # a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("data", "forward/backward", "optimizer", "logging")
TINY = "pisweep-tiny"


# -- the two sides (run in child processes) ------------------------------------------------------------------------
class Recorder:
    """Step ends and per-phase times, counted only inside the measured window (steps warmup+1 .. warmup+steps)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.done = 0
        self.measuring = False
        self.t0 = self.t1 = None
        self.totals = {"data": 0.0, "optimizer": 0.0, "logging": 0.0}
        self._opt_start = 0.0
        self.peak_mem: int | None = None

    def add(self, phase: str, seconds: float) -> None:
        if self.measuring:
            self.totals[phase] += seconds

    def step_pre(self, *_args) -> None:
        self._opt_start = time.perf_counter()

    def step_post(self, *_args) -> None:
        now = time.perf_counter()
        self.add("optimizer", now - self._opt_start)
        self.done += 1
        cuda = self.done in (self.warmup, self.warmup + self.steps) and _cuda_in_use()
        if cuda:
            import torch

            torch.cuda.synchronize()  # the window holds exactly the GPU work of its steps
            now = time.perf_counter()
        if self.done == self.warmup:
            self.measuring, self.t0 = True, now
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        elif self.done == self.warmup + self.steps:
            self.measuring, self.t1 = False, now
            if cuda:
                self.peak_mem = torch.cuda.max_memory_allocated()

    def result(self, batch: int) -> dict[str, Any]:
        if self.t1 is None:
            raise SystemExit(f"only {self.done} steps ran; {self.warmup + self.steps} were needed")
        wall = self.t1 - self.t0
        phases = dict(self.totals)
        phases["forward/backward"] = wall - sum(self.totals.values())
        return {"samples_per_s": self.steps * batch / wall, "wall_s": wall, "steps": self.steps,
                "phases_s": {k: phases[k] for k in PHASES}, "peak_mem_bytes": self.peak_mem}


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def install_hooks(rec: Recorder) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(rec.step_pre)
    register_optimizer_step_post_hook(rec.step_post)
    original_iter = torch.utils.data.DataLoader.__iter__

    class TimedIterator:
        def __init__(self, inner):
            self._inner = inner

        def __iter__(self):
            return self

        def __next__(self):
            t = time.perf_counter()
            try:
                return next(self._inner)
            finally:
                rec.add("data", time.perf_counter() - t)

        def __len__(self):
            return len(self._inner)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    torch.utils.data.DataLoader.__iter__ = lambda self: TimedIterator(original_iter(self))


def timed(rec: Recorder, phase: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            rec.add(phase, time.perf_counter() - t)
    return wrapper


def child_pisweep(opts: argparse.Namespace) -> dict[str, Any]:
    import torch

    rec = Recorder(opts.warmup, opts.steps)
    install_hooks(rec)
    torch.set_num_threads(opts.threads)
    from pisweep.runner.run import run_job_file
    from pisweep.train import stage2

    stage2._Stage2._flush = timed(rec, "logging", stage2._Stage2._flush)
    code = run_job_file(Path(opts.job))
    if code != 0:
        raise SystemExit(f"pisweep's job ended with code {code}")
    return rec.result(opts.batch)


def child_peer(opts: argparse.Namespace, peer_args: list[str]) -> dict[str, Any]:
    import logging

    import torch

    rec = Recorder(opts.warmup, opts.steps)
    install_hooks(rec)
    torch.set_num_threads(opts.threads)
    if opts.model_config:
        import open_clip

        open_clip.add_model_config(opts.model_config)
    import functools

    from open_clip_train import data as peer_data

    # webdataset >= 0.2.96 ends each shard with {} which open_clip_train 3.x cannot group (open_clip#935)
    peer_data.tar_file_expander = functools.partial(peer_data.tar_file_expander, eof_value=None)
    logging.Logger._log = timed(rec, "logging", logging.Logger._log)
    from open_clip_train.main import main as peer_main

    peer_main(peer_args)
    return rec.result(opts.batch)


# -- the driver ----------------------------------------------------------------------------------------------------
def make_data(work: Path, image_size: int, samples: int):
    from pisweep.data.synth import synthesize
    from pisweep.data.synth_config import SynthConfig

    cfg = SynthConfig(image_size=image_size, train_scales={"bench": samples}, samples_per_shard=256, min_shards=4,
                      nights_triplets=30, nights_low_vote_rows=1, eval_tasks=["vtab/cifar10"],
                      eval_examples_per_class=2, eval_retrieval_images=5)
    return synthesize(work / f"data-{image_size}px-{samples}", cfg).train["bench"]


def model_setup(opts: argparse.Namespace, work: Path) -> tuple[str, dict | None, Path | None, int]:
    """(model name, inline config, folder of its open_clip JSON for the peer, image size)."""
    if opts.model != "tiny":
        return opts.model, None, None, 224
    from pisweep.models import TINY_CONFIG

    folder = work / "model-configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    return TINY, TINY_CONFIG, folder, int(TINY_CONFIG["vision_cfg"]["image_size"])


def pisweep_job(opts, work: Path, shards, name: str, config: dict | None, samples: int) -> Path:
    from pisweep.job.contract import JobFile
    from pisweep.study.spec import DataSpec, GridSpec, ModelSpec, OptimSpec, ScaleData, Stage2Spec, Study, WandbSpec

    study = Study(name="bench", output_root=str(work / "pisweep-out"),
                  data=DataSpec(train={"bench": ScaleData(shards=shards.pattern, samples=samples)}),
                  model=ModelSpec(name=name, config=config),
                  stage2=Stage2Spec(global_batch_size=opts.batch, workers=opts.workers, precision=opts.precision,
                                    augment=False, log_every_steps=opts.log_every, checkpoint_every_steps=10 ** 9,
                                    grad_clip=3.0, optim=OptimSpec(lr=5e-4, warmup_steps=opts.lr_warmup)),
                  grid=GridSpec(scale=["bench"]), wandb=WandbSpec(mode="disabled"))
    job = JobFile("train", "bench", str(work / "pisweep-run"), study.model_dump(mode="json"),
                  {"init": "random", "init_weights": None, "shards": shards.pattern, "samples": samples,
                   "epochs": 1, "seed": 0, "eval_epochs": [1]})
    return job.write(work / "pisweep-job.json")


def peer_argv(opts, work: Path, shards, name: str, samples: int, run: int) -> list[str]:
    return ["--train-data", shards.pattern, "--train-num-samples", str(samples), "--dataset-type", "webdataset",
            "--model", name, "--batch-size", str(opts.batch), "--epochs", "1",
            "--precision", "amp_bf16" if opts.precision == "bf16" else "fp32",
            "--workers", str(opts.workers), "--lr", "5e-4", "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.98",
            "--eps", "1e-8", "--warmup", str(opts.lr_warmup), "--grad-clip-norm", "3",
            "--log-every-n-steps", str(opts.log_every), "--seed", "0", "--report-to", "",
            "--logs", str(work / "peer-logs"), "--name", f"run-{run}"]


def run_child(cmd: list[str], env: dict[str, str], out: Path, log: Path) -> dict[str, Any]:
    with open(log, "w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=out.parent).returncode
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {code}); log {log}:\n{tail}")
    return json.loads(out.read_text())


def drive(opts: argparse.Namespace) -> int:
    import shutil

    work = Path(opts.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    name, config, config_dir, size = model_setup(opts, work)
    samples = (opts.warmup + opts.steps + 1) * opts.batch  # one spare step: epoch-end work stays out of the window
    shards = make_data(work, size, samples)
    job = pisweep_job(opts, work, shards, name, config, samples)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "PISWEEP_THREADS": str(opts.threads),
           "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    common = ["--threads", str(opts.threads), "--warmup", str(opts.warmup), "--steps", str(opts.steps),
              "--batch", str(opts.batch)]
    me = [sys.executable, str(Path(__file__).resolve())]
    # absolute but not resolved: a venv's python is a symlink, and resolving it would leave the venv
    peer_me = [str(Path(opts.peer_python).absolute()) if opts.peer_python else sys.executable,
               str(Path(__file__).resolve())]
    results: dict[str, list[dict]] = {"pisweep": [], "open_clip_train": []}
    commands: dict[str, str] = {}
    for rep in range(opts.reps):
        order = ["pisweep", "open_clip_train"] if rep % 2 == 0 else ["open_clip_train", "pisweep"]
        for side in order:
            out = work / f"{side}-{rep}.json"
            out.unlink(missing_ok=True)
            shutil.rmtree(work / "pisweep-run", ignore_errors=True)
            shutil.rmtree(work / "peer-logs", ignore_errors=True)
            if side == "pisweep":
                cmd = [*me, "_pisweep", *common, "--json", str(out), "--job", str(job)]
            else:
                cmd = [*peer_me, "_peer", *common, "--json", str(out),
                       *(["--model-config", str(config_dir)] if config_dir else []), "--",
                       *peer_argv(opts, work, shards, name, samples, rep)]
            commands.setdefault(side, shlex.join(cmd))
            res = run_child(cmd, env, out, work / f"{side}-{rep}.log")
            os.sync()  # the checkpoint a run wrote at its end is on disk before the next run starts
            results[side].append(res)
            print(f"  run {rep + 1}/{opts.reps} {side:>15}: {res['samples_per_s']:8.2f} samples/s", flush=True)
    shutil.rmtree(work / "pisweep-run", ignore_errors=True)  # the last runs' checkpoints (GBs for ViT-B-32)
    shutil.rmtree(work / "peer-logs", ignore_errors=True)
    flops = gpu_flops(opts, name, config) if opts.precision == "bf16" else None
    report(opts, commands, results, samples, flops)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "commands": commands, "runs": results,
                                               "gpu": flops}, indent=2))
    return 0


def gpu_flops(opts, name: str, config: dict | None) -> dict[str, Any] | None:
    """FLOPs per sample (forward + backward, counted) and the GPU's bf16 ceilings, for MFU; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    import step_mfu
    from open_clip.loss import ClipLoss

    from pisweep.models import create_model

    model, _, _, tokenizer = create_model(name, config, device="cpu")
    dev = torch.device("cuda")
    model = model.to(dev)
    images, texts = step_mfu.model_inputs(model, tokenizer, 8, dev)
    per_sample = step_mfu.flops_per_sample(model, ClipLoss(), images, texts, dev, "bf16")
    device_name = torch.cuda.get_device_name()
    del model
    torch.cuda.empty_cache()
    return {"flops_per_sample": per_sample, "device": device_name, "matmul_tflops": step_mfu.matmul_ceiling(),
            "datasheet_tflops": step_mfu.datasheet_peak(device_name)}


def report(opts, commands: dict[str, str], results: dict[str, list[dict]], samples: int,
           gpu: dict[str, Any] | None = None) -> None:
    """Both commands, every run, and the best and median run of each side with their ratios. On a shared machine
    the best run is the one least disturbed by other work (the usual practice for timings, as in timeit); the
    medians are printed too. The phases are those of each side's best run."""
    print(f"\nmodel {opts.model}, global batch {opts.batch}, {opts.precision}, {opts.threads} threads, "
          f"{opts.workers} loader worker(s), lr warm-up {opts.lr_warmup} steps, {opts.warmup} warm-up + {opts.steps} timed steps, "
          f"{opts.reps} runs each, alternating")
    for side, cmd in commands.items():
        print(f"{side} command: {cmd}")
    best = {side: max(runs, key=lambda r: r["samples_per_s"]) for side, runs in results.items()}
    med = {side: statistics.median(r["samples_per_s"] for r in runs) for side, runs in results.items()}
    for side, runs in results.items():
        rates = ", ".join(f"{r['samples_per_s']:.2f}" for r in runs)
        print(f"{side:>15}: best {best[side]['samples_per_s']:8.2f} samples/s, median {med[side]:8.2f} "
              f"(runs: {rates})")
    ratio_best = best["pisweep"]["samples_per_s"] / best["open_clip_train"]["samples_per_s"]
    print(f"{'ratio':>15}: {ratio_best:.3f}x best/best, {med['pisweep'] / med['open_clip_train']:.3f}x "
          f"median/median (pisweep / open_clip_train)")
    print("where the time goes, per step (each side's best run):")
    print(f"{'':>15}  " + "  ".join(f"{p:>18}" for p in PHASES))
    for side, r in best.items():
        cells = [f"{r['phases_s'][p] / r['steps'] * 1000:9.1f} ms {r['phases_s'][p] / r['wall_s']:5.1%}"
                 for p in PHASES]
        print(f"{side:>15}  " + "  ".join(f"{c:>18}" for c in cells))
    if gpu:
        print(f"GPU {gpu['device']}: {gpu['flops_per_sample'] / 1e9:.1f} GFLOP per sample (forward + backward); bf16 "
              f"ceiling {gpu['matmul_tflops']:.0f} TFLOP/s measured (8192^3 matmul), "
              f"{gpu['datasheet_tflops'] or 'unknown'} datasheet")
        for side, r in best.items():
            achieved = r["samples_per_s"] * gpu["flops_per_sample"] / 1e12
            sheet = f", {achieved / gpu['datasheet_tflops']:.1%} of datasheet" if gpu["datasheet_tflops"] else ""
            mem = r.get("peak_mem_bytes")
            print(f"{side:>15}: {achieved:6.1f} TFLOP/s, MFU {achieved / gpu['matmul_tflops']:.1%} of measured"
                  f"{sheet}; peak GPU memory {mem / 2 ** 30 if mem else float('nan'):.1f} GiB")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_pisweep", "_peer"):
        side, rest = argv[0], argv[1:]
        peer_args: list[str] = []
        if "--" in rest:
            i = rest.index("--")
            rest, peer_args = rest[:i], rest[i + 1:]
        p = argparse.ArgumentParser()
        for flag in ("--threads", "--warmup", "--steps", "--batch"):
            p.add_argument(flag, type=int, required=True)
        p.add_argument("--json", required=True)
        p.add_argument("--job")
        p.add_argument("--model-config")
        opts = p.parse_args(rest)
        result = child_pisweep(opts) if side == "_pisweep" else child_peer(opts, peer_args)
        Path(opts.json).write_text(json.dumps(result))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (pisweep's TINY_CONFIG) or an open_clip name")
    p.add_argument("--batch", type=int, default=64, help="global batch (one process on each side)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast on the GPU (open_clip_train's amp_bf16); fp32 on the CPU")
    p.add_argument("--warmup", type=int, default=5, help="steps run before the timed ones")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--lr-warmup", type=int, default=10)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--reps", type=int, default=3, help="runs of each loop, alternating")
    p.add_argument("--work", default="/tmp/pisweep-train-throughput")
    p.add_argument("--json", help="also write every run's numbers here")
    p.add_argument("--peer-python", help="python that runs open_clip_train (default: this one; e.g. "
                                         ".venv-peer/bin/python from benchmarks/peer_env.sh)")
    return drive(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
