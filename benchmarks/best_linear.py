"""The best linear r schedule at a constant r's GFLOPs, chosen on the ``val`` split.

    .venv/bin/python benchmarks/best_linear.py --model vit_dots --data dots --r 18 \\
        --json benchmarks/tasks/dots_linear_val.jsonl

Scores every linear schedule that ``benchmarks/equal_gflops.py`` finds within ``--tol`` of
constant r's GFLOPs (every block merging what it is given) on the task's whole ``val`` split,
with the model's zoo weights (or ``--checkpoint``), bipartite matching and the other defaults
of ``tome_lab.apply_tome``, and prints them best first; the last line is the winner as
``schedule=linear start=A end=B``, the words ``benchmarks/paired_sweep.py`` takes, so that a
script can score it on ``test`` (never used for the choice). Ties go to the schedule closest
to constant r's GFLOPs, then to the smaller ``start``.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from equal_gflops import candidates  # benchmarks/ is on sys.path when run as a script
from r_sweep import hits

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig, ModelConfig
from tome_lab.data import build_loader
from tome_lab.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--r", type=int, required=True, help="the constant r whose GFLOPs to match")
    ap.add_argument("--tol", type=float, default=0.01, help="relative GFLOPs tolerance")
    ap.add_argument("--checkpoint", help="weights file (default: the model's zoo checkpoint)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write one JSON line per schedule to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref, found = candidates(args.model, args.r, args.tol)
    if not found:
        raise SystemExit(f"no linear schedule within {args.tol:.0%} of constant r={args.r}")
    base = create_model(ModelConfig(name=args.model, checkpoint=args.checkpoint)).eval()
    loader = build_loader(DataConfig(name=args.data, split="val"), base)
    rows = []
    for start, end, g in found:
        words = f"schedule=linear start={start} end={end}"
        model = tome_lab.apply_tome(copy.deepcopy(base), r=args.r, schedule="linear",
                                    start=start, end=end)
        h = hits(model, loader)  # (n_val,) 0/1
        ci = stats.wilson(int(h.sum()), len(h)).scaled(100)
        rows.append({"setting": f"{words} r={args.r}", "start": start, "end": end,
                     "model": args.model, "data": args.data,
                     **({"checkpoint": args.checkpoint} if args.checkpoint else {}),
                     "split": "val", "n_images": len(h), "top1": ci.estimate, "low": ci.low,
                     "high": ci.high, "gflops": g, "gflops_constant_r": ref})
        print(f"{words}: val top-1 {ci.estimate:.2f} [{ci.low:.1f}, {ci.high:.1f}], "
              f"{g:.4f} GFLOPs ({100 * (g / ref - 1):+.2f}%)", flush=True)
    rows.sort(key=lambda row: (-row["top1"], abs(row["gflops"] - ref), row["start"]))
    if args.json:
        from tome_lab import results

        results.write_text_atomic(args.json, "".join(json.dumps(r) + "\n" for r in rows))
    print(rows[0]["setting"].rsplit(" r=", 1)[0])


if __name__ == "__main__":
    main()
