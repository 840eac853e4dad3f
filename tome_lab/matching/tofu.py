"""ToFu, Token Fusion (Kim et al., "Token Fusion: Bridging the Gap between Token Pruning and
Token Merging", WACV 2024).

The paper's observation: averaging two tokens is harmless where a block responds almost
linearly to interpolated inputs (the later blocks) and harmful where it does not (the early
ones), where keeping one token of the pair and dropping the other works better. ToFu therefore
runs ToMe's bipartite soft matching in every block and fuses each matched pair

- before the switch block, pruning-style: the destination is kept as it is and the source is
  dropped (``merge(x, mode="keep")``);
- from the switch block on, with MLERP (:mod:`tome_lab.combine.mlerp`): the size-weighted
  average of the group, rescaled to the largest member's norm.

Where tome_lab chose or deviated:

- **ToFu fixes its own combine rule** (keep, then MLERP), so it does not declare the
  ``combine`` knob: a ``combine`` other than the default is refused at configuration time
  (compare MLERP with other matchers through ``combine="mlerp"`` instead). The engine's
  default rule calls ``merge_wavg``, which uses a merge's own ``wavg``; ToFu's merge carries
  its fusion there, so that the engine runs it unchanged.
- **The switch block** (``switch``, the first block that merges with MLERP) defaults to
  ``depth // 2 + 1``: the port of ToFu in OpenToMe (Westlake-AI), the one released code we
  could read, prunes in blocks 0 .. depth // 2 and merges after (blocks 7-11 of 12). We could
  not check the paper's own choice of layer; ``switch=0`` merges everywhere, ``switch=depth``
  prunes everywhere.
- **Sizes** add up in both phases: a kept destination stands for the tokens dropped into it
  (as ``combine="keep"`` does here), so proportional attention and ``trace_source`` see the
  group; with pruning proper its size would stay.
- The matching is tome_lab's ``bipartite`` with its defaults (the alternate split, the
  published order, prefix tokens protected), so ``partition`` applies; its cost is bipartite's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tome_lab.combine._size import merged_size
from tome_lab.combine.mlerp import mlerp
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import bipartite
from tome_lab.merge import MergeFn
from tome_lab.registry import MATCHING


def _check_options(switch: int | None = None) -> None:
    if switch is not None and (isinstance(switch, bool) or not isinstance(switch, int)
                               or switch < 0):
        raise ValueError(f"tofu switch must be None (depth // 2 + 1) or an int >= 0 (the first "
                         f"block that merges with MLERP), got {switch!r}")


def switch_block(depth: int, switch: int | None = None) -> int:
    """The first block that merges with MLERP (the earlier ones keep the destination)."""
    return depth // 2 + 1 if switch is None else switch


@MATCHING.register("tofu", "token_fusion")
@uses("metric", "partition")
def tofu(ctx: MatchContext, r: int, switch: int | None = None) -> tuple[MergeFn, MergeFn]:
    """Bipartite soft matching; each pair is fused by keeping the destination before the
    switch block and by MLERP from it on.

    Args:
        ctx: the block's metric [B, N, C], prefix count, distance, partition and block index.
        r: tokens to merge (1 <= r <= (N - prefix) // 2).
        switch: the first block that merges with MLERP (None: ``depth // 2 + 1``).
    """
    _check_options(switch)
    merge, unmerge = bipartite(ctx, r)
    prune = ctx.block < switch_block(ctx.depth, switch)

    def fused(x: Tensor, mode: str = "mean") -> Tensor:
        return merge(x, mode)

    def fuse(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # what the engine's default combine (merge_wavg) runs: ToFu's own rule
        if prune:
            return merge(x, mode="keep"), merged_size(merge, x, size)
        return mlerp(merge, x, size)

    fused.wavg = fuse
    return fused, unmerge


def _flops(spec: Any, n: int, r: int, **options: Any) -> int:
    """Bipartite soft matching's one [Na, Nb] similarity (MLERP's norms are element-wise)."""
    c, m = spec.metric_dim or spec.head_dim, n - spec.num_prefix
    if spec.partition == "alternate":  # every A row and B column, protected ones set to -inf
        return ((n + 1) // 2) * (n // 2) * c
    return (m // 2) * (m - m // 2) * c  # halves / random partitions of the unprotected


tofu.check_options = _check_options  # apply_config calls it at patch time
tofu.flops = _flops
