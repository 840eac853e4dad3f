"""Every block keeps the same share of its tokens (``schedule="keep_ratio", ratio=0.9``).

PiToMe's schedule (Tran et al., NeurIPS 2024): each block entering with ``T`` unprotected
tokens (the class token excluded) merges ``r = floor(T - T * ratio)``, so the token count
shrinks geometrically rather than by a constant r (tome_lab floors ``T * (1 - ratio)`` with a
1e-9 allowance, so that binary rounding never loses a token: 100 tokens at 0.55 merge 45,
where ``floor(T - T * ratio)`` in floating point gives 44). Each r is clamped by the matcher's bound
(:func:`tome_lab.flops.block_r`). With ``gflops=`` the ratio is chosen among 1.000, 0.995, ...,
0.500 as the one whose analytic count is closest to the target; ``ratio`` is then ignored.
"""

from __future__ import annotations

import math

from tome_lab.flops import ViTSpec, block_r
from tome_lab.registry import SCHEDULES
from tome_lab.schedules._budget import closest


def ratio_schedule(spec: ViTSpec, ratio: float) -> list[int]:
    """The per-layer r when every block keeps ``ratio`` of its unprotected tokens."""
    n, out = spec.num_tokens, []
    for _ in range(spec.depth):
        free = n - spec.num_prefix
        r = block_r(spec, math.floor(free * (1 - ratio) + 1e-9), n)  # exact: 100 at 0.55 merges 45
        out.append(r)
        n -= r
    return out


@SCHEDULES.register("keep_ratio")
def keep_ratio(r: int, spec: ViTSpec, ratio: float = 0.9,
               gflops: float | None = None) -> list[int]:
    """Each block keeps ``ratio`` of its unprotected tokens (or the ratio closest to
    ``gflops``); ``r`` is ignored."""
    if gflops is not None:
        return closest(spec, (ratio_schedule(spec, 1 - k / 200) for k in range(101)), gflops)
    if not (isinstance(ratio, (int, float)) and 0.5 <= ratio <= 1):
        raise ValueError(f"schedule 'keep_ratio': ratio must be in [0.5, 1], got {ratio!r}")
    return ratio_schedule(spec, float(ratio))
