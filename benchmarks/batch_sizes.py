"""Throughput of tome_lab against timm by batch size, eager and torch.compile'd, as ratios.

Run from the repository root (the command recorded in benchmarks/README.md):

    .venv/bin/python benchmarks/batch_sizes.py --batch-sizes 1,8,32 --r 0,8,16 --repeats 5
    .venv/bin/python benchmarks/batch_sizes.py --batch-sizes 1 --r 0,16 --compile \
        --compile-mode max-autotune --freezing   # inductor's CPU GEMM templates, minutes

For each batch size, every variant (timm, then tome_lab at each r; eager, and compiled with
``--compile``) is timed in the same process, interleaved round by round after warm-up, so
that a busy machine slows all of them alike; the table gives median images/s and the ratio to
timm in the same mode (eager to eager, compiled to compiled) and, for compiled tome_lab, to
timm eager too, and the spread of the per-round ratios (each round's variant against the
round's timm), which shows how far one reading can be trusted on a shared machine. Random
weights: speed does not depend on them.

``--floor`` adds, at each r > 0, the ``truncate`` matcher, which drops the last r tokens and
computes nothing else, twice: "floor r=..." with proportional attention as the bipartite rows
have it (its sizes stay 1, so its mask is all zeros but is still passed to the attention), and
"floor plain r=..." without it. The first against bipartite is what the matching costs; the
second is the fastest an r-token reduction ran in a patched block on this machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from functools import partial

import timm
import torch

import tome_lab
from tome_lab.config import COMPILE_MODES
from tome_lab.results import environment, write_json_atomic
from tome_lab.runtime import compile_model, interleaved_times, ratio_quartiles


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _variants(name: str, rs: list[int], compile_: bool, mode: str = "default",
              freezing: bool = False, floor: bool = False) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False).eval()
    out: dict[str, torch.nn.Module] = {"timm eager": base}
    # variant name -> apply_tome's arguments
    settings = {f"r={r}": dict(r=r) for r in rs}
    if floor:
        for r in (r for r in rs if r > 0):
            settings[f"floor r={r}"] = dict(r=r, matching="truncate")
            settings[f"floor plain r={r}"] = dict(r=r, matching="truncate", prop_attn=False)
    names = list(settings)
    for v, kw in settings.items():
        out[f"{v} eager"] = tome_lab.apply_tome(copy.deepcopy(base), **kw)
    if compile_:
        def comp(m: torch.nn.Module) -> torch.nn.Module:
            return compile_model(m, mode=mode, freezing=freezing, fullgraph=True)

        out["timm compiled"] = comp(base)
        for v in names:
            out[f"{v} compiled"] = comp(out[f"{v} eager"])
    return out


@torch.inference_mode()
def measure(name: str, batch: int, rs: list[int], repeats: int, warmup: int, iters: int,
            compile_: bool, mode: str = "default", freezing: bool = False, floor: bool = False
            ) -> dict[str, list[float]]:
    """Seconds per call of each variant in every round, timed interleaved."""
    if compile_:
        torch._dynamo.reset()  # drop the previous batch size's graphs
    models = _variants(name, rs, compile_, mode, freezing, floor)
    x = torch.randn(batch, 3, 224, 224)
    # warm-up rounds first (and compilation)
    return interleaved_times({k: partial(m, x) for k, m in models.items()}, repeats, warmup,
                             calls=iters)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch-sizes", type=_ints, default=[1, 8, 32, 128])
    ap.add_argument("--r", type=_ints, default=[0, 8, 16])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per variant")
    ap.add_argument("--iters", type=int, default=0,
                    help="calls per round (0: enough for about 64 images, at least 1)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--compile-mode", default="default",
                    choices=COMPILE_MODES,
                    help="inductor mode for every compiled variant")
    ap.add_argument("--freezing", action="store_true",
                    help="inductor freezing (weights as pre-packed constants) for every "
                         "compiled variant")
    ap.add_argument("--floor", action="store_true",
                    help="also time the truncate matcher (the cost floor), with and without "
                         "proportional attention, at each r > 0")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.iters < 0:
        ap.error("--repeats must be >= 1, --warmup and --iters >= 0")
    if (args.compile_mode != "default" or args.freezing) and not args.compile:
        ap.error("--compile-mode and --freezing apply to compiled variants: add --compile")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print("| batch | variant | img/s | vs timm (same mode) | per-round ratio, median [quartiles] "
          "| vs timm eager |")
    print("|---|---|---|---|---|---|")
    for b in args.batch_sizes:
        iters = args.iters or max(1, 64 // b)
        times = measure(args.model, b, args.r, args.repeats, args.warmup, iters, args.compile,
                        args.compile_mode, args.freezing, args.floor)
        ips = {k: b / statistics.median(v) for k, v in times.items()}
        for k, v in ips.items():
            mode = "compiled" if k.endswith("compiled") else "eager"
            same = v / ips[f"timm {mode}"]
            eager = v / ips["timm eager"]
            q1, med, q3 = ratio_quartiles(times[k], times[f"timm {mode}"])
            rows.append(dict(batch=b, variant=k, img_s=v, vs_same=same, vs_eager=eager,
                             round_ratio=med, round_ratio_q1=q1, round_ratio_q3=q3,
                             rounds=len(times[k])))
            print(f"| {b} | {k} | {v:.1f} | {same:.2f}x | {med:.2f}x [{q1:.2f}, {q3:.2f}] "
                  f"| {eager:.2f}x |", flush=True)
    if args.json:  # with the revision, versions and date (tome_lab.results.environment)
        write_json_atomic(args.json, dict(
            argv=sys.argv, env=environment(), torch=torch.__version__, timm=timm.__version__,
            compile_mode=args.compile_mode, freezing=args.freezing, floor=args.floor,
            threads=torch.get_num_threads(), rows=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
