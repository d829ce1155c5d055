#!/usr/bin/env bash
# Everything only a GPU can show, in one call of a few minutes (run by hand on a GPU machine, from the project root):
#   1. step_mfu.py: pisweep's stage-2 step alone, ViT-B-32 bf16: samples/s, TFLOP/s, MFU, peak memory;
#   2. train_throughput.py: the whole loop against open_clip_train's, ViT-B-32 bf16, same shards and loader workers;
#   3. gpu_resume.py: preempted twice and resumed on cuda: same batches, losses within tolerance.
# Results go to $OUT (default /tmp/pisweep-gpu-check). If a folder .whl/ of wheels is present (packages the
# machine lacks), they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pisweep-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
"$PY" -c "import torch, torchvision, open_clip, pisweep; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__, 'cuda', torch.cuda.is_available())"
nproc
status=0
section() {  # name, timeout (s), command...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "No pretrained weights" 
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s ==="
    [ "$rc" = 0 ] || status=1
}
section step_mfu "${STEP_LIMIT:-100}" "$PY" benchmarks/step_mfu.py --model ViT-B-32 --batch 256,512 \
    --json "$OUT/step_mfu.json"
section train_throughput "${THROUGHPUT_LIMIT:-270}" "$PY" benchmarks/train_throughput.py --model ViT-B-32 \
    --precision bf16 --batch 256 --workers "${WORKERS:-12}" --threads 4 --warmup 4 --steps 16 --reps 2 \
    --lr-warmup 4 --work /tmp/pisweep-tt --json "$OUT/train_throughput.json"
section gpu_resume "${RESUME_LIMIT:-120}" "$PY" benchmarks/gpu_resume.py --stops 7,23 --json "$OUT/gpu_resume.json"
exit $status
