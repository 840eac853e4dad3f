"""Token sizes after a merge, shared by the combine rules (a module of its own so that the
rules never import their half-initialised package)."""

from __future__ import annotations

from torch import Tensor

from tome_lab.merge import MergeFn


def merged_size(merge: MergeFn, x: Tensor, size: Tensor | None) -> Tensor:
    """Sizes after a merge: members' sizes add up."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    return merge(size, mode="sum")
