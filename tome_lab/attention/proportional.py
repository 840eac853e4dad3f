"""Proportional attention (ToMe, Eq. 1): softmax(q k^T / sqrt(d) + log s).

A token that stands for s patches receives attention as if it were s copies of itself.
"""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import ATTENTION


@ATTENTION.register("proportional", "prop")
def proportional(size: Tensor | None) -> Tensor | None:
    """[B, N, 1] sizes -> [B, 1, 1, N] additive mask (None before the first merge, when
    sizes are not tracked yet; a matcher that drops tokens keeps sizes of 1, and zeros)."""
    if size is None:
        return None
    n, t, _ = size.shape
    return size.log().reshape(n, 1, 1, t)  # broadcast over heads and queries
