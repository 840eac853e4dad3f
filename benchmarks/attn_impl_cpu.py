"""The attention cores (``attn_impl``, issue 26) timed against each other on a CPU.

Run from the repository root, on an otherwise quiet machine (``uptime`` load below 2.5):

    .venv/bin/python benchmarks/attn_impl_cpu.py --threads 2 --out benchmarks/attn_impl_cpu.json

DeiT-S (random weights: timing does not depend on them), r = 16 with proportional attention,
batch 8 at 224 px, eager, inference mode; one forward per round, the cores interleaved round
by round (``tome_lab.runtime.interleaved_times``), in float32 and under bfloat16 autocast.
FlexAttention runs eagerly, i.e. unfused (PyTorch's reference implementation): it is timed
for completeness, not as what a compiled model would run. Prints and records the median
seconds per forward of each core and its ratio to the float mask's; ``auto`` on a CPU is the
float mask unless this measurement says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import timm
import torch

import tome_lab
from tome_lab.results import environment, write_json_atomic
from tome_lab.runtime import interleaved_times

IMPLS = ("mask", "bias_channel", "flex")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
    torch.manual_seed(0)
    base = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    models = {i: tome_lab.apply_tome(copy.deepcopy(base), r=args.r, attn_impl=i) for i in IMPLS}
    x = torch.randn(args.batch, 3, 224, 224)
    rows = {}
    for dtype in ("fp32", "bf16"):
        def run(m: torch.nn.Module, dtype: str = dtype) -> None:
            with torch.inference_mode(), torch.autocast(
                    "cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                m(x)

        times = interleaved_times({i: (lambda m=m: run(m)) for i, m in models.items()},
                                  repeats=args.repeats, warmup=2)
        med = {i: statistics.median(t) for i, t in times.items()}
        rows[dtype] = {i: {"median_s": med[i], "vs_mask": med[i] / med["mask"],
                           "times_s": times[i]} for i in IMPLS}
        for i in IMPLS:
            print(f"{dtype} {i:13s} {med[i] * 1e3:8.1f} ms/forward  x{med[i] / med['mask']:.3f}"
                  f" of mask")
    if args.out:
        write_json_atomic(args.out, {"model": "deit_small_patch16_224", "r": args.r,
                                     "batch": args.batch, "threads": args.threads,
                                     "repeats": args.repeats, "results": rows,
                                     "env": environment("cpu", "fp32")})


if __name__ == "__main__":
    main()
