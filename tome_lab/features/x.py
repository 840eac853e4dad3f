"""The block's input tokens themselves (one "head")."""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import FEATURES


@FEATURES.register("x")
def x(x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[B, 1, N, C] the block input."""
    return x[:, None]
