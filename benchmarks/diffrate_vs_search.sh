#!/bin/bash
# Learned (p, m) rates (python -m tome_lab.search.diffrate, DiffRate-style) against the Optuna
# search (python -m tome_lab.search, bipartite schedules, as benchmarks/methods_search.sh runs
# it) on one embedded task at the budgets unmerged GFLOPs / 1.5 and / 2 (rounded to 4
# decimals; dots: 0.1089 and 0.0817), one job at a time, 1 torch thread, nice 5, on the
# shared 2-core machine:
#   nice -n 5 bash benchmarks/diffrate_vs_search.sh [NAME MODEL DATA] > runs/diffrate_cmp.log 2>&1
#   .venv/bin/python benchmarks/diffrate_vs_search.py   # -> benchmarks/diffrate_vs_search.jsonl
# NAME MODEL DATA default to dots vit_dots dots (runs go to runs/diffrate_cmp); another task,
# e.g. clutter vit_clutter clutter, writes runs/diffrate_cmp_NAME.
# Optuna: 20 TPE trials after the dearest feasible constant and decreasing schedules, best by
# val top-1 under the budget, its Pareto set re-scored on test. Learned rates: 100 steps of 32
# train images, exported pairs repaired to at most the budget, scored on val and test;
# diffrate: expected (soft) masks in the forward; diffrate-hard: straight-through hard masks.
# JOBS lists method_budget_seed labels (default: the soft learned rates at three seeds,
# Optuna's at seed 0, then Optuna's at seed 1 and the hard learned rates at three seeds); a
# job already in walls.txt is skipped. Each job's wall time (date before and after) goes to
# the run folder's walls.txt.
cd "$(dirname "$0")/.."
P=.venv/bin/python
NAME=${1:-dots} MODEL=${2:-vit_dots} DATA=${3:-dots}
OUT=runs/diffrate_cmp$([ "$NAME" = dots ] || echo "_$NAME")
mkdir -p $OUT
BASE=$($P -c "
import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
s = tome_lab.vit_spec(create_model(ModelConfig(name='$MODEL', pretrained=False)))
print(tome_lab.analytic_gflops(s, [0] * s.depth))")
JOBS=${JOBS:-"optuna_b15_s0 diffrate_b15_s0 optuna_b20_s0 diffrate_b20_s0 diffrate_b15_s1
  diffrate_b20_s1 diffrate_b15_s2 diffrate_b20_s2 optuna_b15_s1 optuna_b20_s1
  diffrate-hard_b15_s0 diffrate-hard_b20_s0 diffrate-hard_b15_s1 diffrate-hard_b20_s1
  diffrate-hard_b15_s2 diffrate-hard_b20_s2 optuna_b15_s2 optuna_b20_s2"}
for job in $JOBS; do
  IFS=_ read method b s <<< "$job"
  seed=${s#s}
  div=$([ "$b" = b15 ] && echo 1.5 || echo 2)
  g=$($P -c "print(f'{$BASE / $div:.4f}')")
  if grep -q "^$job " $OUT/walls.txt 2>/dev/null; then continue; fi
  echo "=== $NAME $job $g $(date +%T)"
  t0=$(date +%s.%N)
  if [ "$method" = optuna ]; then
    $P -m tome_lab.search --model.name "$MODEL" --data.name "$DATA" \
      --search.objectives '[top1]' --search.gflops_budget "$g" --search.trials 20 \
      --search.seed "$seed" --search.name "optuna_${NAME}_${b}_s$seed" --search.out $OUT \
      --eval.threads 1 || continue
  else
    hard=$([ "$method" = diffrate-hard ] && echo --hard)
    $P -m tome_lab.search.diffrate --model "$MODEL" --data "$DATA" --gflops "$g" --steps 100 \
      --batch-size 32 --seed "$seed" --threads 1 $hard \
      --out "$OUT/${method/-/_}_${NAME}_${b}_s$seed" || continue
  fi
  echo "$job $(echo "$(date +%s.%N) - $t0" | bc)" >> $OUT/walls.txt
done
echo DIFFRATE_CMP_DONE $(date +%T)
