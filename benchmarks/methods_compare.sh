#!/usr/bin/env bash
# The methods comparison of issue 24, way (a), on one embedded task:
#   benchmarks/methods_compare.sh NAME MODEL DATASET
# e.g. benchmarks/methods_compare.sh dots vit_dots dots. Every method at the constant r whose
# analytic GFLOPs come closest to each budget under its own count (schedule=constant_flops),
# paired against bipartite matching (proportional attention, size-weighted average) at the same
# budget on the whole test split. Budgets: the model's unmerged GFLOPs / 1.5 and / 2, rounded to
# 4 decimals. Stochastic methods run three seeds. Writes benchmarks/tasks/methods_NAME_b15.jsonl
# and _b20.jsonl (benchmarks/paired_sweep.py --json); docs/methods.md shows them with
# Holm-adjusted p-values (python -m tome_lab.report). Run from the repository root; THREADS
# (default 2) sets torch's threads.
set -euo pipefail
NAME=$1 MODEL=$2 DATA=$3
PY=.venv/bin/python
TH=${THREADS:-2}
OUT=benchmarks/tasks
BASE=$($PY -c "
import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
s = tome_lab.vit_spec(create_model(ModelConfig(name='$MODEL', pretrained=False)))
print(tome_lab.analytic_gflops(s, [0] * s.depth))")
for pair in b15:1.5 b20:2; do
  name=${pair%%:*}; div=${pair##*:}
  g=$($PY -c "print(f'{$BASE / $div:.4f}')")
  S="schedule=constant_flops gflops=$g"
  $PY benchmarks/paired_sweep.py --threads "$TH" --model "$MODEL" --data "$DATA" \
    --json "$OUT/methods_${NAME}_$name.jsonl" \
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
