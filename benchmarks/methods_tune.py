"""The methods comparison's tuned column (issue 24): each method's hyper-parameter chosen on
``val``, then scored once on ``test`` against bipartite at the same budget.

    python benchmarks/methods_tune.py --model vit_dots --data dots --budget 0.0817 \\
        --json benchmarks/tasks/methods_dots_b20_tuned.jsonl

Way (a)'s schedule (``schedule=constant_flops gflops=BUDGET``) for every method. For each
method of :data:`GRIDS` every value of its one option is scored on the whole ``val`` split
(``benchmarks/paired_sweep.py --split val``); the value with the highest val top-1 wins, ties
going to the published default, which each grid lists first. The winners and
``matching=bipartite`` (the reference, nothing to tune) are then scored on ``test`` with the
same paired statistics as the other ways; each tuned row records its option, the values
tried and their val top-1. ``test`` is read once, after every choice is made.
"""

from __future__ import annotations

import argparse
import json

import paired_sweep  # benchmarks/ is on sys.path when run as a script

import tome_lab
from tome_lab import results
from tome_lab.config import ModelConfig
from tome_lab.models import create_model


def grids(depth: int) -> dict[str, tuple[str, list]]:
    """method -> (option, values), the published default first: the hyper-parameters the
    issue names (PiToMe's margin, ToFu's switch block, the window, ATC's linkage)."""
    tofu = [depth // 2 + 1] + [v for v in (1, depth // 3, (5 * depth) // 6)
                               if v != depth // 2 + 1]
    return {
        "pitome": ("margin", [0.9, 0.7, 0.5]),
        "tofu": ("switch", tofu),
        "local_bipartite": ("window", [2, 1, 3]),
        "atc": ("linkage", ["complete", "average", "single"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=float, required=True, help="GFLOPs budget")
    ap.add_argument("--json", required=True, help="the test rows, one JSON line each")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    spec = tome_lab.vit_spec(create_model(ModelConfig(name=args.model, pretrained=False)))
    sched = f"schedule=constant_flops gflops={args.budget:g}"
    common = ["--threads", str(args.threads), "--model", args.model, "--data", args.data,
              "--budget", str(args.budget)]
    tried: dict[str, tuple[str, list, list[str]]] = {}
    for method, (option, values) in grids(spec.depth).items():
        words = [f"matching={method} {option}={v} {sched}" for v in values]
        tried[method] = (option, values, words)
    every = [w for _, _, ws in tried.values() for w in ws]
    val = {row["setting"]: row for row in paired_sweep.main([*common, "--split", "val", *every])}
    chosen, notes = [], {}
    for option, values, words in tried.values():
        scores = [val[w].get("top1", float("-inf")) for w in words]  # refused: never chosen
        best = max(range(len(words)), key=lambda i: (scores[i], -i))
        chosen.append(words[best])
        notes[words[best]] = {"tuned_option": option, "tuned_values": values,
                              "val_top1": [val[w].get("top1") for w in words]}
    rows = paired_sweep.main([*common,  # written once below, with the choices
                              f"matching=bipartite {sched}", *chosen])
    for row in rows:
        row.update(notes.get(row["setting"], {}))
    results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
