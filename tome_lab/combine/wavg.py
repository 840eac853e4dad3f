"""Size-weighted average (ToMe's rule): a token of s patches counts s times."""

from __future__ import annotations

from torch import Tensor

from tome_lab.merge import MergeFn, merge_wavg
from tome_lab.registry import COMBINE


@COMBINE.register("wavg", "weighted_average")
def wavg(merge: MergeFn, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Merged tokens are the size-weighted mean of their members."""
    return merge_wavg(merge, x, size)
