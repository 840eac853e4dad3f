"""Per-block (p, m) pairs: block i prunes p_i tokens, then merges m_i (``schedule="pairs"``).

The schedule of the composite reduction (:mod:`tome_lab.matching.composite`), implied when
its ``pairs`` option is given: each block's r is p + m. ``r`` itself is ignored (as
``constant_flops`` ignores it). Every pair is checked here, at patch time, against the tokens
its block receives: at most M - 1 of the M unprotected tokens pruned (one is always kept),
and at most half of those left merged (bipartite matching's bound), so no block is clamped
and the analytic FLOP count follows the pairs exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from tome_lab.flops import ViTSpec
from tome_lab.registry import SCHEDULES


@SCHEDULES.register("pairs")
def pairs(r: int | Sequence[int], spec: ViTSpec, pairs: Sequence[Sequence[int]] | None = None
          ) -> list[int]:
    """``[p + m for (p, m) in pairs]`` after checking every pair fits its block."""
    from tome_lab.matching.composite import check_pairs

    if pairs is None:
        raise ValueError("schedule 'pairs' needs the option pairs=[[p, m], ...] (tokens pruned "
                         "then merged, one pair per block)")
    if spec.matching != "composite":
        raise ValueError(f"schedule 'pairs' prunes then merges in each block: it goes with "
                         f"matching 'composite', not {spec.matching!r}")
    got = check_pairs(pairs)
    if len(got) != spec.depth:
        raise ValueError(f"pairs has {len(got)} entries for a model with {spec.depth} blocks: "
                         f"give exactly one [p, m] per block")
    n = spec.num_tokens
    for i, (p, m) in enumerate(got):
        left = n - spec.num_prefix  # unprotected tokens entering block i
        if p > max(left - 1, 0):
            raise ValueError(f"pairs[{i}] = [{p}, {m}] prunes {p} of the {left} unprotected "
                             f"tokens block {i} receives; at most {max(left - 1, 0)} (one is "
                             f"always kept)")
        if m > (left - p) // 2:
            raise ValueError(f"pairs[{i}] = [{p}, {m}] merges {m} of the {left - p} unprotected "
                             f"tokens left after pruning in block {i}; bipartite matching "
                             f"merges at most half, {(left - p) // 2}")
        n -= p + m
    return [p + m for p, m in got]
