#!/usr/bin/env bash
# The ablation tables of one embedded task, each setting scored on the task's whole test split
# and paired against the reference on the same images (benchmarks/paired_sweep.py --json):
#   <task>_matching.jsonl  every matching strategy at r = R
#   <task>_knobs.jsonl     Table-1 knobs (feature, distance, combine, proportional attention,
#                          partition) against the default (bipartite, k, cosine, wavg, on,
#                          alternate) at r = R
#   <task>_schedule.jsonl  constant r = R against the steepest decreasing (and increasing)
#                          linear schedule at the same GFLOPs (benchmarks/equal_gflops.py) and
#                          the flops schedule aimed at constant r's GFLOPs
# Format them with benchmarks/paired_table.py. Run from the repository root:
#   benchmarks/task_tables.sh TASK MODEL DATA R DEC_START DEC_END [INC_START INC_END]
#   e.g. benchmarks/task_tables.sh clutter vit_clutter clutter 16 22 2
# THREADS (default 2) sets torch's CPU threads.
set -euo pipefail
T=$1 M=$2 D=$3 R=$4 S=$5 E=$6
PY=".venv/bin/python"
OUT=benchmarks/tasks
mkdir -p runs/tables "$OUT"
G=$($PY -c "import tome_lab,tome_lab.models as _; from tome_lab.models import create_model; from tome_lab.config import ModelConfig; s=tome_lab.vit_spec(create_model(ModelConfig(name='$M',pretrained=False))); print(round(tome_lab.analytic_gflops(s,[$R]*s.depth),5))")
$PY benchmarks/paired_sweep.py --threads ${THREADS:-2} --model $M --data $D "matching=bipartite r=$R" "matching=kth_bipartite r=$R" \
  "matching=random_bipartite r=$R" "matching=greedy r=$R" "matching=kmeans r=$R" "matching=pruning r=$R" \
  "matching=random r=$R" --json $OUT/${T}_matching.jsonl > runs/tables/${T}_matching.txt
$PY benchmarks/paired_sweep.py --threads ${THREADS:-2} --model $M --data $D "r=$R" "feature=x r=$R" "feature=q r=$R" "feature=v r=$R" \
  "distance=dot r=$R" "distance=euclidean r=$R" "combine=mean r=$R" "combine=keep r=$R" "combine=max r=$R" \
  "prop_attn=false r=$R" "partition=halves r=$R" "partition=random r=$R" --json $OUT/${T}_knobs.jsonl > runs/tables/${T}_knobs.txt
SCHED=("r=$R" "schedule=linear start=$S end=$E r=$R" "schedule=flops gflops=$G r=$R")
if [ $# -ge 8 ]; then SCHED+=("schedule=linear start=$7 end=$8 r=$R"); fi
$PY benchmarks/paired_sweep.py --threads ${THREADS:-2} --model $M --data $D "${SCHED[@]}" --json $OUT/${T}_schedule.jsonl > runs/tables/${T}_schedule.txt
