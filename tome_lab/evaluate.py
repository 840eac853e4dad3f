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
``gflops_image_*``  only for a matcher whose images keep different token counts (it pads its
                    batches with size-0 tokens, ``pads = True``: ``ats``): each image's own
                    GFLOPs over its real tokens (:func:`image_gflops`), ``_mean``, ``_std``,
                    ``_min`` and ``_max`` over the scored images; ``gflops`` stays the padded
                    batch's count (the cap), and ``top1`` is then an average over images of
                    different cost
``tokens_image_*``  the same matchers: real tokens leaving the last block, ``_mean``,
                    ``_min``, ``_max`` over the scored images
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
from tome_lab.flops import ViTSpec, block_r, matching_flops
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


def image_tokens(model: nn.Module, batch: int) -> torch.Tensor:
    """[B, depth] the real tokens (size > 0) leaving each block, per image, in the last
    forward of a patched ``model`` (a block before the first reduction: every token)."""
    import tome_lab

    st = tome_lab.tome_state(model)
    cols = [torch.full((batch,), st.tokens[i]) if s is None else (s[..., 0] > 0).sum(1).cpu()
            for i, s in enumerate(st.sizes[1:])]
    return torch.stack(cols, dim=1)


def image_gflops(spec: ViTSpec, r: Sequence[int], tokens: torch.Tensor) -> list[float]:
    """Each image's own GFLOPs: the analytic count (:func:`tome_lab.flops.analytic_gflops`) of
    the blocks on the image's real tokens only, what an implementation that drops the padding
    would compute. ``tokens`` [B, depth] is :func:`image_tokens`; the blocks that reduce, and
    so pay the matcher's cost (on the image's real tokens), are the padded batch's. For a
    matcher without padding every image's count equals ``analytic_gflops(spec, r)``."""
    heads = spec.attn_dim // spec.head_dim
    out = []
    for row in tokens.tolist():
        n = n_pad = spec.num_tokens
        total, merged = spec.fixed_flops, False
        for i, (ri, n_out) in enumerate(zip(r, row, strict=True)):
            width = spec.attn_width if merged and spec.attn_width else spec.head_dim
            total += n * spec.attn_token_flops + 2 * n * n * heads * width
            rr = block_r(spec, ri, n_pad)
            if rr > 0:
                total += matching_flops(spec, n, rr, i)
            merged, n_pad, n = merged or rr > 0, n_pad - rr, n_out
            total += n * spec.mlp_token_flops
        out.append((total + n * spec.final_token_flops) / 1e9)
    return out


class ImageCost:
    """Collects each image's token count and own GFLOPs over the forwards of a patched model
    whose images keep different counts (see :func:`image_gflops`), by a forward hook.

    Args:
        model: the patched (eager) model whose ToMe state is read.
        called: the module actually called, if another (e.g. its compiled wrapper).
    """

    def __init__(self, model: nn.Module, called: nn.Module | None = None) -> None:
        import tome_lab

        self.model, self.gflops, self.tokens = model, [], []
        st = tome_lab.tome_state(model)
        self._spec, self._r = st.spec, st.r
        self._hook = (called or model).register_forward_hook(self._collect)

    def _collect(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        counts = image_tokens(self.model, out.shape[0])  # (B, depth)
        self.tokens += counts[:, -1].tolist()
        self.gflops += image_gflops(self._spec, self._r, counts)

    def close(self) -> None:
        """Removes the hook."""
        self._hook.remove()

    def summary(self) -> dict[str, float]:
        """Mean and spread of the collected images' GFLOPs and final token counts."""
        g = torch.tensor(self.gflops, dtype=torch.float64)
        t = torch.tensor(self.tokens, dtype=torch.float64)
        return {"gflops_image_mean": float(g.mean()),
                "gflops_image_std": float(g.std()) if len(g) > 1 else 0.0,
                "gflops_image_min": float(g.min()), "gflops_image_max": float(g.max()),
                "tokens_image_mean": float(t.mean()), "tokens_image_min": int(t.min()),
                "tokens_image_max": int(t.max())}


def pads(matching: str) -> bool:
    """Whether matcher ``matching`` pads its batches, so that images keep different counts."""
    from tome_lab.registry import MATCHING

    return bool(getattr(MATCHING.get(matching), "pads", False))


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
    cost = None
    if pads(cfg.tome.matching):  # per-image counts: hooked on the eager model, or counted in
        # one more eager pass when the scored model is compiled (its state is not read back)
        cost = ImageCost(p.merged)
        if cfg.eval.compile:
            score(p.merged, p.loader, p.device, cfg.eval.dtype, desc="tokens")
            cost.close()
    result: dict[str, Any] = score(merged, p.loader, p.device, cfg.eval.dtype)
    if cost is not None:
        cost.close()
        result.update(cost.summary())
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
        parser.add_argument("--entry", type=int | None, default=None,
                            help="With --sweep (a Pareto file's schedules or (p, m) pairs): "
                                 "evaluate its i-th point (0: the first, cheapest).")

    return cli.build_parser(ExperimentConfig, PROG, DESCRIPTION, ALIASES, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: the table (or JSON) on stdout; returns the exit status."""

    def body() -> int:
        cfg, ns = cli.parse(build_parser(), ExperimentConfig, argv, ALIASES)
        if ns.entry is not None:  # one point of the file's sweep
            from tome_lab.config import to_dict
            from tome_lab.sweep import expand

            with cli.setting_up():
                points = expand(list(ns.sweep), to_dict(cfg))
                if not 0 <= ns.entry < len(points):
                    raise ValueError(f"--entry {ns.entry}: the sweep has {len(points)} "
                                     f"point(s), 0 to {len(points) - 1}")
            cfg = points[ns.entry].config
        elif ns.sweep:
            print(f"note: the sweep words {list(ns.sweep)} are ablate's; evaluating the base "
                  f"configuration (python -m tome_lab.ablate --config runs them all, --entry i "
                  f"its i-th)", file=sys.stderr)
        with cli.setting_up():
            prepared = prepare(cfg)
        with cli.running():
            result = measure(prepared)
        print(json.dumps(result) if ns.json else format_table(result), file=sys.stdout)
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
