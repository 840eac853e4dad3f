"""Bipartite soft matching, exactly as published in ToMe (Bolya et al., ICLR 2023, Alg. 1).

Tokens are dealt alternately into sets A and B over the whole sequence, prefix included: a
class token heads A and may not be a source, a distillation token heads B and may not be a
destination. Each A token picks its most similar B token; the r best such edges are merged.
Output order: unmerged A tokens in their original order, then B (protected prefix first).
"""

from __future__ import annotations

import math

import torch

from tome_lab.matching._context import MatchContext
from tome_lab.merge import MergeFn, bipartite_merge_fns, similarity
from tome_lab.registry import MATCHING


@MATCHING.register("bipartite", "tome", "bsm")
def bipartite(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Bipartite soft matching on ``ctx.metric``; returns ``(merge, unmerge)``."""
    p = ctx.num_prefix
    b_prefix = p // 2  # alternate split: prefix positions 1, 3, ... land in B
    with torch.no_grad():
        a, b = ctx.metric[:, ::2], ctx.metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
        scores = similarity(a, b, ctx.distance)  # (B, Na, Nb)
        if p:
            scores[:, : p - b_prefix, :] = -math.inf  # protected A tokens: never a source
            scores[:, :, :b_prefix] = -math.inf  # protected B tokens: never a destination
        node_max, node_idx = scores.max(dim=-1)  # (B, Na) best partner in B
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]  # (B, Na, 1)
        unm_idx = edge_idx[:, r:].sort(dim=1).values  # keep A's original order
        src_idx = edge_idx[:, :r]
        dst_idx = node_idx[..., None].gather(1, src_idx)
    return bipartite_merge_fns(unm_idx, src_idx, dst_idx, p, b_prefix)
