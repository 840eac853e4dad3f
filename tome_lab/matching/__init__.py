"""Matching plug-ins: one file each, registered in ``tome_lab.registry.MATCHING``.

A matching plug-in is a function ``fn(ctx: MatchContext, r: int, **options)`` returning
``(merge, unmerge)`` (see :mod:`tome_lab.merge`). The engine clamps ``r`` before the call
(:func:`tome_lab.merge.clamp_r`), so a plug-in always receives 1 <= r <= (N - prefix) // 2.
"""

from __future__ import annotations

from tome_lab.matching._context import MatchContext
from tome_lab.registry import MATCHING, import_submodules

import_submodules(__name__)

__all__ = ["MATCHING", "MatchContext"]
