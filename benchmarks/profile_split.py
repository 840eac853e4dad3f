"""Where a forward's time goes, timm against tome_lab at one r: operator groups, side by side.

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/profile_split.py --batch 1 --r 16 --threads 2
    python benchmarks/profile_split.py --model deit_base_patch16_224 --batch 256 --r 16 \
        --device cuda --dtype bf16    # also the GPU's own time per group

Profiles both models in one process, alternating (``--rounds`` times, ``--calls`` forwards
each), and sums torch.profiler's self CPU time per operator into groups: the linear layers
(``addmm``, ``mm``), attention (the fused kernel), the rest of the model's own operators, and
the operators only the merging adds (those timm's forward never calls). "Outside operators" is
wall time minus all operator time: Python, module calls, and the profiler's own cost. On CUDA
a second table sums the device's self time per group the same way; wall time minus the
device's total is time the GPU waited for the host. On CUDA the host table also has the CUDA
runtime's calls (kernel launches, and the synchronisation that waits for the GPU) as a group.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time

import timm
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import tome_lab
from tome_lab.runtime import autocast, sync

# on CUDA the fused attention's kernels run under the chosen backend's own operator
# (aten::_flash_attention_forward, aten::_efficient_attention_forward, ...), which the first
# prefix alone missed; which backend ran is printed below the tables
GROUPS = {"linear layers": ("aten::addmm", "aten::mm"),
          "attention": ("aten::_scaled_dot_product", "aten::_flash_attention",
                        "aten::_efficient_attention", "aten::_cudnn_attention")}
CUDA_RUNTIME = "CUDA runtime calls"


def _group(op: str, timm_ops: set[str]) -> str:
    for name, prefixes in GROUPS.items():
        if op.startswith(prefixes):
            return name
    if op.startswith("cuda"):  # cudaLaunchKernel, cudaDeviceSynchronize (waiting), ...
        return CUDA_RUNTIME
    return "other model operators" if op in timm_ops else "merging-only operators"


def _device_us(ev: object) -> float:
    """An event's self time on the accelerator (the attribute's name varies across torch)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(ev, name):
            return float(getattr(ev, name))
    return 0.0


def _table(title: str, models: list[str], rows: dict[str, dict[str, float]],
           names: list[str]) -> None:
    a, b = models
    print(f"| {title} | {a} | {b} | ratio |")
    print("|---|---|---|---|")
    for g in names:
        ta, tb = rows[a][g], rows[b][g]
        ratio = f"{ta / tb:.2f}x" if tb > 0 and ta > 0 else "-"
        print(f"| {g} | {ta:.1f} | {tb:.1f} | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=4, help="forwards per profiled round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="fp32, or bf16 / fp16 autocast")
    args = ap.parse_args(argv)
    if min(args.batch, args.rounds, args.calls) < 1 or args.r < 0:
        ap.error("--batch, --rounds and --calls must be >= 1, --r >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False).eval()
    models = {"timm": base, f"r={args.r}": tome_lab.apply_tome(copy.deepcopy(base), r=args.r)}
    models = {k: m.to(device) for k, m in models.items()}
    x = torch.randn(args.batch, *base.pretrained_cfg["input_size"], device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    self_us = {k: collections.Counter() for k in models}
    dev_us = {k: collections.Counter() for k in models}
    wall = collections.Counter()
    with torch.inference_mode(), autocast(device, args.dtype):
        for m in models.values():
            m(x)
        for _ in range(args.rounds):
            for k, m in models.items():
                sync(device)
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        m(x)
                    sync(device)
                    wall[k] += time.perf_counter() - t0
                for ev in prof.key_averages():
                    # host-side events only: each operator carries its kernels' self device
                    # time, and the kernels also appear as device-side events of their own
                    if ev.device_type == DeviceType.CPU:
                        self_us[k][ev.key] += ev.self_cpu_time_total
                        dev_us[k][ev.key] += _device_us(ev)
    n = args.rounds * args.calls
    timm_ops = {op for op, us in self_us["timm"].items() if us > 0}
    names = [*GROUPS, "other model operators", "merging-only operators"]
    host_names = names + ([CUDA_RUNTIME] if cuda else [])
    host: dict[str, dict[str, float]] = {}
    gpu: dict[str, dict[str, float]] = {}
    for k in models:
        for out, per_op in ((host, self_us[k]), (gpu, dev_us[k])):
            groups = collections.Counter({g: 0.0 for g in host_names})
            for op, us in per_op.items():
                groups[_group(op, timm_ops)] += us / n / 1e3
            out[k] = groups
        ms = wall[k] / n * 1e3
        host[k]["outside operators"] = ms - sum(host[k].values())
        host[k]["wall"] = gpu[k]["wall"] = ms
        gpu[k]["device total"] = sum(gpu[k][g] for g in names)  # runtime calls run no kernel
        gpu[k]["wall minus device"] = ms - gpu[k]["device total"]
    what = f"batch {args.batch}, {args.dtype}, {device.type}"
    _table(f"ms per forward, host ({what})", list(models), host,
           [*host_names, "outside operators", "wall"])
    if cuda:
        print()
        _table(f"ms per forward, device ({what})", list(models), gpu,
               [*names, "device total", "wall minus device", "wall"])
    print()  # which attention operators ran (the backend SDPA chose), with their own times
    for k in models:
        ops = sorted((op for op in self_us[k] if _group(op, timm_ops) == "attention"),
                     key=lambda op: -(dev_us[k][op] + self_us[k][op]))
        print(f"attention operators, {k}: " + "; ".join(
            f"{op} host {self_us[k][op] / n / 1e3:.2f} ms, device {dev_us[k][op] / n / 1e3:.2f} ms"
            for op in ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
