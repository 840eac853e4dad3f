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
``model``, ``r``, ``matching``, ``schedule``, ``prop_attn``, ``dataset``, ``split``,
``device``, ``dtype``, ``compile``, ``threads``, ``seed``  what was run
=================  ==========================================================================

Timing interleaves the two models batch by batch after a warm-up of each
(:func:`tome_lab.runtime.interleaved_times`), so a shared, noisy machine slows both alike and
the ratio stays meaningful. With ``cfg.eval.compile`` both models are ``torch.compile``-d
before scoring and timing; GFLOPs are counted on the eager models (the same computation).

The command line takes every field of :class:`~tome_lab.config.ExperimentConfig`, so the
``config.yaml`` of any sweep point runs unchanged: ``python -m tome_lab.evaluate --config
runs/matching/<point>/config.yaml``.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tome_lab import cli
from tome_lab.config import ExperimentConfig
from tome_lab.data import build_loader, model_data_config, progress
from tome_lab.runtime import autocast, compile_model, interleaved_times, throughput

PROG = "python -m tome_lab.evaluate"


def measure_speed(base: nn.Module, merged: nn.Module, x: torch.Tensor, batches: int,
                  device: torch.device | str, dtype: str, warmup: int = 1) -> dict[str, float]:
    """img/s of ``base`` and ``merged`` on batch ``x``, interleaved, median of ``batches``.

    Args:
        base: the unmerged model.
        merged: the ToMe-patched model.
        x: [B, C, H, W] a batch on ``device``.
        batches: timed batches per model.
        device: where the models run (CUDA is synchronised around each batch).
        dtype: ``fp32`` or an autocast dtype name.
        warmup: untimed batches per model first.

    Returns:
        ``img_per_s`` (merged), ``img_per_s_base`` and ``speedup`` (base time / merged time).
    """

    def forward(m: nn.Module) -> Any:
        def call() -> None:
            with torch.no_grad(), autocast(device, dtype):
                m(x)
        return call

    bar = progress(range((warmup + batches) * 2), "speed")
    times = interleaved_times({"base": forward(base), "tome": forward(merged)}, batches,
                              warmup, device, on_step=lambda: next(bar, None))
    out = throughput(times, len(x), base="base")
    return {"img_per_s": out["tome"]["img_per_s"], "img_per_s_base": out["base"]["img_per_s"],
            "speedup": out["tome"]["speedup"]}


@torch.no_grad()
def score(model: nn.Module, loader: Any, device: torch.device | str, dtype: str = "fp32",
          desc: str = "eval", progress_bar: bool = True) -> dict[str, Any]:
    """Top-1 / top-5 (percent) and the number of images of ``model`` over ``loader``.

    The one scoring function of tome_lab: the evaluator, training's selection on ``val`` and
    its final numbers all use it. The model is put in eval mode (and put back).

    Args:
        model: maps [B, C, H, W] images to [B, classes] logits.
        loader: yields ``(images [B, C, H, W], labels [B])``.
        device: where to run.
        dtype: ``fp32`` or an autocast dtype name.
        desc: the progress bar's label.
        progress_bar: show it.

    Raises:
        ValueError: the loader yielded no images.
    """
    was = model.training
    model.eval()
    correct1 = correct5 = n = 0
    for x, y in progress(loader, desc, enabled=progress_bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(x)  # (B, classes)
        k = min(5, logits.shape[-1])
        hit = logits.topk(k, dim=-1).indices == y[:, None]  # (B, k)
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(-1).sum())
        n += len(y)
    model.train(was)
    if n == 0:
        raise ValueError("the data loader yielded no images")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n_images": n}


@dataclass
class Prepared:
    """Everything built before anything is measured (so bad input fails here, fast)."""

    cfg: ExperimentConfig
    base: nn.Module
    merged: nn.Module
    loader: Any
    device: torch.device
    gflops: float
    gflops_base: float


# The unmerged model, loader, input size and GFLOPs of the last (model, data, seed, device)
# built here: consecutive points of a sweep or trials of a search share them.
_BUILT: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def prepare(cfg: ExperimentConfig, model: nn.Module | None = None) -> Prepared:
    """Builds the model (or takes ``model``), the loader and the patched copy; counts FLOPs.

    Raises:
        ValueError: an unknown model, dataset or setting; data that does not fit the model.
        FileNotFoundError: a missing checkpoint or data path.
    """
    import tome_lab
    from tome_lab.models import create_model

    if cfg.eval.threads is not None:
        torch.set_num_threads(cfg.eval.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.eval.device)
    key = (cfg.model, cfg.data, cfg.seed, str(device))
    if model is None and key in _BUILT:  # a sweep or a search: one model build per process
        base, loader, input_size, gflops_base = _BUILT[key]
    else:
        base = (create_model(cfg.model) if model is None else model).eval()
        loader = build_loader(cfg.data, base, seed=cfg.seed, device=device)
        input_size = tuple(model_data_config(base)["input_size"])
        if tome_lab.tome_state(base) is not None:  # patched: its unpatched self is the base
            base = copy.deepcopy(base)
            tome_lab.remove_tome(base)
        gflops_base = tome_lab.count_flops(base, input_size)
        if model is None:
            _BUILT.clear()  # keep one: the model and data of the last configuration
            _BUILT[key] = (base, loader, input_size, gflops_base)
    torch.manual_seed(cfg.seed)  # random matchers see the same stream, built now or cached
    merged = tome_lab.apply_config(copy.deepcopy(base), cfg.tome)
    gflops = tome_lab.count_flops(merged, input_size)
    return Prepared(cfg, base.to(device), merged.to(device), loader, device, gflops,
                    gflops_base)


def measure(p: Prepared) -> dict[str, Any]:
    """Scores and times a :func:`prepare`-d evaluation; returns the flat result."""
    import tome_lab

    cfg = p.cfg
    base, merged = p.base, p.merged
    if cfg.eval.compile:
        ev = cfg.eval
        base = compile_model(p.base, ev.compile_backend, ev.compile_mode, ev.compile_freezing)
        merged = compile_model(p.merged, ev.compile_backend, ev.compile_mode,
                               ev.compile_freezing)
    result: dict[str, Any] = score(merged, p.loader, p.device, cfg.eval.dtype)
    x = next(iter(p.loader))[0].to(p.device)
    with torch.no_grad(), autocast(p.device, cfg.eval.dtype):
        p.merged(x[:1])  # one eager forward leaves the tokens per block in the ToMe state
    tokens = list(tome_lab.tome_state(p.merged).tokens)
    speed: dict[str, Any] = {"img_per_s": None, "img_per_s_base": None, "speedup": None}
    if cfg.eval.speed:
        speed = measure_speed(base, merged, x, cfg.eval.speed_batches, p.device,
                              cfg.eval.dtype, cfg.eval.speed_warmup)
    tome = cfg.tome
    return {
        **result, "gflops": p.gflops, "gflops_base": p.gflops_base, **speed, "tokens": tokens,
        "model": cfg.model.name, "dataset": cfg.data.name, "split": cfg.data.split,
        "r": list(tome.r) if isinstance(tome.r, tuple) else tome.r, "matching": tome.matching,
        "schedule": tome.schedule, "prop_attn": tome.prop_attn, "device": str(p.device),
        "dtype": cfg.eval.dtype, "compile": cfg.eval.compile,
        "compile_mode": cfg.eval.compile_mode, "compile_freezing": cfg.eval.compile_freezing,
        "threads": torch.get_num_threads(), "seed": cfg.seed,
    }


def evaluate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Evaluates ``cfg.model`` with ToMe ``cfg.tome`` on ``cfg.data``; returns flat metrics.

    Args:
        cfg: model, data, ToMe setting, how to run, seed.

    Returns:
        The flat dict described in this module's docstring.
    """
    return measure(prepare(cfg))


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


ALIASES: dict[str, cli.Alias] = {**cli.MODEL_ALIASES, **cli.DATA_ALIASES, **cli.TOME_ALIASES,
                                 **cli.EVAL_ALIASES, "--batch-size": "--data.batch_size"}

DESCRIPTION = """\
Evaluate one model with one ToMe setting: top-1/top-5, GFLOPs, img/s and speed-up against the
unmerged model, tokens after each block. With no arguments: the embedded vit_digits on
mnist5k's 1,000 held-out test digits at r=4. Every ToMe setting of a sweep is reachable, e.g.
--tome.schedule flops --tome.options.gflops 0.09; --config takes a sweep point's config.yaml.
Exit status: 0 ok, 2 bad input (flags, values, names, paths, data), 1 a crash."""


def build_parser() -> Any:
    """The jsonargparse parser: every ExperimentConfig field, ``--json``."""

    def extra(parser: Any) -> None:
        parser.add_argument("--json", action="store_true",
                            help="Print the result as one JSON line instead of a table.")
        parser.add_argument("--sweep", type=list[str], default=[],
                            help="The sweep words of an ablation file given as --config (e.g. "
                                 "a search's pareto.yaml): evaluate runs its base "
                                 "configuration only, and says so.")

    return cli.build_parser(ExperimentConfig, PROG, DESCRIPTION, ALIASES, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: the table (or JSON) on stdout; returns the exit status."""

    def body() -> int:
        cfg, ns = cli.parse(build_parser(), ExperimentConfig, argv, ALIASES)
        if ns.sweep:
            print(f"note: the sweep words {list(ns.sweep)} are ablate's; evaluating the base "
                  f"configuration (python -m tome_lab.ablate --config runs them all)",
                  file=sys.stderr)
        with cli.setting_up():
            prepared = prepare(cfg)
        with cli.running():
            result = measure(prepared)
        print(json.dumps(result) if ns.json else format_table(result), file=sys.stdout)
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
