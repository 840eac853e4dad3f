"""Greedy agglomerative merging: r times, merge the single most similar pair of tokens.

Unlike bipartite matching, a token may absorb several others in a chain, and similarities
are recomputed from the size-weighted mean feature of each new group. Each of the r steps
is one batched argmax over the [B, N, N] similarity matrix (no loop over tokens or images),
so the cost grows as r * N^2 instead of bipartite's N^2 / 4.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns, similarity
from tome_lab.registry import MATCHING


@MATCHING.register("greedy")
@uses("metric", "combine", "keep")
def greedy(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Merges the most similar pair r times; the lower position represents the group."""
    f = ctx.metric.detach().clone()
    b, n, _ = f.shape
    p, dev = ctx.num_prefix, f.device
    rows = torch.arange(b, device=dev)
    with torch.no_grad():
        w = (ctx.size[..., 0] if ctx.size is not None else f.new_ones(b, n)).clone()
        blocked = torch.zeros(b, n, dtype=torch.bool, device=dev)
        blocked[:, :p] = True  # protected tokens neither merge nor absorb
        sim = similarity(f, f, ctx.distance)  # (B, N, N)
        sim.diagonal(dim1=1, dim2=2).fill_(-math.inf)
        sim.masked_fill_(blocked[:, :, None] | blocked[:, None, :], -math.inf)
        root = torch.arange(n, device=dev).expand(b, n).clone()
        for step in range(r):
            flat = sim.flatten(1).argmax(dim=1)  # (B,)
            i = torch.minimum(flat // n, flat % n)
            j = torch.maximum(flat // n, flat % n)
            wi, wj = w[rows, i], w[rows, j]
            f[rows, i] = (f[rows, i] * wi[:, None] + f[rows, j] * wj[:, None]) / (wi + wj)[:, None]
            w[rows, i] = wi + wj
            root = torch.where(root == j[:, None], i[:, None], root)
            blocked[rows, j] = True
            if step == r - 1:  # the last merge needs no new similarities
                break
            s_i = similarity(f[rows, i][:, None], f, ctx.distance)[:, 0]  # (B, N)
            s_i = s_i.masked_fill(blocked, -math.inf)
            s_i[rows, i] = -math.inf
            sim[rows, i, :] = s_i
            sim[rows, :, i] = s_i
            sim[rows, j, :] = -math.inf
            sim[rows, :, j] = -math.inf
        alive = root == torch.arange(n, device=dev)  # group representatives
        rank = alive.long().cumsum(dim=1) - 1  # output slot of each representative
        assign = rank.gather(1, root)
        rep = alive.float().argsort(dim=1, descending=True, stable=True)[:, : n - r]
        rep = rep.sort(dim=1).values
    return group_merge_fns(assign, n - r, rep)


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """All pairs once, then one row per merge but the last: N^2 C + (r - 1) N C."""
    c = metric_width(spec)
    return n * n * c + (r - 1) * n * c  # all pairs once, then a row per merge but the last


greedy.flops = _flops
