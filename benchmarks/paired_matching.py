"""Paired comparison of matchings on the same held-out digits (issue 14).

    python benchmarks/paired_matching.py

Scores ``vit_digits`` (zoo weights) at r = 4 with bipartite, pruning and random matching on
all 1,000 held-out mnist5k digits, keeps each image's 0/1 result, and compares bipartite with
the others image by image: McNemar's exact test and a paired bootstrap interval of the
difference (``tome_lab.stats``). Results are in benchmarks/README.md.
"""

from __future__ import annotations

import copy

import torch

import tome_lab
from tome_lab import stats
from tome_lab.config import DataConfig
from tome_lab.data import build_loader
from tome_lab.models import create_model


def main() -> None:
    """Prints each matching's top-1 and the paired comparisons with bipartite."""
    torch.set_num_threads(2)
    base = create_model().eval()
    loader = build_loader(DataConfig(), base)
    hits = {}
    for name in ("bipartite", "pruning", "random"):
        torch.manual_seed(0)
        model = tome_lab.apply_tome(copy.deepcopy(base), r=4, matching=name)
        out = []
        with torch.no_grad():
            for x, y in loader:
                out.append((model(x).argmax(-1) == y).float())  # (B,)
        hits[name] = torch.cat(out).numpy()  # (n_images,)
        print(f"{name}: top-1 {100 * hits[name].mean():.1f} on {len(hits[name])} images")
    for other in ("pruning", "random"):
        test = stats.mcnemar(hits["bipartite"], hits[other])
        diff = stats.paired_bootstrap(hits["bipartite"], hits[other]).scaled(100)
        print(f"bipartite vs {other}: right only with bipartite {test.only_a}, only with "
              f"{other} {test.only_b}, McNemar p = {test.p_value:.2g}; difference "
              f"{diff.estimate:.1f} [{diff.low:.1f}, {diff.high:.1f}] points")


if __name__ == "__main__":
    main()
