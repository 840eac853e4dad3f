#!/bin/bash
# The methods comparison, way (c) (issue 24): for each embedded task and budget, the bipartite
# schedule with the best top-1 on val under the budget, found by python -m tome_lab.search
# (single objective; the dearest feasible constant and decreasing schedules first, then TRIALS
# TPE trials, 20 by default; a larger TRIALS resumes each study). Studies and their
# -pareto.yaml go to runs/methods_c, which benchmarks/methods_compare.sh NAME MODEL DATA c reads.
cd "$(dirname "$0")/.."  # run from anywhere; writes runs/methods_c (ignored)
P=.venv/bin/python
for spec in dots:vit_dots:dots digits:vit_digits:mnist5k clutter:vit_clutter:clutter \
            audio:vit_audio_digits:spoken_digits videodir:vit_video_dir:moving_digits_dir; do
  IFS=: read NAME MODEL DATA <<< "$spec"
  BASE=$($P -c "
import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
s = tome_lab.vit_spec(create_model(ModelConfig(name='$MODEL', pretrained=False)))
print(tome_lab.analytic_gflops(s, [0] * s.depth))")
  for pair in b15:1.5 b20:2; do
    b=${pair%%:*}; div=${pair##*:}
    g=$($P -c "print(f'{$BASE / $div:.4f}')")
    echo "=== $NAME $b $g $(date +%T)"
    $P -m tome_lab.search --model.name "$MODEL" --data.name "$DATA" \
      --search.objectives '[top1]' --search.gflops_budget "$g" --search.trials ${TRIALS:-20} \
      --search.name "methods_c_${NAME}_$b" --search.out runs/methods_c --eval.threads 1 --no_test
  done
done
echo METHODS_C_SEARCH_DONE $(date +%T)
