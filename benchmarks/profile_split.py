"""Where a forward's time goes, timm against tome_lab at one r: operator groups, side by side.

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/profile_split.py --batch 1 --r 16 --threads 2

Profiles both models in one process, alternating (``--rounds`` times, ``--calls`` forwards
each), and sums torch.profiler's self CPU time per operator into groups: the linear layers
(``addmm``), attention (the fused kernel), the rest of the model's own operators, and the
operators only the merging adds (those timm's forward never calls). "Outside operators" is
wall time minus all operator time: Python, module calls, and the profiler's own cost.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import tome_lab

GROUPS = {"linear layers": ("aten::addmm",), "attention": ("aten::_scaled_dot_product",)}


def _group(op: str, timm_ops: set[str]) -> str:
    for name, prefixes in GROUPS.items():
        if op.startswith(prefixes):
            return name
    return "other model operators" if op in timm_ops else "merging-only operators"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=4, help="forwards per profiled round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = ap.parse_args(argv)
    if min(args.batch, args.rounds, args.calls) < 1 or args.r < 0:
        ap.error("--batch, --rounds and --calls must be >= 1, --r >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False).eval()
    models = {"timm": base, f"r={args.r}": tome_lab.apply_tome(copy.deepcopy(base), r=args.r)}
    x = torch.randn(args.batch, *base.pretrained_cfg["input_size"])
    self_us = {k: collections.Counter() for k in models}
    wall = collections.Counter()
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(args.rounds):
            for k, m in models.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        m(x)
                    wall[k] += time.perf_counter() - t0
                for ev in prof.key_averages():
                    self_us[k][ev.key] += ev.self_cpu_time_total
    n = args.rounds * args.calls
    timm_ops = {op for op, us in self_us["timm"].items() if us > 0}
    rows: dict[str, dict[str, float]] = {}
    for k in models:
        groups = collections.Counter()
        for op, us in self_us[k].items():
            groups[_group(op, timm_ops)] += us / n / 1e3
        groups["outside operators"] = wall[k] / n * 1e3 - sum(groups.values())
        groups["wall"] = wall[k] / n * 1e3
        rows[k] = groups
    names = [*GROUPS, "other model operators", "merging-only operators", "outside operators",
             "wall"]
    a, b = models
    print(f"| ms per forward (batch {args.batch}) | {a} | {b} | ratio |")
    print("|---|---|---|---|")
    for g in names:
        ta, tb = rows[a][g], rows[b][g]
        ratio = f"{ta / tb:.2f}x" if tb > 0 and ta > 0 else "-"
        print(f"| {g} | {ta:.1f} | {tb:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
