"""The destination token is kept as it is; sources are dropped (their size is still counted)."""

from __future__ import annotations

from torch import Tensor

from tome_lab.combine._size import merged_size
from tome_lab.merge import MergeFn
from tome_lab.registry import COMBINE


@COMBINE.register("keep")
def keep(merge: MergeFn, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """The destination token is kept as it is; sources are dropped (their size is still counted)."""
    return merge(x, mode="keep"), merged_size(merge, x, size)
