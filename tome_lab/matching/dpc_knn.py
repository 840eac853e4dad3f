"""DPC-KNN: density-peaks clustering with k nearest neighbours, then a merge of each cluster.

The clustering of TCFormer's token clustering-merging module (Zeng et al., "Not All Tokens Are
Equal: Human-centric Visual Analysis via Token Clustering Transformer", CVPR 2022), after
density peaks clustering with k nearest neighbours (Du, Ding and Jia, Knowledge-Based Systems
2016), as the token-reduction study of Haurum, Escalera, Taylor and Moeslund ("Which Tokens to
Use? Investigating Token Reduction in Vision Transformers", ICCV Workshops 2023) runs it
(its ``models/dpcknn.py``). For the M = N - p unprotected tokens x, with
d_ij = ||x_i - x_j|| / sqrt(C):

- local density rho_i = exp(-mean of d_ij^2 over the k nearest neighbours j of i), option
  ``k`` (the study's default 5);
- delta_i = the distance to the nearest denser token (for the densest token: the largest
  distance between any two tokens of the image);
- score_i = rho_i * delta_i; the K = M - r highest scores are the cluster centres;
- every other token joins its nearest centre; each cluster becomes one token through the
  combine rule (default ``wavg``: the size-weighted mean of its members).

Where tome_lab chose or deviates:

- **Feature: the tokens, Euclidean** (as the study and TCFormer; not the keys). The matcher
  reads ``ctx.x`` (tokens after the attention residual, where every tome_lab plug-in merges;
  the study clusters between blocks), so ``feature`` / ``head_agg`` / ``distance`` are
  refused. Distances come from one Gram matrix with an exact zero diagonal.
- **The k nearest neighbours include the token itself** (distance 0), as the reference code's
  ``topk`` over the full row does. When a block has fewer than k unprotected tokens, k is
  that count.
- **Tie-break by position, no noise.** The reference code adds uniform noise of 1e-6 to the
  densities to make them distinct; here a token is denser than another of equal density when
  it comes first, so exactly one token is the densest and the plug-in is deterministic. Ties in
  the score or in the nearest centre take the earlier (score order; lower slot).
- **Sizes are not used in the density** (the reference code weighs neither the density nor
  the distances by how many patches a token holds); they enter only through the combine rule.
  The study merges with learned token weights (TCFormer's score head) or equal weights; a
  training-free tome_lab uses the sizes instead.
- **Centres are kept tokens:** ``combine="keep"`` keeps each cluster's centre.
- **Protected tokens** (class, distillation, registers) are left out of the clustering and
  stay alone and first (as the study's code, which clusters ``x[:, num_tokens:]``); the
  clusters follow in the order of their centres' positions.
- **Bound:** a clustering, not a bipartite matching: up to M - 1 tokens per block
  (``bound="all_but_one"``). No data-dependent loop: one graph under
  ``torch.compile(fullgraph=True)``.

FLOPs (fvcore's convention): the Gram matrix, M * M * C per image (C the token width); the
k-nearest ``topk``, the densities and the assignment are free in fvcore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.kmedoids import centre_merge_fns, euclidean, float_tokens, nearest_centre
from tome_lab.merge import MergeFn
from tome_lab.registry import MATCHING

if TYPE_CHECKING:
    from tome_lab.flops import ViTSpec


def _check_options(k: int = 5) -> None:
    """Refuses a neighbour count that is not an int >= 1."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"dpc_knn needs an int k >= 1 (nearest neighbours for the density), "
                         f"got {k!r}")


@MATCHING.register("dpc_knn", "dpc-knn", "dpcknn")
@uses("combine", "keep", bound="all_but_one")
def dpc_knn(ctx: MatchContext, r: int, k: int = 5) -> tuple[MergeFn, MergeFn]:
    """Clusters the unprotected tokens around their M - r density peaks; merges each cluster.

    Args:
        ctx: the block's inputs; reads ``x`` [B, N, C] and ``num_prefix``.
        r: tokens to remove (1 <= r <= M - 1, M = N - num_prefix).
        k: nearest neighbours (the token itself included) of the local density.

    Returns:
        (merge, unmerge) of :func:`tome_lab.merge.group_merge_fns`: [B, N, C] -> [B, N - r, C].
    """
    _check_options(k)
    p = ctx.num_prefix
    with torch.no_grad():
        u = float_tokens(ctx.x[:, p:])  # (B, M, C)
        b, m, c = u.shape
        d = euclidean(u) / c ** 0.5  # (B, M, M)
        near = d.topk(min(k, m), dim=-1, largest=False).values  # (B, M, k) self included
        rho = (-near.pow(2).mean(dim=-1)).exp()  # (B, M) local density
        idx = torch.arange(m, device=u.device)
        # denser[b, i, j]: token j is denser than token i (equal densities: the earlier one)
        denser = (rho[:, None, :] > rho[:, :, None]) | (
            (rho[:, None, :] == rho[:, :, None]) & (idx[None, :] < idx[:, None]))
        d_max = d.flatten(1).amax(dim=1)[:, None, None]  # (B, 1, 1)
        delta = torch.where(denser, d, d_max).amin(dim=-1)  # (B, M)
        centres = (rho * delta).topk(m - r, dim=1).indices  # (B, K)
        a = nearest_centre(d, centres)
    return centre_merge_fns(a, centres, p)


def _flops(spec: ViTSpec, n: int, r: int, k: int = 5, block: int | None = None) -> int:
    """The Gram matrix of the unprotected tokens."""
    m = n - spec.num_prefix
    return m * m * spec.embed_dim


dpc_knn.check_options = _check_options
dpc_knn.flops = _flops
