"""Linear r schedules at the same GFLOPs as a constant r, for comparing schedule shapes fairly.

    .venv/bin/python benchmarks/equal_gflops.py --model vit_clutter --r 16 --tol 0.01

Prints, for the model's architecture (no weights needed), every ``linear`` schedule (r from
``start`` in the first block to ``end`` in the last, as ``tome_lab.schedules.linear``) whose
analytic GFLOPs (``tome_lab.analytic_gflops``, equal to fvcore's count) are within ``tol`` of
constant r and in which every block merges the r it is given (no clamping), and picks the
steepest decreasing and the steepest increasing one: the settings that
``benchmarks/paired_sweep.py`` then scores on the same images.
"""

from __future__ import annotations

import argparse

import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import create_model
from tome_lab.registry import SCHEDULES
from tome_lab.search import effective


def candidates(model_name: str, r: int, tol: float) -> tuple[float, list[tuple[int, int, float]]]:
    """(GFLOPs of constant r, [(start, end, GFLOPs)] of linear schedules within ``tol``)."""
    spec = tome_lab.vit_spec(create_model(ModelConfig(name=model_name, pretrained=False)))
    linear = SCHEDULES.get("linear")
    ref = tome_lab.analytic_gflops(spec, [r] * spec.depth)
    out = []
    for start in range(0, 4 * r + 1):
        for end in range(0, 4 * r + 1):
            sched = linear(r, spec, start=start, end=end)
            if effective(spec, sched) != sched:  # a block would merge less than asked
                continue
            g = tome_lab.analytic_gflops(spec, sched)
            if abs(g - ref) <= tol * ref:
                out.append((start, end, g))
    return ref, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--r", type=int, required=True)
    ap.add_argument("--tol", type=float, default=0.01, help="relative GFLOPs tolerance")
    args = ap.parse_args()
    ref, found = candidates(args.model, args.r, args.tol)
    print(f"constant r={args.r}: {ref:.4f} GFLOPs; linear schedules within {args.tol:.0%}:")
    for start, end, g in found:
        print(f"  start={start} end={end}: {g:.4f} ({100 * (g / ref - 1):+.2f}%)")
    dec = max((t for t in found if t[0] > t[1]), key=lambda t: (t[0] - t[1], -abs(t[2] - ref)),
              default=None)
    inc = max((t for t in found if t[1] > t[0]), key=lambda t: (t[1] - t[0], -abs(t[2] - ref)),
              default=None)
    for name, t in (("steepest decreasing", dec), ("steepest increasing", inc)):
        print(f"{name}: " + (f"schedule=linear start={t[0]} end={t[1]} ({t[2]:.4f} GFLOPs)"
                             if t else "none within the tolerance without clamping"))


if __name__ == "__main__":
    main()
