"""MLERP, the norm-preserving merge of Token Fusion (Kim et al., "Token Fusion: Bridging the Gap
between Token Pruning and Token Merging", WACV 2024).

Averaging tokens that point in different directions shrinks the norm of the result, a shift of
the feature distribution that later blocks never saw in training. MLERP (the paper's
multi-token extension of SLERP's idea) keeps the direction of the average and restores the
norm: the merged token is the group's average, rescaled to the largest norm among the group's
members::

    y = a / |a| * max_i |x_i|,    a = sum_i s_i x_i / sum_i s_i

Implemented through any matcher's ``merge(x, mode)``, so every merging method can be compared
with it: the direction is :func:`~tome_lab.merge.merge_wavg` (the matcher's own fast path when
it has one) and the norm is ``merge(|x|, mode="amax")``.

Where tome_lab chose:

- the average is size-weighted (s_i the tokens' sizes, as ToMe's rule and the paper's own use
  of it with proportional attention); sizes add up as in ``wavg``;
- the norm is the max over the members of the group, the destination included;
- a token left alone is itself (up to one rounding of ``x / |x| * |x|``); a zero average
  (members that cancel) stays zero rather than dividing by zero;
- with a matcher that drops tokens (``pruning``, ``truncate``) the kept tokens are unchanged,
  as under every other rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.merge import MergeFn, merge_wavg
from tome_lab.registry import COMBINE


@COMBINE.register("mlerp", "norm_preserving")
def mlerp(merge: MergeFn, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Merged tokens point along the size-weighted mean of their members, with the largest
    member's norm.

    Args:
        merge: a ``merge`` function from a matcher.
        x: [B, N, C] tokens.
        size: [B, N, 1] how many input patches each token stands for (None: all ones).

    Returns:
        ([B, N - r, C] merged tokens, [B, N - r, 1] their sizes).
    """
    avg, size = merge_wavg(merge, x, size)  # promoted to the dtype x * size has
    norm = merge(x.norm(dim=-1, keepdim=True).to(avg.dtype), mode="amax")  # [B, N - r, 1]
    scale = norm / avg.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(avg.dtype).tiny)
    return avg * scale, size
