"""Hard k-means: cluster the unprotected tokens into N - prefix - r groups per block.

Batched Lloyd iterations with a fixed count, size-weighted centroids, and deterministic
seeding (centroids start at tokens spread evenly over the sequence, i.e. over the image in
raster order). A cluster left empty takes the token that fits its own cluster worst, so the
output always has exactly N - r tokens. Each iteration is one [B, M, K] similarity.
"""

from __future__ import annotations

from typing import Any

import torch

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns, similarity
from tome_lab.registry import MATCHING


@MATCHING.register("kmeans", "k-means")
@uses("metric", "combine")
def kmeans(ctx: MatchContext, r: int, iters: int = 5) -> tuple[MergeFn, MergeFn]:
    """Clusters tokens p.. into K = N - p - r groups; protected tokens stay alone."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"kmeans needs an int iters >= 1, got {iters!r}")
    b, n, c = ctx.metric.shape
    p, dev = ctx.num_prefix, ctx.metric.device
    m, k = n - p, n - p - r
    with torch.no_grad():
        u = ctx.metric[:, p:].float()  # (B, M, C)
        w = ctx.size[:, p:, 0].float() if ctx.size is not None else u.new_ones(b, m)
        seeds = torch.linspace(0, m - 1, k, device=dev).round().long()
        cent = u[:, seeds]  # (B, K, C)
        for _ in range(iters):
            a = similarity(u, cent, ctx.distance).argmax(dim=-1)  # (B, M)
            num = u.new_zeros(b, k, c).scatter_add_(1, a[..., None].expand(-1, -1, c),
                                                     u * w[..., None])
            den = u.new_zeros(b, k).scatter_add_(1, a, w)
            cent = torch.where(den[..., None] > 0, num / den.clamp_min(1e-12)[..., None], cent)
        s = similarity(u, cent, ctx.distance)  # (B, M, K)
        a = s.argmax(dim=-1)
        # Refill empty clusters with the tokens that fit their own cluster worst. The pass
        # count and the candidate count (k) are fixed, with a validity mask instead of a
        # data-dependent size or early exit, so the whole matcher traces into one graph
        # (torch.compile fullgraph); one pass nearly always suffices.
        slots = torch.arange(k, device=dev)
        for _ in range(4):
            counts = torch.zeros(b, k, device=dev).scatter_add_(1, a, torch.ones_like(w))
            n_empty = (counts == 0).sum(dim=1)  # (B,)
            fit = s.gather(-1, a[..., None])[..., 0]  # similarity to own centroid
            fit = fit.masked_fill(counts.gather(1, a) <= 1, float("inf"))  # keep singletons
            worst = fit.argsort(dim=1)[:, :k]  # (B, k) tokens that fit worst (k <= m)
            empty = (counts == 0).float().argsort(dim=1, descending=True, stable=True)
            valid = slots < n_empty[:, None]  # (B, k): only the first n_empty move
            a = a.scatter(1, worst, torch.where(valid, empty, a.gather(1, worst)))
        assign = torch.cat([torch.arange(p, device=dev).expand(b, -1), a + p], dim=1)
    return group_merge_fns(assign, n - r)


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """One [M, K] similarity per pass, iters + 1 passes: (iters + 1) M (M - r) C."""
    c, m = metric_width(spec), n - spec.num_prefix
    return (options.get("iters", 5) + 1) * m * (m - r) * c  # one [M, K] similarity per pass


kmeans.flops = _flops
