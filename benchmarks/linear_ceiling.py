"""How fast can merging make a ViT's linear layers at a batch size, on this machine?

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/linear_ceiling.py --batch 1 --r 16 --threads 2

Times only the linear layers of a timm ViT (DeiT-S by default; block 0's layers stand in for
every block's): qkv and projection on the tokens that enter each block, the two MLP layers on
the tokens left after its merge, once at the unmerged token counts and once at those constant r
leaves (``tome_lab.flops.tokens_per_layer``), interleaved round by round. Their
ratio is what merging can buy for the layers that hold most of the FLOPs; next to the MAC
ratio it shows how much of the arithmetic saved the matrix-multiply kernels turn into time
when the token dimension gets small.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import timm
import torch

import tome_lab
from tome_lab.flops import tokens_per_layer
from tome_lab.runtime import interleaved_times, ratio_quartiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = ap.parse_args(argv)
    if min(args.batch, args.rounds) < 1 or args.r < 0:
        ap.error("--batch and --rounds must be >= 1, --r >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    spec = tome_lab.vit_spec(model)  # token counts as the engine clamps them
    blk = model.blocks[0]
    qkv, proj, fc1, fc2 = blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2

    def plan(r: int) -> list[tuple[int, int]]:
        """(tokens entering, tokens after the merge) of each block under constant r."""
        after = tokens_per_layer(spec, [r] * spec.depth)
        return list(zip([spec.num_tokens, *after[:-1]], after, strict=True))

    plans = {"unmerged": plan(0), f"r={args.r}": plan(args.r)}
    d = spec.embed_dim
    inputs = {n: torch.randn(args.batch, n, d) for p in plans.values() for pair in p for n in pair}

    def runner(plan: list[tuple[int, int]]) -> Callable[[], None]:
        def run() -> None:
            for n_in, n_out in plan:
                qkv(inputs[n_in])
                proj(inputs[n_in])
                fc2(fc1(inputs[n_out]))
        return run

    def macs(plan: list[tuple[int, int]]) -> int:
        per_in = qkv.weight.numel() + proj.weight.numel()
        per_out = fc1.weight.numel() + fc2.weight.numel()
        return sum(n_in * per_in + n_out * per_out for n_in, n_out in plan)

    with torch.inference_mode():
        times = interleaved_times({k: runner(p) for k, p in plans.items()}, args.rounds)
    base, merged = (statistics.median(v) for v in times.values())
    q1, _, q3 = ratio_quartiles(times[f"r={args.r}"], times["unmerged"])
    mac_ratio = macs(plans["unmerged"]) / macs(plans[f"r={args.r}"])
    print(f"batch {args.batch}, linear layers only: unmerged {base * 1e3:.1f} ms, "
          f"r={args.r} {merged * 1e3:.1f} ms; speed-up {base / merged:.2f}x "
          f"(per-round quartiles {q1:.2f}-{q3:.2f}) for {mac_ratio:.2f}x fewer MACs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
