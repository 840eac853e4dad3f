"""The attention keys (ToMe's default: they summarise what each token holds)."""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import FEATURES


@FEATURES.register("k")
def k(x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[B, H, N, d] per-head k."""
    return k
