#!/bin/bash
# The engine's GPU benchmarks (issue 8): DeiT-B and ViT-L/16 at batch 256 in bf16, eager and
# torch.compile'd, against timm eager and compiled in the same process, with each setting's
# peak CUDA memory; then a value check of the patched model on the device. Run from the
# repository root on a machine with one CUDA GPU. PYTHON (default .venv/bin/python) runs it;
# OUT (default benchmarks/gpu) receives the rows and the logs. Each step has its own time limit,
# so a slow compile in one cannot take the others' results with it.
set -uo pipefail
P=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $P -c "import sys, torch, timm; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"; } | tee "$OUT/gpu_env.txt"
bench() {  # model, r list, file stem, seconds allowed
    timeout "$4" $P -m tome_lab.bench --model "$1" --r "$2" --batch-size 256 --device cuda \
        --dtype bf16 --compile --bench.memory true --repeats 20 --warmup 3 --no-progress \
        --json "$OUT/bench_${3}_gpu.json" || echo "bench $1 failed or timed out ($?)"
}
bench deit_base_patch16_224 0,8,16 deit_b 280
bench vit_large_patch16_224 0,8 vit_l 220
timeout 80 $P benchmarks/gpu_values.py --model deit_small_patch16_224 --r 16 \
    | tee "$OUT/gpu_values.txt" || echo "value check failed or timed out"
# added after the recorded runs, not yet run on a GPU: where the patched block's time goes
timeout 90 $P benchmarks/profile_split.py --model deit_base_patch16_224 --batch 256 --r 16 \
    --device cuda --dtype bf16 --rounds 3 --calls 3 2>"$OUT/profile_deit_b_gpu.err" \
    | tee "$OUT/profile_deit_b_gpu.txt" || echo "profile failed or timed out"
