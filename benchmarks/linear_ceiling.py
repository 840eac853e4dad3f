"""How fast can merging make a ViT's linear layers at a batch size, on this machine?

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/linear_ceiling.py --batch 1 --r 16 --threads 2

Times only the linear layers of DeiT-S's twelve blocks (qkv and projection on the tokens that
enter each block, the two MLP layers on the tokens left after its merge), once at the unmerged
token count and once at the counts that constant r leaves, interleaved round by round. Their
ratio is what merging can buy for the layers that hold most of the FLOPs; next to the MAC
ratio it shows how much of the arithmetic saved the matrix-multiply kernels turn into time
when the token dimension gets small.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tome_lab.merge import clamp_r


def token_counts(tokens: int, prefix: int, depth: int, r: int) -> list[tuple[int, int]]:
    """(tokens entering, tokens after the merge) of each block under constant r."""
    out = []
    for _ in range(depth):
        after = tokens - clamp_r(r, tokens, prefix)
        out.append((tokens, after))
        tokens = after
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--dim", type=int, default=384, help="width (DeiT-S: 384)")
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=197, help="tokens entering block 0")
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = ap.parse_args(argv)
    if min(args.batch, args.dim, args.tokens, args.depth, args.rounds, args.mlp_ratio) < 1:
        ap.error("--batch, --dim, --tokens, --depth, --rounds and --mlp-ratio must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, h = args.dim, args.dim * args.mlp_ratio
    qkv, proj, fc1, fc2 = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, h), nn.Linear(h, d)
    plans = {"unmerged": token_counts(args.tokens, 1, args.depth, 0),
             f"r={args.r}": token_counts(args.tokens, 1, args.depth, args.r)}
    inputs = {n: torch.randn(args.batch, n, d) for p in plans.values() for pair in p for n in pair}

    def run(plan: list[tuple[int, int]]) -> None:
        for n_in, n_out in plan:
            qkv(inputs[n_in])
            proj(inputs[n_in])
            fc2(fc1(inputs[n_out]))

    def macs(plan: list[tuple[int, int]]) -> int:
        return sum(n_in * (4 * d * d) + n_out * (2 * d * h) for n_in, n_out in plan)

    times: dict[str, list[float]] = {k: [] for k in plans}
    with torch.inference_mode():
        for plan in plans.values():
            run(plan)
        for _ in range(args.rounds):
            for k, plan in plans.items():
                t0 = time.perf_counter()
                run(plan)
                times[k].append(time.perf_counter() - t0)
    base, merged = (statistics.median(v) for v in times.values())
    ratios = sorted(a / b for a, b in zip(*times.values(), strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    mac_ratio = macs(plans["unmerged"]) / macs(plans[f"r={args.r}"])
    print(f"batch {args.batch}, linear layers only: unmerged {base * 1e3:.1f} ms, "
          f"r={args.r} {merged * 1e3:.1f} ms; speed-up {base / merged:.2f}x "
          f"(per-round quartiles {q1:.2f}-{q3:.2f}) for {mac_ratio:.2f}x fewer MACs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
