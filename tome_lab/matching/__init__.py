"""Matching plug-ins: one file each, registered in ``tome_lab.registry.MATCHING``.

A matching plug-in is a function ``fn(ctx: MatchContext, r: int, **options)`` returning
``(merge, unmerge)`` (see :mod:`tome_lab.merge`), with its :class:`Capabilities` declared as
data by :func:`uses` (the block protocol: :mod:`tome_lab.matching._context`). The engine
clamps ``r`` before the call by the plug-in's bound (:func:`tome_lab.merge.clamp_r`), so a
plug-in always receives 1 <= r <= ``max_r(bound, N, prefix)``.

Optional attributes a plug-in may carry: ``check_options(**options)`` (called at patch
time), ``flops(spec, n, r, block=i, **options) -> int`` (its own products in block i, for the
analytic count), ``attention_request(class_token, **options) -> frozenset`` (the statistics
it needs under these options, when that depends on them; otherwise
``Capabilities.attention``), and ``block_attention_request(class_token, block, depth,
**options) -> frozenset`` (what block ``block`` needs, when that differs from block to
block; a subset of ``attention_request``'s): the engine then computes in each block only
what that block asked for, and the analytic count follows.
"""

from __future__ import annotations

from tome_lab.matching._context import (
    STATS,
    AttentionStats,
    Capabilities,
    MatchContext,
    capabilities,
    uses,
)
from tome_lab.merge import max_r
from tome_lab.registry import MATCHING, import_submodules

import_submodules(__name__)

__all__ = ["MATCHING", "STATS", "AttentionStats", "Capabilities", "MatchContext",
           "capabilities", "max_r", "uses"]
