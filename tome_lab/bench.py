"""Throughput bench: ToMe settings against the unpatched timm model, interleaved in one run.

    python -m tome_lab.bench --model deit_small_patch16_224 --r 0,8,16 --batch-size 32

Every repeat times one batch of each setting in turn (unpatched first), after a warm-up, so
drift in a shared machine's speed hits all settings alike; the reported figure is the median
img/s over repeats and the speed-up is the ratio of medians to the unpatched model. Models
are randomly initialised: speed does not depend on the weights, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tome_lab.flops import count_flops
from tome_lab.patch import apply_tome, remove_tome

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Setting:
    """One bench column: ``matching`` at ``r`` (``matching=None`` is unpatched timm)."""

    matching: str | None
    r: int

    @property
    def label(self) -> str:
        return "timm" if self.matching is None else f"{self.matching} r={self.r}"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The context that runs a forward in ``dtype`` (``fp32``: none; else autocast)."""
    if _DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[dtype])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _configure(model: nn.Module, s: Setting, options: dict[str, Any]) -> None:
    remove_tome(model)
    if s.matching is not None:
        apply_tome(model, r=s.r, matching=s.matching, **options)


def run_bench(model_name: str = "deit_small_patch16_224", r: Sequence[int] = (0, 8, 16),
              matching: Sequence[str] = ("bipartite",), batch_size: int = 32,
              device: str = "cpu", dtype: str = "fp32", channels_last: bool = False,
              threads: int | None = None, repeats: int = 5, warmup: int = 2,
              progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """Times each (matching, r) setting against unpatched timm; returns one row per setting.

    Rows hold ``setting``, ``matching``, ``r``, ``img_per_s`` (median), ``speedup`` (over
    unpatched), ``gflops`` (fvcore, one image), ``flop_ratio`` (unpatched / this) and the
    run's parameters.
    """
    import timm
    from tqdm import tqdm

    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be >= 1, warmup >= 0")
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    model = timm.create_model(model_name, pretrained=False).eval().to(dev)
    input_size = tuple(model.pretrained_cfg["input_size"])
    settings = [Setting(None, 0)] + [Setting(m, int(ri)) for m in matching for ri in r]
    gflops = {}
    for s in settings:  # also validates every setting before any timing
        _configure(model, s, options)
        gflops[s] = count_flops(model, input_size)
    x = torch.randn(batch_size, *input_size, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    bar = tqdm(total=(warmup + repeats) * len(settings), desc=f"bench {model_name}",
               disable=not progress, file=sys.stderr)
    with torch.inference_mode(), autocast(dev, dtype):
        for i in range(warmup + repeats):
            for s in settings:
                _configure(model, s, options)
                _sync(dev)
                t0 = time.perf_counter()
                model(x)
                _sync(dev)
                if i >= warmup:
                    times[s].append(time.perf_counter() - t0)
                bar.update()
    bar.close()
    remove_tome(model)
    base = statistics.median(times[settings[0]])
    rows = []
    for s in settings:
        t = statistics.median(times[s])
        rows.append({
            "model": model_name, "setting": s.label, "matching": s.matching or "none",
            "r": s.r, "img_per_s": batch_size / t, "speedup": base / t,
            "gflops": gflops[s], "flop_ratio": gflops[settings[0]] / gflops[s],
            "batch_size": batch_size, "device": device, "dtype": dtype,
            "channels_last": channels_last, "threads": torch.get_num_threads(),
            "repeats": repeats,
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of bench rows."""
    head = f"{'setting':<24}{'img/s':>10}{'speed-up':>10}{'GFLOPs':>9}{'FLOP ratio':>12}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['setting']:<24}{row['img_per_s']:>10.1f}{row['speedup']:>9.2f}x"
                     f"{row['gflops']:>9.2f}{row['flop_ratio']:>11.2f}x")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"r values must be ints >= 0, got {text!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tome_lab.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224", help="timm model name")
    p.add_argument("--r", type=_ints, default=[0, 8, 16], help="comma-separated r values")
    p.add_argument("--matching", default="bipartite",
                   help="comma-separated matching plug-ins, or 'all' for every registered one")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32",
                   help="fp32, or bf16 / fp16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per setting")
    p.add_argument("--json", metavar="PATH", help="write rows as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="PATH", help="write rows as CSV")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from tome_lab.registry import MATCHING

    matching = MATCHING.names() if a.matching == "all" else a.matching.split(",")
    if a.matching == "all":
        matching = [m for m in matching if m != "none"]
    try:
        rows = run_bench(a.model, a.r, matching, a.batch_size, a.device, a.dtype,
                         a.channels_last, a.threads, a.repeats, a.warmup,
                         progress=not a.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # timm's way of saying "Unknown model (name)"
        if "Unknown model" not in str(e):
            raise
        print(f"error: {e}; see timm.list_models()", file=sys.stderr)
        return 2
    print(format_table(rows))
    if a.json:
        text = json.dumps(rows, indent=2)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as f:
                f.write(text + "\n")
    if a.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(a.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["Setting", "autocast", "format_table", "main", "run_bench"]
