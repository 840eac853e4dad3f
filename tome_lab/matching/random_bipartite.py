"""Bipartite matching with set A drawn at random (B the rest), best partner in B."""

from __future__ import annotations

from typing import Any

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import match_sets
from tome_lab.merge import MergeFn
from tome_lab.registry import MATCHING, PARTITIONS


@MATCHING.register("random_bipartite")
@uses("metric", "combine", "keep", stochastic=True)
def random_bipartite(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """A random half of the unprotected tokens are sources; each merges into its best B."""
    b, n, _ = ctx.metric.shape
    sets = PARTITIONS.get("random")(n, ctx.num_prefix, b, ctx.metric.device)
    return match_sets(ctx, r, *sets)


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """One [M/2, M - M/2] similarity matrix over the unprotected tokens."""
    c, m = metric_width(spec), n - spec.num_prefix
    return (m // 2) * (m - m // 2) * c


random_bipartite.flops = _flops
