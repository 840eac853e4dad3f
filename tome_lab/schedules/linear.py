"""Linearly changing r: the paper's decreasing schedule (Bolya et al., Sec. 4.1 / App.).

``decreasing`` goes from 2r in the first block to 0 in the last, ``increasing`` the other
way, so both merge about r per block on average; ``linear`` takes explicit end points.
Values are truncated to ints along the line, as the paper's code does.
"""

from __future__ import annotations

from tome_lab.flops import ViTSpec
from tome_lab.registry import SCHEDULES


@SCHEDULES.register("linear")
def linear(r: int, spec: ViTSpec, start: int | None = None, end: int | None = None) -> list[int]:
    """From ``start`` (default 2r) in block 0 to ``end`` (default 0) in the last block."""
    start = 2 * r if start is None else start
    end = 0 if end is None else end
    if start < 0 or end < 0:
        raise ValueError(f"linear schedule needs start, end >= 0, got start={start}, end={end}")
    if spec.depth == 1:
        return [int(start)]
    step = (end - start) / (spec.depth - 1)
    return [int(start + step * i) for i in range(spec.depth)]


@SCHEDULES.register("decreasing")
def decreasing(r: int, spec: ViTSpec) -> list[int]:
    """2r down to 0."""
    return linear(r, spec, start=2 * r, end=0)


@SCHEDULES.register("increasing")
def increasing(r: int, spec: ViTSpec) -> list[int]:
    """0 up to 2r."""
    return linear(r, spec, start=0, end=2 * r)
