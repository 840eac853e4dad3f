"""Unweighted average of the group's tokens, whatever their sizes."""

from __future__ import annotations

from torch import Tensor

from tome_lab.combine._size import merged_size
from tome_lab.merge import MergeFn
from tome_lab.registry import COMBINE


@COMBINE.register("mean")
def mean(merge: MergeFn, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unweighted average of the group's tokens, whatever their sizes."""
    return merge(x, mode="mean"), merged_size(merge, x, size)
