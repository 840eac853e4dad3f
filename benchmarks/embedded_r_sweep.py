"""The embedded model's top-1, GFLOPs and img/s against r (bipartite, constant schedule).

Run from the repository root (about two minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/embedded_r_sweep.py --threads 2 --speed-batches 10

Each row is ``tome_lab.evaluate.evaluate`` on mnist5k's 1,000 held-out digits; img/s is the
median over timed batches of 250, interleaved with the unmerged model in the same process, so
``speedup`` is a ratio taken under the same load. r is clamped by the engine to half of the
unprotected tokens per block, so with 64 patch tokens and 12 blocks r above 5 stops adding
merges in the last blocks.
"""

from __future__ import annotations

import argparse
import json

from tome_lab.config import EvalConfig, ExperimentConfig, ToMeConfig
from tome_lab.evaluate import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 8])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--speed-batches", type=int, default=10)
    p.add_argument("--no-prop-attn", dest="prop_attn", action="store_false")
    p.add_argument("--json", help="also write the rows to this JSON-lines file")
    args = p.parse_args()
    rows = []
    print("| r | top-1 | top-5 | tokens after block 12 | GFLOPs | img/s | img/s (r=0) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in args.r:
        cfg = ExperimentConfig(
            tome=ToMeConfig(r=r, prop_attn=args.prop_attn),
            eval=EvalConfig(threads=args.threads, speed_batches=args.speed_batches))
        out = evaluate(cfg)
        rows.append(out)
        print(f"| {r} | {out['top1']:.1f} | {out['top5']:.1f} | {out['tokens'][-1]} | "
              f"{out['gflops']:.4f} | {out['img_per_s']:.0f} | {out['img_per_s_base']:.0f} | "
              f"{out['speedup']:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
