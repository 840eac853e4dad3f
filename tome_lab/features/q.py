"""The attention queries."""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import FEATURES


@FEATURES.register("q")
def q(x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[B, H, N, d] per-head q."""
    return q
