"""Per-layer r chosen to hit a GFLOPs target (``schedule="flops", gflops=2.7``).

Uses the analytic count of :func:`tome_lab.flops.analytic_gflops`, which includes the cost of
the configured matcher on its metric (the spec ``apply_tome`` passes carries them), so the
target holds whatever the matcher, feature or head aggregation (cross-checked against fvcore
in the tests). Starts from the largest constant r that stays at or above the target,
then adds one more merge to the earliest blocks, one block at a time, and keeps the schedule
whose count lies closest to the target. Early merges save the most, so the result is a
near-constant schedule slightly heavier at the front.
"""

from __future__ import annotations

from tome_lab.flops import ViTSpec, analytic_gflops
from tome_lab.registry import SCHEDULES


@SCHEDULES.register("flops")
def flops(r: int, spec: ViTSpec, gflops: float | None = None) -> list[int]:
    """Per-layer r whose count is closest to ``gflops``; ``r`` is ignored."""
    if gflops is None:
        raise ValueError("schedule 'flops' needs the option gflops=<target GFLOPs>")
    full = analytic_gflops(spec, [0] * spec.depth)
    max_r = spec.num_tokens  # clamping makes any larger r the same
    least = analytic_gflops(spec, [max_r] * spec.depth)
    if not least <= gflops <= full:
        raise ValueError(
            f"gflops={gflops} cannot be reached: this model spans {least:.3f} (most merging) "
            f"to {full:.3f} GFLOPs (no merging)")
    lo = 0
    while lo < max_r and analytic_gflops(spec, [lo + 1] * spec.depth) >= gflops:
        lo += 1
    best = [lo] * spec.depth
    best_err = abs(analytic_gflops(spec, best) - gflops)
    cand = list(best)
    for i in range(spec.depth):
        cand[i] += 1
        err = abs(analytic_gflops(spec, cand) - gflops)
        if err < best_err:
            best, best_err = list(cand), err
    return best
