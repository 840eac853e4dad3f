"""No merging at all, whatever r says: the baseline inside a sweep of matchers."""

from __future__ import annotations

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, do_nothing
from tome_lab.registry import MATCHING


@MATCHING.register("none")
@uses(reduction="none")
def none(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """The identity (the engine also plans r = 0 in every block for it)."""
    return do_nothing, do_nothing
