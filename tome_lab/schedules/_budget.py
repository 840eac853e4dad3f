"""The one helper behind every schedule that takes a ``gflops=`` target by choosing among a
family of schedules: the candidate whose analytic count (the configured matcher's own cost
and bound included, as the spec carries them) lies closest to the target."""

from __future__ import annotations

from collections.abc import Iterable

from tome_lab.flops import ViTSpec, analytic_gflops


def closest(spec: ViTSpec, candidates: Iterable[list[int]], gflops: float) -> list[int]:
    """The first of ``candidates`` whose GFLOPs are nearest ``gflops`` (ties keep the first,
    so order the family from the least merging)."""
    best, best_err = None, float("inf")
    for sched in candidates:
        err = abs(analytic_gflops(spec, sched) - gflops)
        if err < best_err:
            best, best_err = sched, err
    if best is None:
        raise ValueError("no candidate schedule to choose from")
    return best
