"""The constant r whose GFLOPs come closest to a target (``schedule="constant_flops"``).

For comparing methods at one budget with each method's own schedule shape held to the
paper's (the same r in every block): the analytic count of the configured matcher (its own
products, its attention statistics and its bound on r, which the spec carries) is evaluated
for every constant r and the closest to ``gflops`` is kept, ties going to the smaller r.
Integer r cannot hit a budget exactly; the achieved GFLOPs is the run's ``gflops``. Unlike
the ``flops`` schedule, no block gets an extra merge, so the shape stays constant.
"""

from __future__ import annotations

from tome_lab.flops import ViTSpec, block_r
from tome_lab.registry import SCHEDULES
from tome_lab.schedules._budget import closest


@SCHEDULES.register("constant_flops")
def constant_flops(r: int, spec: ViTSpec, gflops: float | None = None) -> list[int]:
    """``[r*] * depth`` for the r* whose count is closest to ``gflops``; ``r`` is ignored."""
    if gflops is None:
        raise ValueError("schedule 'constant_flops' needs the option gflops=<target GFLOPs>")
    top = block_r(spec, spec.num_tokens, spec.num_tokens)  # the first block's bound
    return closest(spec, ([c] * spec.depth for c in range(top + 1)), gflops)
