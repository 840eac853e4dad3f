#!/bin/bash
# The engine's CPU benchmarks (issue 8), in the order they were recorded in
# benchmarks/README.md ("Engine: batch size, torch.compile, memory"). Run from the repository
# root with nothing else on the machine: about 50 minutes on 2 cores, most of it the
# batch-size table (compiled models at batch 128) and max-autotune's kernel timing.
set -euo pipefail
P=.venv/bin/python
$P benchmarks/merge_kernels.py --threads 2 --json benchmarks/merge_kernels_cpu.json
$P benchmarks/batch_sizes.py --batch-sizes 1 --r 0,16 --repeats 15 --iters 4 --threads 2 \
    --compile --json benchmarks/batch_sizes_deit_s_cpu_b1.json
$P benchmarks/batch_sizes.py --batch-sizes 32 --r 0,16 --repeats 9 --threads 2 \
    --json benchmarks/batch_sizes_deit_s_cpu_b32.json
$P benchmarks/batch_sizes.py --batch-sizes 1 --r 0,16 --repeats 12 --iters 4 --threads 2 \
    --compile --compile-mode max-autotune --freezing \
    --json benchmarks/batch_sizes_deit_s_cpu_b1_autotune.json
$P benchmarks/profile_split.py --batch 1 --r 16 --threads 2
$P benchmarks/batch_sizes.py --batch-sizes 1,8,32,128 --r 0,8,16 --repeats 5 --threads 2 \
    --compile --json benchmarks/batch_sizes_deit_s_cpu.json
$P benchmarks/linear_ceiling.py --batch 1 --r 16 --threads 2
$P benchmarks/batch_sizes.py --batch-sizes 128 --r 0,16 --repeats 4 --threads 2 \
    --json benchmarks/batch_sizes_deit_s_cpu_b128.json
# added with the merged-rows size-weighted average (the next session): larger merges
$P benchmarks/merge_kernels.py --threads 2 --batch-sizes 128 --calls 5 --rounds 10 \
    --json benchmarks/merge_kernels_cpu_b128.json
$P benchmarks/merge_kernels.py --threads 2 --batch-sizes 256 --channels 768 --calls 2 --rounds 8 \
    --json benchmarks/merge_kernels_cpu_deit_b_b256.json
