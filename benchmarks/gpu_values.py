"""Value check of the engine on a CUDA device, run before the GPU timings (engine_gpu.sh).

    python benchmarks/gpu_values.py --model deit_small_patch16_224 --r 16

One random-weight model, patched at ``r``, run on the same random batch four ways: eager on
the CPU in float64 (the reference), eager on CUDA in fp32, ``torch.compile``'d on CUDA in fp32,
and eager on CUDA under bf16 autocast. Prints each one's relative error ||out - ref|| / ||ref||
and whether all picked the same top-1 class, and exits 1 if fp32 eager or compiled is off by
more than ``--tol`` (the matrix units' tf32 is switched off, so fp32 should land far below it).
The unpatched model is checked the same way, so a CUDA-only fault in the merge shows as a gap
between the two.
"""

from __future__ import annotations

import argparse
import copy
import sys

import timm
import torch

import tome_lab
from tome_lab.runtime import autocast, compile_model


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double().cpu(), ref.double().cpu()
    return float((a - ref).norm() / ref.norm())


@torch.inference_mode()
def check(name: str, r: int, batch: int, tol: float, device: str = "cuda") -> bool:
    """Prints one line per way of running; True when fp32 eager and compiled are within tol."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(batch, *base.pretrained_cfg["input_size"])
    ok = True
    for label, rr in (("timm", None), (f"r={r}", r)):
        model = base if rr is None else tome_lab.apply_tome(copy.deepcopy(base), r=rr)
        ref = copy.deepcopy(model).double()(x.double())
        gpu = copy.deepcopy(model).to(device)
        xc = x.to(device)
        outs = {f"{device} fp32 eager": gpu(xc),
                f"{device} fp32 compiled": compile_model(gpu, fullgraph=True)(xc)}
        with autocast(device, "bf16"):
            outs[f"{device} bf16 eager"] = gpu(xc)
        top1 = ref.argmax(-1)
        for way, out in outs.items():
            err = _rel(out, ref)
            agree = float((out.argmax(-1).cpu() == top1).float().mean())
            bad = "fp32" in way and not err < tol
            ok &= not bad
            print(f"{name} {label:<6} {way:<20} rel err {err:.2e}  top-1 agrees {agree:.0%}"
                  + ("  <-- over tolerance" if bad else ""))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--device", default="cuda", help="cuda (cpu: a dry run of the script)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    return 0 if check(args.model, args.r, args.batch, args.tol, args.device) else 1


if __name__ == "__main__":
    sys.exit(main())
