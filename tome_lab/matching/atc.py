"""Agglomerative Token Clustering (ATC): bottom-up hierarchical clustering of the tokens.

Haurum, Escalera, Taylor and Moeslund, "Agglomerative Token Clustering", ECCV 2024. In each
block the unprotected tokens start as singleton clusters; the two closest clusters merge, the
distances to the new cluster follow the linkage function, and this repeats until N - p - r
clusters remain (p protected tokens). Each cluster then becomes one token through the combine
rule (default ``wavg``: the size-weighted mean of its members, as the paper's merge).

What is implemented, and where tome_lab chose:

- **Distance.** The paper clusters the keys averaged over heads with the cosine distance
  1 - cos (its code: sklearn's ``AgglomerativeClustering`` on a precomputed 1 - cos matrix).
  Here the metric is the configured one (``feature``, ``head_agg``, ``distance``; the
  defaults are the paper's keys and cosine), and the clustering runs on the similarity s of
  :func:`tome_lab.merge.similarity`, merging the pair of largest linkage similarity. For the
  cosine that is the paper's rule: single, complete and average linkage of d = 1 - s rank
  cluster pairs exactly as the same linkage of s does in reverse (min d = 1 - max s, max d =
  1 - min s, mean d = 1 - mean s). ``dot`` and ``euclidean`` use d = -s (for ``euclidean``,
  the squared distance).
- **Linkage** (option ``linkage``): ``single`` (closest members), ``complete`` (farthest
  members) or ``average`` (UPGMA, the mean over all member pairs, as sklearn's
  ``"average"``). Default ``complete``: the linkage of the paper's DeiT fine-tuning command and
  of its method figure. The official ``agglomerative_clustering`` function itself defaults to
  ``"average"``, and the paper reports each linkage per task; all three are here.
- **Batched, in torch, no scipy / sklearn.** One [B, M, M] similarity (M = N - p), then r
  merge steps, each an argmax over the flattened matrix and a Lance-Williams update of the
  merged cluster's row and column (max, min, or the member-count-weighted mean of the two
  rows). The loop count is r, a Python int, so ``torch.compile(fullgraph=True)`` unrolls it.
- **Cluster sizes in the linkage** are member counts at this block (sklearn's), not ToMe's
  token sizes: a token that already holds s patches counts once in the average linkage. Sizes
  enter only through the combine rule.
- **Tie-break.** The first maximum of the flattened similarity in row-major order: the pair
  whose smaller-index cluster comes first (a cluster's row is its lowest member position),
  then the lower partner. sklearn's order on exact ties is not specified.
- **Protected tokens.** The paper's code leaves only the class token out of the clustering
  (a distillation token would have been clustered); here every prefix token (class,
  distillation, registers) stays alone and first.
- **Output order.** The prefix, then the clusters in the order of their lowest member position.
  Clusters have no natural representative, so ``combine="keep"`` is refused.
- **Bound.** A clustering is not a bipartite matching: a block may remove up to M - 1 tokens
  (``bound="all_but_one"``).
- **Where it merges.** As every tome_lab plug-in, after the attention residual and before the
  MLP of a block (the paper's blocks do the same).

FLOPs (fvcore's convention): the one similarity matrix, M * M * C' for a metric of width C'
per image; the r merge steps are element-wise, arg-max and scatter work, which fvcore counts
as free (the img/s column is the check on them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns, similarity
from tome_lab.registry import MATCHING

if TYPE_CHECKING:
    from tome_lab.flops import ViTSpec

LINKAGES = ("single", "complete", "average")


def _check_options(linkage: str = "complete") -> None:
    """Refuses an unknown linkage at configuration time."""
    if linkage not in LINKAGES:
        raise ValueError(f"unknown atc linkage {linkage!r}; valid: {', '.join(LINKAGES)}")


@MATCHING.register("atc", "agglomerative")
@uses("metric", "combine", bound="all_but_one")
def atc(ctx: MatchContext, r: int, linkage: str = "complete") -> tuple[MergeFn, MergeFn]:
    """Clusters the unprotected tokens agglomeratively into M - r clusters.

    Args:
        ctx: the block's inputs; reads ``metric`` [B, N, C'], ``num_prefix``, ``distance``.
        r: clusters to remove (1 <= r <= M - 1, M = N - num_prefix).
        linkage: ``single``, ``complete`` or ``average``.

    Returns:
        (merge, unmerge) of :func:`tome_lab.merge.group_merge_fns`: [B, N, C] -> [B, N - r, C].
    """
    _check_options(linkage)
    b, n, _ = ctx.metric.shape
    p, dev = ctx.num_prefix, ctx.metric.device
    m = n - p
    rows = torch.arange(b, device=dev)
    with torch.no_grad():
        u = ctx.metric[:, p:].detach()
        if u.dtype not in (torch.float32, torch.float64):
            u = u.float()
        s = similarity(u, u, ctx.distance)  # (B, M, M)
        s.diagonal(dim1=1, dim2=2).fill_(-math.inf)
        count = u.new_ones(b, m)  # members of each cluster (average linkage's weights)
        dead = torch.zeros(b, m, dtype=torch.bool, device=dev)
        root = torch.arange(m, device=dev).expand(b, m).clone()  # each token's cluster row
        for _ in range(r):
            flat = s.flatten(1).argmax(dim=1)  # (B,) first maximum, row-major
            i = torch.minimum(flat // m, flat % m)
            j = torch.maximum(flat // m, flat % m)
            si, sj = s[rows, i], s[rows, j]  # (B, M) the two rows
            if linkage == "single":
                new = torch.maximum(si, sj)
            elif linkage == "complete":
                new = torch.minimum(si, sj)
            else:
                ci, cj = count[rows, i][:, None], count[rows, j][:, None]
                new = (ci * si + cj * sj) / (ci + cj)
            dead[rows, j] = True
            count[rows, i] = count[rows, i] + count[rows, j]
            root = torch.where(root == j[:, None], i[:, None], root)
            new = new.masked_fill(dead, -math.inf)
            new[rows, i] = -math.inf
            s[rows, i, :] = new
            s[rows, :, i] = new
            s[rows, j, :] = -math.inf
            s[rows, :, j] = -math.inf
        alive = ~dead  # cluster rows, each its lowest member
        rank = alive.long().cumsum(dim=1) - 1  # output slot of each cluster
        assign = rank.gather(1, root) + p
        assign = torch.cat([torch.arange(p, device=dev).expand(b, p), assign], dim=1)
    return group_merge_fns(assign, n - r)


def _flops(spec: ViTSpec, n: int, r: int, linkage: str = "complete",
           block: int | None = None) -> int:
    """The one [M, M] similarity of the metric (its width: ``spec.metric_dim``)."""
    m = n - spec.num_prefix
    return m * m * (spec.metric_dim or spec.head_dim)


atc.check_options = _check_options
atc.flops = _flops
