"""Evaluating one model with one ToMe setting: accuracy, FLOPs, throughput, tokens per layer.

``evaluate(ExperimentConfig) -> dict`` is the function behind ``python -m tome_lab.evaluate``
and behind every point of an ablation sweep. Its result is flat (one value per key):

=================  ==========================================================================
``top1``, ``top5``  accuracy (percent) of the ToMe-patched model on ``cfg.data``
``n_images``        images scored
``gflops``          fvcore GFLOPs of the patched model at its input size (one image)
``gflops_base``     the same model unmerged
``img_per_s``       patched model, median over ``cfg.eval.speed_batches`` timed batches
``img_per_s_base``  unmerged model, timed interleaved with the patched one in the same run
``speedup``         ``img_per_s / img_per_s_base`` (None when ``cfg.eval.speed`` is False)
``tokens``          tokens leaving each block (list)
``model``, ``r``, ``matching``, ``schedule``, ``prop_attn``, ``dataset``, ``device``,
``dtype``, ``threads``, ``seed``  what was run
=================  ==========================================================================

Timing interleaves the two models batch by batch after a warm-up of each, so a shared, noisy
machine slows both alike and the ratio stays meaningful (the ToMe paper's throughput is also a
ratio taken on one machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tome_lab.bench import autocast
from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
from tome_lab.data import build_loader, model_data_config, progress


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _timed(model: nn.Module, x: Tensor, device: torch.device, dtype: str) -> float:
    _sync(device)
    t = time.perf_counter()
    with autocast(device, dtype):
        model(x)
    _sync(device)
    return time.perf_counter() - t


def measure_speed(base: nn.Module, merged: nn.Module, x: Tensor, batches: int,
                  device: torch.device, dtype: str) -> dict[str, float]:
    """img/s of ``base`` and ``merged`` on batch ``x``, interleaved, median of ``batches``.

    Args:
        base: the unmerged model.
        merged: the ToMe-patched model.
        x: [B, C, H, W] a batch on ``device``.
        batches: timed batches per model (after one warm-up batch each).
        device: where the models run (CUDA is synchronised around each batch).
        dtype: ``fp32`` or an autocast dtype name.
    """
    _timed(base, x, device, dtype), _timed(merged, x, device, dtype)  # warm-up
    times: dict[str, list[float]] = {"base": [], "tome": []}
    for _ in progress(range(batches), "speed"):
        times["base"].append(_timed(base, x, device, dtype))
        times["tome"].append(_timed(merged, x, device, dtype))
    b, t = statistics.median(times["base"]), statistics.median(times["tome"])
    return {"img_per_s": len(x) / t, "img_per_s_base": len(x) / b, "speedup": b / t}


@torch.no_grad()
def score(model: nn.Module, loader: Any, device: torch.device, dtype: str,
          desc: str = "eval") -> dict[str, float]:
    """Top-1 / top-5 (percent) and the number of images of ``model`` over ``loader``."""
    correct1 = correct5 = n = 0
    for x, y in progress(loader, desc):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(x)
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices  # (B, k)
        hit = top == y[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(-1).sum())
        n += len(y)
    if n == 0:
        raise ValueError("the data loader yielded no images")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n_images": n}


def evaluate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Evaluates ``cfg.model`` with ToMe ``cfg.tome`` on ``cfg.data``; returns flat metrics.

    Args:
        cfg: model, data, ToMe setting, how to run, seed.

    Returns:
        The flat dict described in this module's docstring.
    """
    import tome_lab
    from tome_lab.models import create_model

    if cfg.eval.threads is not None:
        torch.set_num_threads(cfg.eval.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.eval.device)
    base = create_model(cfg.model).to(device)
    loader = build_loader(cfg.data, base, seed=cfg.seed)
    input_size = tuple(model_data_config(base)["input_size"])
    gflops_base = tome_lab.count_flops(base, input_size)
    merged = tome_lab.apply_config(copy.deepcopy(base), cfg.tome)
    gflops = tome_lab.count_flops(merged, input_size)

    result: dict[str, Any] = score(merged, loader, device, cfg.eval.dtype)
    tokens = list(tome_lab.tome_state(merged).tokens)
    speed: dict[str, Any] = {"img_per_s": None, "img_per_s_base": None, "speedup": None}
    if cfg.eval.speed:
        x = next(iter(loader))[0].to(device)
        speed = measure_speed(base, merged, x, cfg.eval.speed_batches, device, cfg.eval.dtype)
    tome = cfg.tome
    return {
        **result, "gflops": gflops, "gflops_base": gflops_base, **speed, "tokens": tokens,
        "model": cfg.model.name, "dataset": cfg.data.name, "split": cfg.data.split,
        "r": list(tome.r) if isinstance(tome.r, tuple) else tome.r, "matching": tome.matching,
        "schedule": tome.schedule, "prop_attn": tome.prop_attn, "device": str(device),
        "dtype": cfg.eval.dtype, "threads": torch.get_num_threads(), "seed": cfg.seed,
    }


def format_table(result: dict[str, Any]) -> str:
    """A two-column text table of an ``evaluate`` result."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
        if isinstance(v, list):
            return " ".join(str(t) for t in v)
        return str(v)

    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in result.items())


def _parser() -> argparse.ArgumentParser:
    m, d, t, e = ModelConfig(), DataConfig(), ToMeConfig(), EvalConfig()
    p = argparse.ArgumentParser(
        prog="python -m tome_lab.evaluate",
        description="Evaluate one model with one ToMe setting: top-1/top-5, GFLOPs, img/s "
                    "and speed-up against the unmerged model, tokens after each block. With no "
                    "arguments: the embedded vit_digits on mnist5k's held-out 1,000 digits.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=m.name, help="timm model name")
    g.add_argument("--checkpoint", default=None, help=".safetensors or torch state dict")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random weights (speed-only runs)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.name, help="mnist5k, digits, imagefolder, synthetic")
    g.add_argument("--data-path", default=None, help="root folder for imagefolder")
    g.add_argument("--split", default=d.split, choices=("train", "val"))
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--workers", type=int, default=d.num_workers)
    g.add_argument("--limit", type=int, default=None, help="score at most this many images")
    g = p.add_argument_group("ToMe")
    g.add_argument("-r", "--r", type=int, nargs="+", default=[4],
                   help="tokens merged per block, or one value per block (default 4 for the "
                        "embedded model; 0 turns merging off)")
    g.add_argument("--matching", default=t.matching)
    g.add_argument("--schedule", default=t.schedule)
    g.add_argument("--prop-attn", action=argparse.BooleanOptionalAction, default=t.prop_attn)
    g = p.add_argument_group("run")
    g.add_argument("--device", default=e.device)
    g.add_argument("--dtype", default=e.dtype, choices=("fp32", "bf16", "fp16"))
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--no-speed", dest="speed", action="store_false", help="skip timing")
    g.add_argument("--speed-batches", type=int, default=e.speed_batches)
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return p


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The ``ExperimentConfig`` a parsed command line describes (raises ``ValueError``)."""
    r: int | tuple[int, ...] = args.r[0] if len(args.r) == 1 else tuple(args.r)
    return ExperimentConfig(
        model=ModelConfig(name=args.model, checkpoint=args.checkpoint,
                          pretrained=args.pretrained),
        data=DataConfig(name=args.data, path=args.data_path, split=args.split,
                        batch_size=args.batch_size, num_workers=args.workers, limit=args.limit),
        tome=ToMeConfig(r=r, matching=args.matching, schedule=args.schedule,
                        prop_attn=args.prop_attn),
        eval=EvalConfig(device=args.device, dtype=args.dtype, threads=args.threads,
                        speed=args.speed, speed_batches=args.speed_batches),
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: exit status 2 for a bad setting, the table (or JSON) on stdout."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
        result = evaluate(cfg)
    except ValueError as e:  # bad names, paths, classes: a usage error, not a crash
        p.error(str(e))
    except FileNotFoundError as e:
        p.error(str(e))
    print(json.dumps(result) if args.json else format_table(result), file=sys.stdout)
    return result


if __name__ == "__main__":
    main()
