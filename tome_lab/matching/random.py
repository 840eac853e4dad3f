"""Random merging: r random unprotected sources merged into random kept tokens.

The floor every matching method must beat (uses torch's RNG, so a fixed seed repeats it).
"""

from __future__ import annotations

import torch

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns
from tome_lab.registry import MATCHING


@MATCHING.register("random")
@uses("combine", "keep", stochastic=True)
def random(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Each of r random sources joins a random surviving token."""
    b, n, _ = ctx.x.shape
    p, dev = ctx.num_prefix, ctx.x.device
    m = n - p
    perm = torch.rand(b, m, device=dev).argsort(dim=1) + p  # (B, m) unprotected positions
    src = perm[:, :r]
    kept = perm[:, r:].sort(dim=1).values  # (B, m - r) survivors, in sequence order
    dst = torch.randint(0, m - r, (b, r), device=dev) + p  # output slot of each source
    assign = torch.empty(b, n, dtype=torch.long, device=dev)
    assign[:, :p] = torch.arange(p, device=dev)
    assign.scatter_(1, kept, torch.arange(p, n - r, device=dev).expand(b, -1))
    assign.scatter_(1, src, dst)
    rep = torch.cat([torch.arange(p, device=dev).expand(b, -1), kept], dim=1)
    return group_merge_fns(assign, n - r, rep)
