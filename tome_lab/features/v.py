"""The attention values."""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import FEATURES


@FEATURES.register("v")
def v(x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[B, H, N, d] per-head v."""
    return v
