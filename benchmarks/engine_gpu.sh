#!/bin/bash
# The engine's GPU benchmarks (issue 8), run from the repository root on a machine with one
# CUDA GPU. PYTHON (default .venv/bin/python) runs them; OUT (default benchmarks/gpu/<date and
# time>, so that no recorded run is overwritten) receives the rows and the logs. Steps
# (arguments pick some and their order, each at most once; default all, in this order):
#   eager    DeiT-B, batch 256, bf16, eager: timm, bipartite and the truncate floor at r=8, 16
#            with peak memory (about 45 s with the start of Python), then the floor without
#            proportional attention (no mask at all)
#   profile  where DeiT-B's time goes at r=8 and r=16, by operator group, host and device
#   values   the patched DeiT-S against a float64 reference on the device
#   compiled DeiT-B r=0, 8, 16, eager and torch.compile'd, against timm both ways (minutes:
#            compilation; it took 280 s and more)
#   vitl     the same for ViT-L/16 at r=0, 8
# Each step has its own time limit, so a slow compile in one cannot take the others' results
# with it. All five need more than one 10-minute call of a lent machine.
set -uo pipefail
P=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/gpu/$(date -u +%Y-%m-%dT%H%M)}
VALID="eager profile values compiled vitl"
if (( $# )); then STEPS=("$@"); else read -ra STEPS <<< "$VALID"; fi
seen=" "
for step in "${STEPS[@]}"; do  # refuse a misspelt, empty or repeated step before any work
    case " $VALID " in
    *" $step "*) ;;  # an empty name matches nothing: " " + "" + " " is not in it
    *) echo "unknown step '$step' (valid: $VALID)" >&2; exit 2 ;;
    esac
    [[ $seen == *" $step "* ]] && { echo "step '$step' given twice" >&2; exit 2; }
    seen+="$step "
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $P -c "import sys, torch, timm; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"; } | tee "$OUT/gpu_env.txt"
bench() {  # model, r list, file stem, seconds allowed, extra options
    timeout "$4" $P -m tome_lab.bench --model "$1" --r "$2" --batch-size 256 --device cuda \
        --dtype bf16 --bench.memory true --repeats 20 --warmup 3 --no-progress \
        --json "$OUT/bench_${3}_gpu.json" "${@:5}" || echo "bench $1 failed or timed out ($?)"
}
for step in "${STEPS[@]}"; do
    case $step in
    eager) bench deit_base_patch16_224 8,16 deit_b_eager_floor 75 --matching bipartite,truncate \
               | tee "$OUT/bench_deit_b_eager_floor_gpu.txt"
           bench deit_base_patch16_224 8,16 deit_b_eager_floor_plain 60 --matching truncate \
               --tome.prop_attn false | tee "$OUT/bench_deit_b_eager_floor_plain_gpu.txt" ;;
    profile) for r in 8 16; do
                 timeout 70 $P benchmarks/profile_split.py --model deit_base_patch16_224 \
                     --batch 256 --r $r --device cuda --dtype bf16 --rounds 3 --calls 3 \
                     2>"$OUT/profile_deit_b_r${r}_gpu.err" | tee "$OUT/profile_deit_b_r${r}_gpu.txt" \
                     || echo "profile r=$r failed or timed out"
             done ;;
    values) timeout 80 $P benchmarks/gpu_values.py --model deit_small_patch16_224 --r 16 \
                | tee "$OUT/gpu_values.txt" || echo "value check failed or timed out" ;;
    compiled) bench deit_base_patch16_224 0,8,16 deit_b 400 --compile ;;
    vitl) bench vit_large_patch16_224 0,8 vit_l 220 --compile ;;
    esac
done
