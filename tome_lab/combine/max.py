"""Element-wise maximum over the group (max pooling of tokens)."""

from __future__ import annotations

from torch import Tensor

from tome_lab.combine._size import merged_size
from tome_lab.merge import MergeFn
from tome_lab.registry import COMBINE


@COMBINE.register("max")
def max(merge: MergeFn, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Element-wise maximum over the group (max pooling of tokens)."""
    return merge(x, mode="amax"), merged_size(merge, x, size)
