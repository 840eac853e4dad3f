"""On the trained RoPE model of ``benchmarks/rope_rule.py``: merging against dropping tokens.

    nice .venv/bin/python benchmarks/rope_merge_vs_drop.py \
        --json benchmarks/rope_merge_vs_drop.json

Needs the checkpoint ``benchmarks/rope_rule.py`` trains (``runs/rope_rule/eva_rope_dots.pt``).
Scores the first ``--images`` test images of dots unmerged and at one r with bipartite merging
(proportional attention on and off), random bipartite merging, ``truncate`` (drop the last r
tokens) and attention pruning, each top-1 with its Wilson interval. Written to look into why
merging costs this model far more than the embedded timm ViTs (docs/engine.md's RoPE table).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import rope_rule  # benchmarks/ is on sys.path when run as a script
import torch

import tome_lab
from tome_lab.stats import wilson

SETTINGS = {
    "bipartite": dict(matching="bipartite"),
    "bipartite, plain attention": dict(matching="bipartite", prop_attn=False),
    "random bipartite": dict(matching="random_bipartite"),
    "truncate": dict(matching="truncate"),
    "attention pruning": dict(matching="pruning"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = rope_rule._split("test", args.images)
    base = rope_rule._model()
    base.load_state_dict(torch.load("runs/rope_rule/eva_rope_dots.pt", weights_only=True))
    base.eval()

    def score(m: torch.nn.Module) -> dict:
        with torch.no_grad():
            right = int((rope_rule.logits_of(m, x).argmax(-1) == y).sum())
        ci = wilson(right, len(y))
        return {"top1": 100 * right / len(y), "low": 100 * ci.low, "high": 100 * ci.high}

    rows = [{"setting": "unmerged", "r": 0, **score(base)}]
    for name, kw in SETTINGS.items():
        m = tome_lab.apply_tome(copy.deepcopy(base), r=args.r, **kw)
        rows.append({"setting": name, "r": args.r, **score(m)})
    for r in rows:
        print(f"{r['setting']:<28} r={r['r']:<3} {r['top1']:.1f} "
              f"[{r['low']:.1f}, {r['high']:.1f}]")
    args.json.write_text(json.dumps({"images": len(y), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
