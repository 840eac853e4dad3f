"""Truncation: drop the last r tokens of the sequence, scoring nothing.

Not a method from the literature but a measuring stick: a block that removes r tokens and
computes nothing to choose them (no feature, similarity, sort or gather; the kept tokens are a
view of the first N - r). Timed beside bipartite matching at the same r, it separates what
the matching costs from what the smaller token count gains
(``benchmarks/batch_sizes.py --floor``). Its sizes stay 1, so with proportional attention on,
the blocks still build and pass an all-zero mask, as bipartite's pass theirs; time it with
``prop_attn=False`` for the cheapest reduction a patched block runs. As a reduction it is a
naive baseline: which tokens go depends only on their position. The protected prefix heads
the sequence, so it is never dropped.
"""

from __future__ import annotations

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, truncate_fns
from tome_lab.registry import MATCHING


@MATCHING.register("truncate")
@uses(reduction="prune")
def truncate(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Keeps the first N - r tokens (the prefix among them) and drops the rest."""
    return truncate_fns(ctx.x.shape[1], r)
