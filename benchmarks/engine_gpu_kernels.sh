#!/bin/bash
# GPU follow-up to engine_gpu.sh (issue 8): what proportional attention costs. DeiT-B at batch
# 256 in bf16, each bench against timm in its own process: the size mask passed as SDPA's
# float mask (the default; a float mask rules out FlashAttention), and no proportional
# attention at all (--tome.prop_attn false). Same PYTHON / OUT as engine_gpu.sh; each step has
# its own time limit. The recorded run (benchmarks/README.md) also timed a third way, since
# removed because it was slower: see "Engine on a GPU" there.
set -uo pipefail
P=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/gpu/$(date -u +%Y-%m-%dT%H%M)}  # a new folder: recorded runs stay
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bench() {  # seconds allowed, model, r list, file stem, extra options...
    local t=$1 model=$2 r=$3 stem=$4
    shift 4
    echo "== $model r=$r $*"
    timeout "$t" $P -m tome_lab.bench --model "$model" --r "$r" --batch-size 256 --device cuda \
        --dtype bf16 --bench.memory true --repeats 20 --warmup 3 --no-progress \
        --json "$OUT/${stem}.json" "$@" || echo "bench $model $* failed or timed out ($?)"
}
bench 40 deit_base_patch16_224 0,8,16 kernels_deit_b_mask
bench 40 deit_base_patch16_224 8,16 kernels_deit_b_noprop --tome.prop_attn false
