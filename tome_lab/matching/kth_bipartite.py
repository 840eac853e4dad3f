"""Bipartite matching where every k-th unprotected token is a destination (B), the rest A.

k = 2 is an alternating split that leaves the prefix out; larger k makes fewer, sparser
destinations, so more tokens compete for each.
"""

from __future__ import annotations

from typing import Any

import torch

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import match_sets
from tome_lab.merge import MergeFn
from tome_lab.registry import MATCHING


@MATCHING.register("kth_bipartite", "kth")
@uses("metric", "combine", "keep")
def kth_bipartite(ctx: MatchContext, r: int, k: int = 4) -> tuple[MergeFn, MergeFn]:
    """Destinations: unprotected tokens 0, k, 2k, ... (counted after the prefix)."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"kth_bipartite needs an int k >= 2, got k={k!r}")
    b, n, _ = ctx.metric.shape
    p, dev = ctx.num_prefix, ctx.metric.device
    # positions from Python ints (not a boolean mask) so the set sizes are static under
    # torch.compile
    dst = [i for i in range(p, n) if (i - p) % k == 0]
    src = [i for i in range(p, n) if (i - p) % k != 0]
    return match_sets(ctx, r, torch.tensor(src, device=dev).expand(b, -1),
                      torch.tensor(dst, device=dev).expand(b, -1))


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """One [M - M/k, M/k] similarity matrix (destinations every k-th token)."""
    c, m = metric_width(spec), n - spec.num_prefix
    nb = -(-m // options.get("k", 4))  # unprotected positions 0, k, 2k, ... are destinations
    return (m - nb) * nb * c


kth_bipartite.flops = _flops
