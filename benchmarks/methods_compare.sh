#!/usr/bin/env bash
# The methods comparison of issue 24 on one embedded task, one of three ways:
#   benchmarks/methods_compare.sh NAME MODEL DATASET [WAY]
# e.g. benchmarks/methods_compare.sh dots vit_dots dots c. Budgets: the model's unmerged
# GFLOPs / 1.5 and / 2, rounded to 4 decimals. Every setting is scored on the whole test
# split and paired against bipartite matching (proportional attention, size-weighted average)
# at the same budget (benchmarks/paired_sweep.py --json); docs/methods.md shows the files with
# Holm-adjusted p-values (python -m tome_lab.report). Stochastic methods run three seeds.
#   a (default): every method at the constant r whose analytic GFLOPs, its own cost included,
#      come closest to the budget (schedule=constant_flops); writes methods_NAME_b15.jsonl
#      and _b20.jsonl under benchmarks/tasks.
#   b: each method with a published schedule of its own, at the rate closest to the budget:
#      PiToMe keeps a fixed ratio per block (schedule=keep_ratio), ATC, K-Medoids and DPC-KNN
#      keep a rate at the 4th, 7th and 10th of 12 blocks (schedule=stages); bipartite's own
#      schedule is constant r, so the reference is way (a)'s. ToFu and MCTF publish constant
#      r, which is way (a). Also bipartite under both schedules, to tell method from schedule.
#      Writes methods_NAME_b15_own.jsonl and _b20_own.jsonl.
#   c: one schedule for every method: the best val schedule that python -m tome_lab.search
#      found for bipartite under the budget (benchmarks/methods_search.sh writes the studies to
#      runs/methods_c; this reads their -pareto.yaml, and of equally good val schedules takes
#      the dearest, nearest the budget), applied unchanged to every method of way (a) but
#      truncate and the second and third seeds. Writes methods_NAME_b15_searched.jsonl and
#      _b20_searched.jsonl.
#   m2: issue 25's attention-scoring methods (EViT under constant r and its own stages, PPT,
#      Zero-TPrune, attention pruning) at the budget, against bipartite; writes
#      methods2_NAME_b15.jsonl and _b20.jsonl.
#   m2c: the same methods (EViT without its stages) under way (c)'s searched schedule; writes
#      methods2_NAME_b15_searched.jsonl and _b20_searched.jsonl.
#   m2ca: ATS (an adaptive per-image token count, r only a cap; per-image GFLOPs recorded)
#      under way (c)'s searched schedule, against bipartite under it; writes
#      methods2_NAME_b15_searched_ats.jsonl and _b20_searched_ats.jsonl. Its rows at a matched
#      per-image budget are benchmarks/ats_budget.py's methods2_NAME_b15_ats.jsonl.
# Run from the repository root; THREADS (default 2) sets torch's threads.
set -euo pipefail
NAME=$1 MODEL=$2 DATA=$3 WAY=${4:-a}
PY=.venv/bin/python
TH=${THREADS:-2}
OUT=benchmarks/tasks
BASE=$($PY -c "
import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
s = tome_lab.vit_spec(create_model(ModelConfig(name='$MODEL', pretrained=False)))
print(tome_lab.analytic_gflops(s, [0] * s.depth))")
METHODS=("matching=bipartite" "matching=bipartite combine=mlerp" "matching=tofu"
  "matching=pitome" "matching=mctf" "matching=local_bipartite" "matching=atc"
  "matching=atc linkage=average" "matching=kmedoids" "matching=dpc_knn" "matching=dct"
  "matching=kmeans" "matching=greedy" "matching=kth_bipartite" "matching=pruning"
  "matching=truncate" "matching=random seed=0" "matching=random seed=1"
  "matching=random seed=2" "matching=random_bipartite seed=0"
  "matching=random_bipartite seed=1" "matching=random_bipartite seed=2")
searched() {  # way (c)'s schedule for budget $1 (b15, b20), as a JSON list without spaces
  $PY -c "
import json
# the '# gflops top1_val top1_test r' lines: of the best val schedules, the dearest
best = max((float(ln.split()[1]), ln.split(None, 4)[4]) for ln in
           open('runs/methods_c/methods_c_${NAME}_$1-pareto.yaml') if ln.startswith('# 0'))
print(json.dumps(json.loads(best[1])).replace(' ', ''))"
}
for pair in b15:1.5 b20:2; do
  name=${pair%%:*}; div=${pair##*:}
  g=$($PY -c "print(f'{$BASE / $div:.4f}')")
  case $WAY in
    a) S="schedule=constant_flops gflops=$g"; file=$OUT/methods_${NAME}_$name.jsonl
       SETTINGS=(); for m in "${METHODS[@]}"; do SETTINGS+=("$m $S"); done ;;
    b) file=$OUT/methods_${NAME}_${name}_own.jsonl
       SETTINGS=("matching=bipartite schedule=constant_flops gflops=$g"
         "matching=pitome schedule=keep_ratio gflops=$g"
         "matching=atc schedule=stages gflops=$g"
         "matching=atc linkage=average schedule=stages gflops=$g"
         "matching=atc linkage=complete schedule=stages gflops=$g"
         "matching=kmedoids schedule=stages gflops=$g"
         "matching=dpc_knn schedule=stages gflops=$g"
         "matching=bipartite schedule=keep_ratio gflops=$g"
         "matching=bipartite schedule=stages gflops=$g") ;;
    c) file=$OUT/methods_${NAME}_${name}_searched.jsonl  # one seed of each stochastic method
       # and no truncate, to fit the shared machine: (a) has their spread and floor
       S="schedule=list r=$(searched "$name")"
       SETTINGS=(); for m in "${METHODS[@]}"; do
         case $m in *seed=[12]|*truncate) continue ;; esac; SETTINGS+=("$m $S"); done ;;
    m2c) file=$OUT/methods2_${NAME}_${name}_searched.jsonl S="schedule=list r=$(searched "$name")"
       SETTINGS=("matching=bipartite $S" "matching=evit $S" "matching=ppt $S"
         "matching=zero_tprune $S" "matching=pruning $S") ;;
    m2ca) file=$OUT/methods2_${NAME}_${name}_searched_ats.jsonl
       S="schedule=list r=$(searched "$name")"
       SETTINGS=("matching=bipartite $S" "matching=ats $S") ;;
    m2) file=$OUT/methods2_${NAME}_$name.jsonl S="schedule=constant_flops gflops=$g"
       SETTINGS=("matching=bipartite $S" "matching=evit $S"
         "matching=evit schedule=stages gflops=$g" "matching=ppt $S"
         "matching=zero_tprune $S" "matching=pruning $S") ;;
    *) echo "WAY must be a, b, c, m2, m2c or m2ca, got '$WAY'" >&2; exit 2 ;;
  esac
  $PY benchmarks/paired_sweep.py --threads "$TH" --model "$MODEL" --data "$DATA" \
    --budget "$g" --json "$file" "${SETTINGS[@]}"
done
