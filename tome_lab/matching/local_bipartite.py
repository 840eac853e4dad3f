"""Local (windowed) bipartite soft matching: ToMe's matching with partners only nearby.

Bipartite soft matching as in :mod:`tome_lab.matching.bipartite` (Bolya et al., "Token
Merging: Your ViT But Faster", ICLR 2023, Alg. 1: the alternate A/B split over the whole
sequence, prefix included; each A token picks its most similar B token; the r best edges
merge), except that an A token may only pick a B token whose grid position lies within
``window`` patches (Chebyshev distance, i.e. a (2 window + 1)^2 square around it). It is not
a published method: the issue asks for it because windowed partners keep every merge local,
which dense tasks need. Positions come from the block protocol (``MatchContext.position``,
the size-weighted mean grid position of each token's patches), so a merged token sits at
its patches' centre of mass and the window is measured from there.

Choices tome_lab made (none has a paper to follow):

- ``window=2`` by default: on the alternate split of a row-major grid with an even number of
  columns, every B token of block 0 is a horizontal neighbour (distance 1) of an A token, so
  window 1 would already allow every first merge; after merges, positions become means and
  drift apart, and window 2 (a 5 x 5 neighbourhood, 2 x 32 px on a 16 px-patch 224 px
  image) keeps candidate partners for most A tokens through the middle blocks while still
  forbidding any merge across the image. A window at least the grid's larger side is plain
  bipartite matching, exactly (tested).
- Distances are compared in whole units of 1e-5 patches (rounded): positions are float
  means of integer grid coordinates, so two distances equal in exact arithmetic may differ by
  rounding, and rounding must not decide which partner is inside the window or nearest; two
  that really differ do so by at least 1 / (s1 s2) for token sizes s1, s2 (2.6e-5 for sizes
  up to 196, the patches of a 224 px image), more than the unit.
- Scores are masked to -inf outside the window before the best-edge selection, so an A token
  with a partner in its window ranks by its best in-window similarity, and an A token with
  no partner in its window ranks after all of those: it is never a source while at least r
  A tokens have a partner in their window. When fewer do (late blocks, few tokens spread
  thin, or a small window), the block must still remove exactly r tokens (a fixed output
  shape, batched and traceable), so the remaining sources are the A tokens nearest to any B
  token, each merged into its nearest B token (ties by similarity). That is the one place
  where a merge may leave the window; the test of locality runs where it does not happen,
  and the reference implements the same rule.
- Prefix tokens are protected exactly as in ``bipartite``: dealt into A and B, never a
  source or a destination, kept first in order. The unmerged A tokens follow the
  ``order`` option of ``bipartite`` (``published``: sequence order only with a class token).
- Only the alternate split: the ``partition`` knob is refused (a random or halves split
  would change which partners are near, which this matcher exists to control).

Cost: the [N/2, N/2] similarity of ``bipartite``; the distances are element-wise.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import ORDERS, _best_edges
from tome_lab.merge import MergeFn, bipartite_merge_fns, similarity
from tome_lab.registry import MATCHING

UNITS = 1e5  # distances are compared in whole units of 1e-5 patches (module docstring)


def _ranked_scores(scores: Tensor, dist: Tensor, window: float, b_prefix: int) -> Tensor:
    """A score matrix on which :func:`bipartite._best_edges` selects the windowed edges.

    Each unprotected A row holds one finite entry, minus its rank, at its chosen partner
    (its most similar B token within the window, else its nearest B token); every other
    entry is -inf. Rows with an in-window partner rank first, by similarity; then the
    others, by distance to their nearest B token, then by similarity.

    Args:
        scores: [B, Na, Nb] similarities of A to B (overwritten: NaN and infinities become
            finite, as ``_best_edges`` does).
        dist: [B, Na, Nb] Chebyshev distances between the tokens' grid positions.
        window: the largest distance of a partner.
        b_prefix: protected tokens heading B (never a partner).

    Returns:
        [B, Na, Nb] ranked scores.
    """
    info = torch.finfo(scores.dtype)
    torch.nan_to_num_(scores, nan=info.min, posinf=info.max, neginf=info.min)
    dist = torch.round(dist * UNITS)  # whole units: rounding of mean positions never decides
    if b_prefix:
        dist[..., :b_prefix] = math.inf  # protected B tokens are nobody's partner
    inside = dist <= round(window * UNITS)  # (B, Na, Nb)
    best, best_idx = scores.masked_fill(~inside, -math.inf).max(dim=-1)  # (B, Na)
    has = inside.any(dim=-1)
    near = dist.amin(dim=-1)  # (B, Na) distance to the nearest unprotected B token
    nearest = dist <= near[..., None]
    fall, fall_idx = scores.masked_fill(~nearest, -math.inf).max(dim=-1)
    partner = torch.where(has, best_idx, fall_idx)
    # two stable sorts: by similarity (descending), then by tier (in-window rows first,
    # then the others by distance to their nearest B token)
    order = torch.where(has, best, fall).argsort(dim=-1, descending=True, stable=True)
    tier = torch.where(has, torch.full_like(near, -1.0), near).gather(1, order)
    order = order.gather(1, tier.argsort(dim=-1, stable=True))
    ranks = torch.arange(order.shape[1], device=order.device, dtype=scores.dtype)
    rank = torch.empty_like(order, dtype=scores.dtype).scatter_(1, order, ranks.expand_as(order))
    ranked = torch.full_like(scores, -math.inf)
    return ranked.scatter_(2, partner[..., None], -rank[..., None])


@MATCHING.register("local_bipartite", "local", "windowed_bipartite")
@uses("metric", "combine", "keep", positions=True)
def local_bipartite(ctx: MatchContext, r: int, window: float = 2, order: str = "published"
                    ) -> tuple[MergeFn, MergeFn]:
    """Bipartite soft matching with partners within ``window`` grid patches.

    Args:
        ctx: the block's metric [B, N, C], positions [B, N, 2], prefix count and distance.
        r: tokens to merge (1 <= r <= (N - prefix) // 2).
        window: the largest Chebyshev distance, in patches, between an A token and its
            partner (see the module docstring for the rare fallback).
        order: ``published`` or ``sorted``, as for ``bipartite``.

    Returns:
        ``(merge, unmerge)`` as ``bipartite`` returns them.
    """
    n, p = ctx.metric.shape[1], ctx.num_prefix
    b_prefix = p // 2  # alternate split: prefix positions 1, 3, ... land in B
    a_prefix = p - b_prefix
    with torch.no_grad():
        metric, distance = ctx.metric, ctx.distance
        if distance == "cosine":  # as bipartite: normalise once, then dot products
            metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            distance = "dot"
        scores = similarity(metric[:, ::2], metric[:, 1::2], distance)  # (B, Na, Nb)
        pos = ctx.position.to(scores.dtype if scores.is_floating_point() else torch.float32)
        dist = (pos[:, ::2, None] - pos[:, None, 1::2]).abs().amax(dim=-1)  # (B, Na, Nb)
        ranked = _ranked_scores(scores, dist, float(window), b_prefix)
        keep_order = order == "sorted" or ctx.class_token
        edges = _best_edges(ranked, r, keep_order, a_prefix, b_prefix)
    return bipartite_merge_fns(*edges, n, num_prefix=p, b_prefix=b_prefix)


def _check_options(window: float = 2, order: str = "published") -> None:
    if (not isinstance(window, numbers.Real) or isinstance(window, bool)
            or not math.isfinite(window) or window <= 0):
        raise ValueError(f"local_bipartite needs a window > 0 (patches, Chebyshev distance), "
                         f"got {window!r}; e.g. 1, 2 (the default) or 3")
    if order not in ORDERS:
        raise ValueError(f"unknown local_bipartite order {order!r}; valid: {', '.join(ORDERS)}")


def _flops(spec: ViTSpec, n: int, r: int, window: float = 2, order: str = "published",
           block: int | None = None) -> int:
    """The [ceil(N/2), floor(N/2)] similarity over the whole sequence (protected rows and
    columns included, as ``bipartite``); distances and ranks are element-wise."""
    return ((n + 1) // 2) * (n // 2) * (spec.metric_dim or spec.head_dim)


local_bipartite.check_options = _check_options
local_bipartite.flops = _flops
