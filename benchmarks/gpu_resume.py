"""Preempt-and-resume on a GPU: the same samples in the same order, losses within a tolerance.

On the CPU the test suite proves a preempted run bitwise identical to an uninterrupted one
(tests/test_train_resume.py, tests/test_preempt_acceptance.py). On a GPU in bf16 the promise is weaker by design
(cuBLAS and atomics may reorder sums): this script trains the tiny model for two epochs on cuda with bf16 autocast and
loader workers, once uninterrupted and once stopped by the stop flag (as SIGUSR2 sets it) at two steps, one mid-epoch,
each time resumed in a fresh call from the resume state. It prints, step by step, the batch each run trained on
(a digest of its sample keys) and the loss, then whether every batch matched, the largest loss difference, and how
many weight tensors ended bitwise equal.

Usage (on a machine with a GPU, from the project root)::

    python3 benchmarks/gpu_resume.py --stops 7,23
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stops", default="7,23", help="steps after which the stop flag is raised (comma-separated)")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rtol", type=float, default=2e-2, help="largest relative loss difference accepted")
    p.add_argument("--device", default="cuda", help="cuda (the point of this script); cpu for a dry run")
    p.add_argument("--work", default=None)
    p.add_argument("--json")
    opts = p.parse_args(argv)

    import torch

    from pisweep.data.synth import synthesize
    from pisweep.data.synth_config import SynthConfig
    from pisweep.job.context import JobContext, Preempted
    from pisweep.models import TINY_CONFIG
    from pisweep.study.spec import DataSpec, GridSpec, ModelSpec, OptimSpec, ScaleData, Stage2Spec, Study, WandbSpec
    from pisweep.testing import StopAfter
    from pisweep.train import stage2

    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_resume.py needs a GPU (torch.cuda.is_available() is False)")
    work = Path(opts.work or tempfile.mkdtemp(prefix="pisweep-gpu-resume-"))
    size = int(TINY_CONFIG["vision_cfg"]["image_size"])
    cfg = SynthConfig(image_size=size, train_scales={"s": opts.samples}, samples_per_shard=128, min_shards=4,
                      nights_triplets=30, nights_low_vote_rows=1, eval_tasks=["vtab/cifar10"],
                      eval_examples_per_class=2, eval_retrieval_images=5)
    shards = synthesize(work / "data", cfg).train["s"]
    study = Study(name="gpu-resume", output_root=str(work / "out"),
                  data=DataSpec(train={"s": ScaleData(shards=shards.pattern, samples=opts.samples)}),
                  model=ModelSpec(name="pisweep-tiny", config=TINY_CONFIG),
                  stage2=Stage2Spec(global_batch_size=opts.batch, workers=opts.workers, precision="bf16",
                                    log_every_steps=4, checkpoint_every_steps=10 ** 6,
                                    optim=OptimSpec(lr=1e-3, warmup_steps=4)),
                  grid=GridSpec(scale=["s"]), wandb=WandbSpec(mode="disabled"))

    # What each step trained on: a digest of the batch tensors the loop receives (images after augmentation, and
    # token ids), and the loss as the loop flushes it. Neither hook changes what runs.
    current = ""
    step_batches: dict[str, dict[int, str]] = {}
    losses: dict[str, dict[int, float]] = {}
    original_step = stage2._Stage2._train_step
    original_flush = stage2._Stage2._flush

    def recording_step(self, images, texts):
        digest = hashlib.sha1(images.cpu().numpy().tobytes() + texts.cpu().numpy().tobytes()).hexdigest()[:12]
        step_batches.setdefault(current, {})[self.step + 1] = digest
        return original_step(self, images, texts)

    def recording_flush(self):
        for step, _, loss, _ in self.pending:
            losses.setdefault(current, {})[step] = float(loss)
        return original_flush(self)

    stage2._Stage2._train_step = recording_step
    stage2._Stage2._flush = recording_flush

    def train(ctx):
        stage2.run_stage2(ctx, study, init="random", init_weights=None, shards=shards.pattern,
                          samples=opts.samples, epochs=2, seed=0, eval_epochs=[1, 2], device=opts.device)

    for current in ("reference", "resumed"):
        folder = work / current
        if current == "resumed":
            for stop in (int(x) for x in opts.stops.split(",")):
                try:
                    train(StopAfter(uid=current, folder=folder, stop_at=stop))
                except Preempted as exc:
                    print(f"stopped at step {exc.step} ({exc.signal_name}); resuming in a fresh call", flush=True)
        train(JobContext(uid=current, folder=folder))

    ref, cut = losses["reference"], losses["resumed"]
    steps = sorted(ref)
    batches_ref, batches_cut = step_batches["reference"], step_batches["resumed"]
    same_batches = all(batches_ref.get(s) == batches_cut.get(s) for s in steps)
    rel = [abs(ref[s] - cut[s]) / max(abs(ref[s]), 1e-12) for s in steps]
    print(f"{'step':>5} {'batch (ref)':>14} {'batch (resumed)':>16} {'loss (ref)':>11} {'loss (resumed)':>15}")
    for s in steps:
        print(f"{s:>5} {batches_ref.get(s) or '':>14} {batches_cut.get(s) or '':>16} {ref[s]:11.6f} {cut[s]:15.6f}")
    wa = torch.load(work / "reference" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    wb = torch.load(work / "resumed" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    equal = sum(torch.equal(wa[k], wb[k]) for k in wa)
    max_w = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    ok = same_batches and steps == sorted(cut) and max(rel) <= opts.rtol
    where = f"{torch.cuda.get_device_name()} (bf16 autocast)" if opts.device == "cuda" else "cpu (fp32)"
    print(f"{where}, {opts.workers} loader workers, stops after steps {opts.stops}: "
          f"{len(steps)} steps, same batch at every step: {same_batches}; largest relative loss difference "
          f"{max(rel):.2e} (tolerance {opts.rtol:g}); final weights: {equal}/{len(wa)} tensors bitwise equal, "
          f"largest difference {max_w:.2e} -> {'PASS' if ok else 'FAIL'}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"steps": steps, "reference": ref, "resumed": cut,
                                               "batches_reference": batches_ref, "batches_resumed": batches_cut,
                                               "same_batches": same_batches,
                                               "max_rel_loss_diff": max(rel), "tensors_equal": equal,
                                               "tensors": len(wa), "max_weight_diff": max_w, "pass": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
