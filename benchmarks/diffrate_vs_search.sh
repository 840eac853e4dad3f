#!/bin/bash
# Learned (p, m) rates (python -m tome_lab.search.diffrate, DiffRate-style) against the Optuna
# search (python -m tome_lab.search, bipartite schedules, as benchmarks/methods_search.sh runs
# it) on dots at the budgets unmerged GFLOPs / 1.5 and / 2 (0.1089 and 0.0817), one job at a
# time, 1 torch thread, nice 5, on the shared 2-core machine:
#   nice -n 5 bash benchmarks/diffrate_vs_search.sh > runs/diffrate_cmp.log 2>&1
#   .venv/bin/python benchmarks/diffrate_vs_search.py   # -> benchmarks/diffrate_vs_search.jsonl
# Optuna: 20 TPE trials after the dearest feasible constant and decreasing schedules, best by
# val top-1 under the budget, its Pareto set re-scored on test. Learned rates: 100 steps of 32
# train images, exported pairs repaired to at most the budget, scored on val and test;
# diffrate: expected (soft) masks in the forward; diffrate-hard: straight-through hard masks.
# JOBS lists method_budget_seed labels (default: the soft learned rates at three seeds,
# Optuna's at seed 0, then Optuna's at seed 1 and the hard learned rates at three seeds); a
# job already in walls.txt is skipped. Each job's wall time (date before and after) goes to
# runs/diffrate_cmp/walls.txt.
cd "$(dirname "$0")/.."
P=.venv/bin/python
OUT=runs/diffrate_cmp
mkdir -p $OUT
JOBS=${JOBS:-"optuna_b15_s0 diffrate_b15_s0 optuna_b20_s0 diffrate_b20_s0 diffrate_b15_s1
  diffrate_b20_s1 diffrate_b15_s2 diffrate_b20_s2 optuna_b15_s1 optuna_b20_s1
  diffrate-hard_b15_s0 diffrate-hard_b20_s0 diffrate-hard_b15_s1 diffrate-hard_b20_s1
  diffrate-hard_b15_s2 diffrate-hard_b20_s2 optuna_b15_s2 optuna_b20_s2"}
for job in $JOBS; do
  IFS=_ read method b s <<< "$job"
  seed=${s#s}
  g=$([ "$b" = b15 ] && echo 0.1089 || echo 0.0817)
  if grep -q "^$job " $OUT/walls.txt 2>/dev/null; then continue; fi
  echo "=== $job $g $(date +%T)"
  t0=$(date +%s.%N)
  if [ "$method" = optuna ]; then
    $P -m tome_lab.search --model.name vit_dots --data.name dots \
      --search.objectives '[top1]' --search.gflops_budget "$g" --search.trials 20 \
      --search.seed "$seed" --search.name "optuna_dots_${b}_s$seed" --search.out $OUT \
      --eval.threads 1 || continue
  else
    hard=$([ "$method" = diffrate-hard ] && echo --hard)
    $P -m tome_lab.search.diffrate --model vit_dots --data dots --gflops "$g" --steps 100 \
      --batch-size 32 --seed "$seed" --threads 1 $hard \
      --out "$OUT/${method/-/_}_dots_${b}_s$seed" || continue
  fi
  echo "$job $(echo "$(date +%s.%N) - $t0" | bc)" >> $OUT/walls.txt
done
echo DIFFRATE_CMP_DONE $(date +%T)
