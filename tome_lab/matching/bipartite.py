"""Bipartite soft matching as published in ToMe (Bolya et al., ICLR 2023, Alg. 1).

Tokens are dealt alternately into sets A and B over the whole sequence, prefix included: a
class token heads A and may not be a source, a distillation token heads B and may not be a
destination. Each A token picks its most similar B token; the r best such edges are merged.
Output: the protected prefix first, in order; then the unmerged A tokens; then B.

The order of the unmerged A tokens is the ``order`` option. ``"published"`` (the default)
does what the paper's code does: it sorts them back into sequence order only when the model
has a class token, and otherwise leaves them in descending order of their best score, which
changes the A/B split of every later block. ``"sorted"`` always restores sequence order.
Registers, which the paper never saw, are tome_lab's choice: protected like a class token,
dealt into A and B like any token, and kept first.

With another partition plug-in, A and B are drawn from the unprotected tokens only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, bipartite_merge_fns, similarity
from tome_lab.registry import MATCHING, PARTITIONS

ORDERS = ("published", "sorted")


def _best_edges(scores: Tensor, r: int, keep_order: bool, a_prefix: int = 0, b_prefix: int = 0
                ) -> tuple[Tensor, Tensor, Tensor]:
    """(unm_idx, src_idx, dst_idx) from the r best A -> B edges.

    Args:
        scores: [B, Na, Nb] similarities of A to B, protected tokens included; overwritten
            here: NaN and -inf become the lowest finite value, +inf the highest, and the rows
            of the protected A tokens and the columns of the protected B tokens -inf, so that
            they are never a source or a destination.
        r: edges to merge (at most Na - a_prefix).
        keep_order: sort the unmerged A tokens back into sequence order.
        a_prefix: protected tokens heading A (kept first, never a source).
        b_prefix: protected tokens heading B (never a destination).

    Returns:
        [B, Na - r], [B, r], [B, r] indices into A, A and B.
    """
    # A NaN or infinite score (fp16 overflow of a dot product, a NaN key) on an unprotected
    # token must sort strictly between the protected rows and never tie with them: a tie with
    # -inf could make a protected token a source, and the prefix bookkeeping below assumes
    # the protected rows sort last. Finite stand-ins keep every real token in play.
    info = torch.finfo(scores.dtype)
    torch.nan_to_num_(scores, nan=info.min, posinf=info.max, neginf=info.min)
    if a_prefix:
        scores[:, :a_prefix].fill_(-math.inf)
    if b_prefix:
        scores[..., :b_prefix].fill_(-math.inf)
    node_max, node_idx = scores.max(dim=-1)  # (B, Na) best partner in B
    edge_idx = node_max.argsort(dim=-1, descending=True)  # (B, Na)
    unm_idx = edge_idx[:, r:]  # the protected rows (-inf) sort last, so they are here
    src_idx = edge_idx[:, :r]
    dst_idx = node_idx.gather(1, src_idx)
    if keep_order:  # sequence order puts the protected rows (0 .. a_prefix - 1) first too
        unm_idx = unm_idx.sort(dim=1).values
    elif a_prefix:  # score order for the others, the protected rows moved to the front
        head = torch.arange(a_prefix, device=scores.device).expand(scores.shape[0], a_prefix)
        unm_idx = torch.cat([head, unm_idx[:, :-a_prefix]], dim=1)
    return unm_idx, src_idx, dst_idx


def match_sets(ctx: MatchContext, r: int, a_idx: Tensor, b_idx: Tensor) -> tuple[MergeFn, MergeFn]:
    """Bipartite matching between explicit sets of unprotected positions ([B, Na], [B, Nb])."""
    with torch.no_grad():
        c = ctx.metric.shape[-1]
        a = ctx.metric.gather(1, a_idx[..., None].expand(-1, -1, c))
        b = ctx.metric.gather(1, b_idx[..., None].expand(-1, -1, c))
        edges = _best_edges(similarity(a, b, ctx.distance), r, keep_order=True)
    return bipartite_merge_fns(*edges, ctx.metric.shape[1], num_prefix=ctx.num_prefix,
                               a_idx=a_idx, b_idx=b_idx)


def _check_options(order: str = "published") -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown bipartite order {order!r}; valid: {', '.join(ORDERS)}")


@MATCHING.register("bipartite", "tome", "bsm")
@uses("metric", "partition", "combine", "keep")
def bipartite(ctx: MatchContext, r: int, order: str = "published") -> tuple[MergeFn, MergeFn]:
    """Bipartite soft matching on ``ctx.metric``; returns ``(merge, unmerge)``.

    Args:
        ctx: the block's metric [B, N, C], prefix count, distance and partition.
        r: tokens to merge (1 <= r <= (N - prefix) // 2).
        order: ``published`` (sequence order only with a class token, as the paper's code)
            or ``sorted`` (always sequence order) for the unmerged A tokens.
    """
    n, p = ctx.metric.shape[1], ctx.num_prefix
    sets = PARTITIONS.get(ctx.partition)(n, p, ctx.metric.shape[0], ctx.metric.device)
    if sets is not None:
        return match_sets(ctx, r, *sets)
    b_prefix = p // 2  # alternate split: prefix positions 1, 3, ... land in B
    a_prefix = p - b_prefix
    with torch.no_grad():
        metric, distance = ctx.metric, ctx.distance
        if distance == "cosine":  # normalise the whole sequence once rather than A and B apart
            metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            distance = "dot"
        scores = similarity(metric[:, ::2], metric[:, 1::2], distance)  # (B, Na, Nb)
        keep_order = order == "sorted" or ctx.class_token
        edges = _best_edges(scores, r, keep_order, a_prefix, b_prefix)
    return bipartite_merge_fns(*edges, n, num_prefix=p, b_prefix=b_prefix)


bipartite.check_options = _check_options  # apply_config calls it at patch time


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """One [Na, Nb] similarity matrix: the whole sequence split alternately, or the unprotected
    tokens split by another partition."""
    c, m = metric_width(spec), n - spec.num_prefix
    if spec.partition == "alternate":  # every A row and B column, protected ones set to -inf
        return ((n + 1) // 2) * (n // 2) * c
    return (m // 2) * (m - m // 2) * c  # halves / random partitions of the unprotected


bipartite.flops = _flops
