"""Combine rules: how the tokens of one group become one. Registered in ``COMBINE``.

A combine plug-in is ``fn(merge, x, size) -> (x, size)`` with x [B, N, C] and size
[B, N, 1] (None before the first merge); members' sizes always add up, so with a matcher
that merges, token sizes keep summing to the input count whatever the rule (one that drops
tokens, ``pruning`` or ``truncate``, drops their sizes with them). Paper, Table 1c: the
size-weighted average wins.
"""

from __future__ import annotations

from torch import Tensor

from tome_lab.merge import MergeFn
from tome_lab.registry import COMBINE, import_submodules


def merged_size(merge: MergeFn, x: Tensor, size: Tensor | None) -> Tensor:
    """Sizes after a merge: members' sizes add up."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    return merge(size, mode="sum")


import_submodules(__name__)

__all__ = ["COMBINE", "merged_size"]
