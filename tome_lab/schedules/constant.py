"""The paper's default: the same r in every block."""

from __future__ import annotations

from tome_lab.flops import ViTSpec
from tome_lab.registry import SCHEDULES


@SCHEDULES.register("constant")
def constant(r: int, spec: ViTSpec) -> list[int]:
    """``r`` merged in each of the ``spec.depth`` blocks."""
    return [int(r)] * spec.depth
