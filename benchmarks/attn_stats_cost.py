"""What the attention statistics cost (issue 25): one block's statistics against the block.

    python benchmarks/attn_stats_cost.py --threads 2 --repeats 30 \
        --json benchmarks/attn_stats_cost_cpu.json

A matcher that scores tokens by attention (EViT, ATS, PPT, Zero-TPrune, attention pruning)
asks the engine for statistics that the fused attention kernel does not return: the class
token's row (``cls``: one query against N keys per head), or every query's probabilities
(``received``, ``full``: an [B, H, N, N] matrix, computed once for both). This times
``tome_lab.engine.attention_stats`` for each request on the q, k and mask of the first block
of a random DeiT-S (197 tokens, 6 heads of 64; sizes from one bipartite merge of 16 so that
the mask is live), interleaved with one forward of that unpatched timm block, at batch 1 and
32, and writes each request's median time as a fraction of the block's, with the quartiles
of the round-by-round ratios and the analytic products (``tome_lab.flops.stats_flops``) as a
fraction of the block's. Run it on a quiet machine (``uptime``); one process at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path

import timm
import torch

import tome_lab
from tome_lab.engine import attention_stats
from tome_lab.flops import stats_flops
from tome_lab.runtime import interleaved_times, ratio_quartiles

REQUESTS = {"cls": frozenset({"cls"}), "received": frozenset({"received"}),
            "full": frozenset({"full"}), "cls+received": frozenset({"cls", "received"})}


def measure(batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    blk = model.blocks[0]
    attn = blk.attn
    n, c = 197, model.embed_dim
    x = torch.randn(batch, n, c)
    with torch.no_grad():
        h = blk.norm1(x)
        qkv = attn.qkv(h).reshape(batch, n, 3, attn.num_heads, attn.head_dim)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    size = torch.ones(batch, n, 1)
    size[:, 1:33] = 2.0  # as after a merge: the mask is live
    mask = size.log().transpose(1, 2)[:, None]  # (B, 1, 1, N)
    fns = {"block": lambda: blk(x)}
    for name, want in REQUESTS.items():
        fns[name] = lambda want=want: attention_stats(q, k, mask, want)
    with torch.inference_mode():
        times = interleaved_times(fns, repeats, warmup=3, calls=5 if batch == 1 else 1)
    spec = tome_lab.vit_spec(model)
    # the block's products: per-token linears and norms, and q k^T and attn v
    block_products = ((spec.attn_token_flops + spec.mlp_token_flops) * n
                      + 2 * n * n * spec.attn_dim)
    rows = []
    for name, want in REQUESTS.items():
        s = dataclasses.replace(spec, stats=tuple(sorted(want)))
        # round by round: this request's time / the block's time
        q1, med, q3 = ratio_quartiles(times["block"], times[name])
        rows.append({
            "request": name, "batch": batch, "threads": torch.get_num_threads(),
            "repeats": repeats, "load_1min": os.getloadavg()[0],
            "block_ms": 1e3 * statistics.median(times["block"]),
            "stats_ms": 1e3 * statistics.median(times[name]),
            "fraction_of_block": statistics.median(times[name]) / statistics.median(times["block"]),
            "fraction_quartiles": [q1, med, q3],
            "products_fraction": stats_flops(s, n) / block_products})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(1, args.repeats) + measure(32, args.repeats)
    for r in rows:
        print(f"batch {r['batch']:>2} {r['request']:<13} {r['stats_ms']:8.3f} ms = "
              f"{100 * r['fraction_of_block']:5.1f}% of the block ({r['block_ms']:.2f} ms; "
              f"products {100 * r['products_fraction']:.2f}%)")
    args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
