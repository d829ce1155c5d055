"""Stage-2 step alone on a GPU: samples/s, achieved TFLOP/s, MFU and peak memory of pisweep's training step.

The step is ``pisweep.train.stage2.contrastive_step``, the function the training loop calls (autocast, forward,
ClipLoss, backward, clipping at 3, fused AdamW, logit-scale clamp), fed batches already on the GPU so the data
pipeline is out of the picture (train_throughput.py measures the whole loop against open_clip_train). Its peer is the
machine itself: an 8192^3 bf16 matrix product measured in the same run gives the ceiling, and MFU is printed against
both that and the datasheet's dense bf16 peak.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward of the
model and loss (matrix products and attention; the optimizer's element-wise work is not counted, as is usual for MFU).

Usage (on a machine with a GPU, from the project root)::

    python3 benchmarks/step_mfu.py --model ViT-B-32 --batch 256,512
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity)
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05, "A10": 125.0}


def datasheet_peak(device_name: str) -> float | None:
    for key, peak in DATASHEET_BF16_TFLOPS.items():
        if key in device_name:
            return peak
    return None


def matmul_ceiling(n: int = 8192, reps: int = 10) -> float:
    """bf16 TFLOP/s of an n^3 matrix product on random data (mean of ``reps`` after 3 warm-ups)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def model_inputs(model, tokenizer, batch: int, device):
    import torch

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    texts = tokenizer([f"a photo of object number {i}" for i in range(batch)]).to(device)
    return images, texts


def flops_per_sample(model, loss_fn, images, texts, device, precision: str) -> float:
    """Forward + backward FLOPs of model and loss for this batch, divided by its size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pisweep.train.runtime import autocast

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, precision):
            image_f, text_f, scale = model(images, texts)
            loss = loss_fn(image_f, text_f, scale)
        loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return counter.get_total_flops() / images.shape[0]


def measure(name: str, batch: int, steps: int, warmup: int, precision: str) -> dict:
    import torch
    from open_clip.loss import ClipLoss

    from pisweep.models import create_model
    from pisweep.study.spec import OptimSpec
    from pisweep.train.optim import build_adamw
    from pisweep.train.runtime import setup_device
    from pisweep.train.stage2 import contrastive_step

    device = setup_device("cuda")
    torch.manual_seed(0)
    model, _, _, tokenizer = create_model(name, None, device="cpu")
    model = model.to(device)
    optimizer = build_adamw(model.named_parameters(), OptimSpec(warmup_steps=0))
    loss_fn = ClipLoss(cache_labels=True)
    images, texts = model_inputs(model, tokenizer, batch, device)
    flops = flops_per_sample(model, loss_fn, images, texts, device, precision)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        contrastive_step(model, model, loss_fn, optimizer, images, texts, device, precision, 3.0)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        loss, _ = contrastive_step(model, model, loss_fn, optimizer, images, texts, device, precision, 3.0)
    end.record()
    torch.cuda.synchronize()
    if not torch.isfinite(loss):
        raise SystemExit(f"non-finite loss at batch {batch}")
    step_s = start.elapsed_time(end) / 1000 / steps
    result = {"batch": batch, "step_ms": step_s * 1000, "samples_per_s": batch / step_s,
              "gflops_per_sample": flops / 1e9, "tflops": flops * batch / step_s / 1e12,
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    del model, optimizer
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", default="256,512", help="comma-separated per-GPU batch sizes")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", help="also write the numbers here")
    opts = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("step_mfu.py needs a GPU (torch.cuda.is_available() is False)")
    name = torch.cuda.get_device_name()
    sheet = datasheet_peak(name)
    t = time.perf_counter()
    ceiling = matmul_ceiling()
    print(f"{name}: bf16 8192^3 matmul {ceiling:.0f} TFLOP/s measured; datasheet dense bf16 "
          f"{sheet if sheet else 'unknown'} TFLOP/s; torch {torch.__version__}", flush=True)
    rows = []
    for batch in (int(b) for b in opts.batch.split(",")):
        r = measure(opts.model, batch, opts.steps, opts.warmup, opts.precision)
        r["mfu_vs_matmul"] = r["tflops"] / ceiling
        r["mfu_vs_datasheet"] = r["tflops"] / sheet if sheet else None
        rows.append(r)
        sheet_txt = f", MFU {r['mfu_vs_datasheet']:.1%} of datasheet" if sheet else ""
        print(f"{opts.model} {opts.precision} batch {batch}: {r['step_ms']:.1f} ms/step, "
              f"{r['samples_per_s']:.0f} samples/s, {r['gflops_per_sample']:.1f} GFLOP/sample (fwd+bwd), "
              f"{r['tflops']:.0f} TFLOP/s = {r['mfu_vs_matmul']:.1%} of the measured matmul ceiling{sheet_txt}, "
              f"peak memory {r['peak_mem_gib']:.1f} GiB", flush=True)
    print(f"({time.perf_counter() - t:.0f} s)")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"device": name, "matmul_tflops": ceiling, "datasheet_tflops": sheet,
                                               "options": vars(opts), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
