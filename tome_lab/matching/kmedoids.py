"""K-Medoids: cluster the unprotected tokens around M - r medoid tokens, then merge each
cluster.

As in the token-reduction study of Haurum, Escalera, Taylor and Moeslund, "Which Tokens to
Use? Investigating Token Reduction in Vision Transformers" (ICCV Workshops 2023), and its
code (``models/kmedoids.py``): K = M - r medoids (M = N - p unprotected tokens), initialised
at the K tokens that receive the most attention, then ``iters`` alternations (the study's
default 3) of

1. assignment: each token joins its nearest medoid (Euclidean distance between tokens);
2. update: each cluster's medoid becomes the member i minimising sum_j w_j ||x_i - x_j|| over
   the members j of its cluster, w the attention each token receives;

and a last assignment. Each cluster then becomes one token through the combine rule (default
``wavg``: the size-weighted mean of its members).

Where tome_lab chose or deviates:

- **Feature and distance: the tokens, Euclidean** (the study's ``torch.cdist`` on the tokens;
  not the keys). The matcher reads ``ctx.x`` (tokens after the attention residual), so the
  ``feature`` / ``head_agg`` / ``distance`` knobs do not apply and are refused. The distance
  comes from one Gram matrix, sqrt(|x_i|^2 + |x_j|^2 - 2 x_i.x_j), with an exact zero diagonal.
- **Attention weights w:** the attention each unprotected token receives in *this* block
  (``MatchContext.attn.received``: the mean over heads and over every query, prefix queries
  included; proportional attention's log size included after merges). The study sums the
  *previous* block's attention over heads and queries (its clustering runs between blocks);
  a constant factor does not change the medoids.
- **The update step sums over the cluster's members, weighted by their w_j.** The study's
  code multiplies each candidate's row by its own weight w_i and sums its distances to *every*
  token of the image (its mask removes rows, not columns), which makes a medoid the member of
  least attention-weighted total distance to the whole image; tome_lab follows the
  definition of a (weighted) medoid instead.
  Since the first medoids are the most attended tokens and the update weights the members by
  their attention, a medoid moves only when its cluster is large: in the tests the
  alternations change the output only at strong reduction (r = 40 of 64 tokens), and one
  already gives the fixed point there.
- **Sizes** are not used in the clustering, only in the combine rule. The study's K-Medoids
  outputs the medoid tokens themselves, unaveraged: ``combine="keep"`` reproduces that (the
  medoid is each group's kept token), the default ``wavg`` merges each cluster.
- **A medoid always belongs to its own cluster** (as DPC-KNN's code forces for its centres),
  so no cluster is ever empty and the output has exactly N - r tokens.
- **Tie-breaks:** the initial medoids in ``topk`` order of attention; a token equidistant to
  two medoids joins the one earlier in that order; a cost tie picks the lower position.
- **Protected tokens** (class, distillation, registers) are left out of the clustering and
  stay alone and first; the clusters follow in the order of their medoids' positions.
- **Bound:** a clustering, not a bipartite matching: up to M - 1 tokens per block
  (``bound="all_but_one"``). Loop counts are ``iters`` (Python ints): one graph under
  ``torch.compile(fullgraph=True)``.

FLOPs (fvcore's convention): the Gram matrix, M * M * C per image (C the token width), and
the attention statistics the engine computes for ``received`` (N * N * heads * head_dim);
assignments and updates are gathers, element-wise sums and arg-mins, free in fvcore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns
from tome_lab.registry import MATCHING

if TYPE_CHECKING:
    from tome_lab.flops import ViTSpec


def _check_options(iters: int = 3) -> None:
    """Refuses an iteration count that is not an int >= 0."""
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"kmedoids needs an int iters >= 0 (alternations after the "
                         f"initialisation), got {iters!r}")


def euclidean(u: Tensor) -> Tensor:
    """[B, M, C] tokens -> [B, M, M] Euclidean distances from one Gram matrix (diagonal 0)."""
    g = u @ u.transpose(-1, -2)  # (B, M, M)
    sq = g.diagonal(dim1=1, dim2=2)  # (B, M) squared norms
    d = (sq[:, :, None] + sq[:, None, :] - 2 * g).clamp_min(0).sqrt()
    d.diagonal(dim1=1, dim2=2).fill_(0)
    return d


def nearest_centre(d: Tensor, centres: Tensor) -> Tensor:
    """Cluster slot of each token: its nearest centre (the first on a tie), each centre its own.

    Args:
        d: [B, M, M] distances.
        centres: [B, K] token indices of the centres, in slot order.

    Returns:
        [B, M] slot (0 .. K - 1) of each token.
    """
    b, m, _ = d.shape
    k = centres.shape[1]
    a = d.gather(2, centres[:, None, :].expand(b, m, k)).argmin(dim=-1)  # (B, M)
    return a.scatter(1, centres, torch.arange(k, device=d.device).expand(b, k))


def centre_merge_fns(a: Tensor, centres: Tensor, p: int) -> tuple[MergeFn, MergeFn]:
    """``merge`` / ``unmerge`` for clusters around centres: the prefix first, then the clusters
    in the order of their centres' positions, each centre the token ``combine="keep"`` keeps.

    Args:
        a: [B, M] slot of each unprotected token.
        centres: [B, K] unprotected-token index of each slot's centre.
        p: protected tokens in front.
    """
    b, m = a.shape
    k, dev = centres.shape[1], a.device
    pos, perm = centres.sort(dim=1)  # clusters in the order of their centres
    rank = perm.argsort(dim=1)  # output rank of each slot
    prefix = torch.arange(p, device=dev).expand(b, p)
    assign = torch.cat([prefix, rank.gather(1, a) + p], dim=1)  # (B, N)
    rep = torch.cat([prefix, pos + p], dim=1)  # (B, p + K)
    return group_merge_fns(assign, p + k, rep)


def float_tokens(x: Tensor) -> Tensor:
    """The tokens detached, in float32 unless they already are float32 / float64 (half
    precision would make the clustering's distances coarse)."""
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@MATCHING.register("kmedoids", "k-medoids")
@uses("combine", "keep", bound="all_but_one", attention=frozenset({"received"}))
def kmedoids(ctx: MatchContext, r: int, iters: int = 3) -> tuple[MergeFn, MergeFn]:
    """Clusters the unprotected tokens around M - r medoids; merges each cluster.

    Args:
        ctx: the block's inputs; reads ``x`` [B, N, C], ``attn.received`` [B, N],
            ``num_prefix``.
        r: tokens to remove (1 <= r <= M - 1, M = N - num_prefix).
        iters: assignment / update alternations after the initialisation.

    Returns:
        (merge, unmerge) of :func:`tome_lab.merge.group_merge_fns`: [B, N, C] -> [B, N - r, C].
    """
    _check_options(iters)
    p = ctx.num_prefix
    with torch.no_grad():
        u = float_tokens(ctx.x[:, p:])  # (B, M, C)
        b, m, _ = u.shape
        k = m - r
        w = ctx.attn.received[:, p:].to(u.dtype)  # (B, M) attention received
        d = euclidean(u)  # (B, M, M)
        wd = d * w[:, None, :]  # (B, M, M) w_j d(i, j)
        slots = torch.arange(k, device=u.device)
        med = w.topk(k, dim=1).indices  # (B, K) the most attended tokens
        for _ in range(iters):
            a = nearest_centre(d, med)  # (B, M)
            same = a[:, :, None] == a[:, None, :]  # (B, M, M) same cluster
            cost = (wd * same).sum(-1)  # (B, M) sum over the members j of w_j d(i, j)
            member = a[:, None, :] == slots[None, :, None]  # (B, K, M)
            med = torch.where(member, cost[:, None, :], torch.inf).argmin(dim=-1)  # (B, K)
        a = nearest_centre(d, med)
    return centre_merge_fns(a, med, p)


def _flops(spec: ViTSpec, n: int, r: int, iters: int = 3, block: int | None = None
           ) -> int:
    """The Gram matrix of the unprotected tokens (the attention statistics are added by
    :func:`tome_lab.flops.stats_flops`)."""
    m = n - spec.num_prefix
    return m * m * spec.embed_dim


kmedoids.check_options = _check_options
kmedoids.flops = _flops
