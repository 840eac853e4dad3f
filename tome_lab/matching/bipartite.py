"""Bipartite soft matching, exactly as published in ToMe (Bolya et al., ICLR 2023, Alg. 1).

Tokens are dealt alternately into sets A and B over the whole sequence, prefix included: a
class token heads A and may not be a source, a distillation token heads B and may not be a
destination. Each A token picks its most similar B token; the r best such edges are merged.
Output order: unmerged A tokens in their original order, then B (protected prefix first).
With another partition plug-in, A and B are drawn from the unprotected tokens only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, bipartite_merge_fns, similarity
from tome_lab.registry import MATCHING, PARTITIONS


def _best_edges(scores: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """(unm_idx, src_idx, dst_idx) from [B, Na, Nb] scores: the r best A->B edges."""
    node_max, node_idx = scores.max(dim=-1)  # (B, Na) best partner in B
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]  # (B, Na, 1)
    unm_idx = edge_idx[:, r:].sort(dim=1).values  # keep A's original order
    src_idx = edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    return unm_idx, src_idx, dst_idx


def match_sets(ctx: MatchContext, r: int, a_idx: Tensor, b_idx: Tensor) -> tuple[MergeFn, MergeFn]:
    """Bipartite matching between explicit sets of unprotected positions ([B, Na], [B, Nb])."""
    with torch.no_grad():
        c = ctx.metric.shape[-1]
        a = ctx.metric.gather(1, a_idx[..., None].expand(-1, -1, c))
        b = ctx.metric.gather(1, b_idx[..., None].expand(-1, -1, c))
        edges = _best_edges(similarity(a, b, ctx.distance), r)
    return bipartite_merge_fns(*edges, num_prefix=ctx.num_prefix, a_idx=a_idx, b_idx=b_idx)


@MATCHING.register("bipartite", "tome", "bsm")
@uses("metric", "partition", "combine", "keep")
def bipartite(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Bipartite soft matching on ``ctx.metric``; returns ``(merge, unmerge)``."""
    n, p = ctx.metric.shape[1], ctx.num_prefix
    sets = PARTITIONS.get(ctx.partition)(n, p, ctx.metric.shape[0], ctx.metric.device)
    if sets is not None:
        return match_sets(ctx, r, *sets)
    b_prefix = p // 2  # alternate split: prefix positions 1, 3, ... land in B
    with torch.no_grad():
        a, b = ctx.metric[:, ::2], ctx.metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = similarity(a, b, ctx.distance)  # (B, Na, Nb)
        if p:
            scores[:, : p - b_prefix, :] = -math.inf  # protected A tokens: never a source
            scores[:, :, :b_prefix] = -math.inf  # protected B tokens: never a destination
        edges = _best_edges(scores, r)
    return bipartite_merge_fns(*edges, num_prefix=p, b_prefix=b_prefix)
