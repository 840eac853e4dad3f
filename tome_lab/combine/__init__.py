"""Combine rules: how the tokens of one group become one. Registered in ``COMBINE``.

A combine plug-in is ``fn(merge, x, size) -> (x, size)`` with x [B, N, C] and size
[B, N, 1] (None before the first merge); members' sizes always add up, so with a matcher
that merges, token sizes keep summing to the input count whatever the rule (one that drops
tokens, ``pruning`` or ``truncate``, drops their sizes with them). Paper, Table 1c: the
size-weighted average wins.
"""

from __future__ import annotations

from tome_lab.combine._size import merged_size
from tome_lab.registry import COMBINE, import_submodules

import_submodules(__name__)

__all__ = ["COMBINE", "merged_size"]
