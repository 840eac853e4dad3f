#!/usr/bin/env bash
# The methods comparison of issue 24 on the dots counting task (vit_dots, zoo weights, the
# 2,000 dots test images), way (a): every method at the constant r whose analytic GFLOPs come
# closest to each budget under its own count (schedule=constant_flops), paired against
# bipartite matching (proportional attention, size-weighted average) at the same budget.
# Budgets: about 1.5x and 2x fewer GFLOPs than unmerged vit_dots (0.1633 GFLOPs):
# 0.1089 and 0.0817. Stochastic methods run three seeds. Writes
#   benchmarks/tasks/methods_dots_b15.jsonl, benchmarks/tasks/methods_dots_b20.jsonl
# (benchmarks/paired_sweep.py --json); docs/methods.md shows them with Holm-adjusted p-values
# (python -m tome_lab.report). Run from the repository root; THREADS (default 2).
set -euo pipefail
PY=.venv/bin/python
TH=${THREADS:-2}
OUT=benchmarks/tasks
for pair in b15:0.1089 b20:0.0817; do
  name=${pair%%:*}; g=${pair##*:}
  S="schedule=constant_flops gflops=$g"
  $PY benchmarks/paired_sweep.py --threads "$TH" --model vit_dots --data dots \
    --json "$OUT/methods_dots_$name.jsonl" \
    "matching=bipartite $S" \
    "matching=bipartite combine=mlerp $S" \
    "matching=tofu $S" "matching=pitome $S" "matching=mctf $S" \
    "matching=local_bipartite $S" "matching=atc $S" "matching=atc linkage=average $S" \
    "matching=kmedoids $S" "matching=dpc_knn $S" "matching=dct $S" \
    "matching=kmeans $S" "matching=greedy $S" "matching=kth_bipartite $S" \
    "matching=pruning $S" "matching=truncate $S" \
    "matching=random $S seed=0" "matching=random $S seed=1" "matching=random $S seed=2" \
    "matching=random_bipartite $S seed=0" "matching=random_bipartite $S seed=1" \
    "matching=random_bipartite $S seed=2"
done
