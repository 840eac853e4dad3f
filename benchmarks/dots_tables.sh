#!/usr/bin/env bash
# The dots tables (issue 28): every setting at about half the unmerged GFLOPs, scored on the
# whole dots test split (2,000 images) and paired against bipartite matching with proportional
# attention and the size-weighted average (benchmarks/paired_sweep.py --json). Constant r = 18
# keeps 0.51x of vit_dots' unmerged GFLOPs (benchmarks/equal_gflops.py --model vit_dots --r 18
# prints it). Writes benchmarks/tasks/:
#   dots_matching.jsonl    every matching strategy of task_tables.sh at r = 18
#   dots_knobs.jsonl       Table-1 knobs (feature, distance, combine wavg/mean/keep/max,
#                          proportional attention, partition) at r = 18
#   dots_schedule.jsonl    constant r = 18 against the steepest decreasing linear schedule at
#                          its GFLOPs (25 -> 1) and the flops schedule
#   dots_more.jsonl        what task_tables.sh leaves out: pruning by norm and at random,
#                          truncation, mean without proportional attention, no merging
#   dots_linear_val.jsonl  every linear schedule within 1% of r = 18's GFLOPs, on val
#   dots_linear.jsonl      the best of them (chosen on val) on test against constant r = 18
#                          (and, under it, pruning and the ablated mechanisms)
#   dots_linear_knobs.jsonl  under that schedule, bipartite + proportional attention + wavg
#                          against the ablated mechanisms and pruning
#   dots_r_sweep.jsonl     off the shelf against trained with merging (r = 16), r = 0 .. 20
#   dots_tome16.jsonl      the trained-with-merging checkpoint at r = 18: bipartite against
#                          its ablations and pruning
#   dots_errors.jsonl      which way each setting miscounts (over / under the true count)
# Format them with benchmarks/paired_table.py (benchmarks/tasks/DOTS.md shows them all). Run from
# the repository root (about 40 minutes on the shared 2-core machine):
#   benchmarks/dots_tables.sh
# THREADS (default 2) sets torch's CPU threads.
set -euo pipefail
PY=.venv/bin/python
OUT=benchmarks/tasks
R=18
TH=${THREADS:-2}
ZOO=tome_lab/zoo
S=(--threads "$TH" --model vit_dots --data dots)
mkdir -p runs/tables "$OUT"

# 25 -> 1: the steepest decreasing linear schedule within 1% of r = 18's GFLOPs (none increasing
# is; benchmarks/equal_gflops.py --model vit_dots --r 18)
THREADS=$TH benchmarks/task_tables.sh dots vit_dots dots $R 25 1

$PY benchmarks/paired_sweep.py "${S[@]}" "matching=bipartite r=$R" \
  "matching=pruning criterion=norm r=$R" "matching=pruning criterion=random r=$R" \
  "matching=truncate r=$R" "combine=mean prop_attn=false r=$R" "r=0" \
  --json $OUT/dots_more.jsonl > runs/tables/dots_more.txt

BEST=$($PY benchmarks/best_linear.py --model vit_dots --data dots --r $R --threads "$TH" \
  --json $OUT/dots_linear_val.jsonl | tail -n 1)
$PY benchmarks/paired_sweep.py "${S[@]}" "r=$R" "$BEST r=$R" "$BEST matching=pruning r=$R" \
  "$BEST matching=pruning criterion=norm r=$R" "$BEST prop_attn=false r=$R" \
  "$BEST combine=mean r=$R" --json $OUT/dots_linear.jsonl > runs/tables/dots_linear.txt
$PY benchmarks/paired_sweep.py "${S[@]}" "$BEST r=$R" "$BEST prop_attn=false r=$R" \
  "$BEST combine=mean r=$R" "$BEST combine=keep r=$R" "$BEST combine=max r=$R" \
  "$BEST matching=pruning r=$R" "$BEST matching=pruning criterion=norm r=$R" \
  "$BEST matching=pruning criterion=random r=$R" \
  --json $OUT/dots_linear_knobs.jsonl > runs/tables/dots_linear_knobs.txt

$PY benchmarks/r_sweep.py --model vit_dots --data dots \
  --ckpt off_the_shelf=$ZOO/vit_dots.safetensors \
  --ckpt trained_with_tome=$ZOO/vit_dots_tome16.safetensors \
  --r 0 8 12 16 18 20 --threads "$TH" --speed-batches 2 --json $OUT/dots_r_sweep.jsonl \
  > runs/tables/dots_r_sweep.txt

$PY benchmarks/paired_sweep.py "${S[@]}" --checkpoint $ZOO/vit_dots_tome16.safetensors \
  "matching=bipartite r=$R" "prop_attn=false r=$R" "combine=mean r=$R" \
  "matching=pruning r=$R" "matching=pruning criterion=norm r=$R" "r=0" \
  --json $OUT/dots_tome16.jsonl > runs/tables/dots_tome16.txt

$PY benchmarks/dots_errors.py --threads "$TH" "r=0" "r=$R" "prop_attn=false r=$R" \
  "combine=mean r=$R" "matching=pruning r=$R" "matching=pruning criterion=norm r=$R" \
  "matching=pruning criterion=random r=$R" "matching=truncate r=$R" \
  --json $OUT/dots_errors.jsonl > runs/tables/dots_errors.txt
