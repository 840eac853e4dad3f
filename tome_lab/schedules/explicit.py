"""An explicit per-layer list, e.g. ``r=[8, 8, 8, 4, 4, 4, ...]`` (one entry per block)."""

from __future__ import annotations

from collections.abc import Sequence

from tome_lab.flops import ViTSpec
from tome_lab.registry import SCHEDULES


@SCHEDULES.register("list", "explicit")
def explicit(r: Sequence[int], spec: ViTSpec) -> list[int]:
    """Returns ``r`` as given after checking it has one entry per block."""
    if isinstance(r, int):
        raise ValueError(f"schedule 'list' needs a list of {spec.depth} ints as r, got {r!r}")
    if len(r) != spec.depth:
        raise ValueError(
            f"schedule of length {len(r)} for a model with {spec.depth} blocks: "
            f"give exactly one r per block")
    return [int(v) for v in r]
