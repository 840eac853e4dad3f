"""Checks every point of a sweep on the submitting machine, in seconds, before anything runs.

The configuration classes already reject bad names and values on their own; what needs the
model is checked here, on the meta device (shapes without memory or weights): the model name
exists (timm's or tome_lab's own, with a did-you-mean), a checkpoint file exists, and the ToMe
setting patches that model. Patching runs the schedule and each plug-in's option check, so a
per-layer r list of the wrong length, an unreachable ``gflops`` target and a bad plug-in option
value (``criterion``, ``k``, ``iters``, ...; the plug-ins run once on a tiny random ViT) fail
here instead of one point at a time on a cluster.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _model_names() -> list[str]:
    import timm

    import tome_lab.models  # noqa: F401  (registers tome_lab's own models with timm)

    return timm.list_models()


def check_model_name(name: str) -> None:
    """Raises ValueError (with a did-you-mean) unless ``name`` is a registered model."""
    names = _model_names()
    if name in names:
        return
    # a name cut short ('deit_small') first, then spelling neighbours
    close = [n for n in names if n.startswith(name)][:3] or difflib.get_close_matches(
        name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r} (not in timm nor tome_lab){hint}")


def _meta_model(name: str) -> Any:
    import timm
    import torch

    import tome_lab.models  # noqa: F401

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    # The patch embedding's FLOPs are counted by running it (a conv stem has no closed form):
    # it alone gets real (uninitialised) CPU memory; it is small next to the blocks.
    pe = getattr(model, "patch_embed", None)
    if pe is not None:
        model.patch_embed = pe.to_empty(device="cpu")
    return model


def check_plugin_options(tome: Any) -> None:
    """Runs the ToMe setting's plug-ins once on a tiny random ViT (a 1-block ViT on 16 patches
    and a class token, on the CPU, in milliseconds), so that an option value a plug-in checks
    only when called (``criterion``, ``iters``, ...) fails here.

    Raises:
        ValueError: a plug-in rejects its options.
    """
    import dataclasses

    import timm
    import torch

    from tome_lab.engine import apply_config

    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                             patch_size=8, depth=1, embed_dim=32, num_heads=2).eval()
    from tome_lab.registry import MATCHING

    # only the schedule is swapped (it was checked on the real model), and with it a matcher's
    # option that fixes every block's count (composite's pairs, one per real block); the rest
    # as given
    own = getattr(MATCHING.get(tome.matching), "schedule_option", None)
    options = {k: v for k, v in tome.matching_options().items() if k != own}
    probe = dataclasses.replace(tome, r=2, schedule="constant", options=options)
    apply_config(tiny, probe)
    with torch.no_grad():
        tiny(torch.randn(1, 3, 32, 32))


def check_point(config: Any, models: dict[str, Any] | None = None) -> None:
    """Checks one experiment configuration against its model, built on the meta device.

    Args:
        config: an :class:`~tome_lab.config.ExperimentConfig`.
        models: a cache of meta models by name, shared across the points of a sweep.

    Raises:
        ValueError: the model name, the checkpoint path or the ToMe setting is wrong for it.
    """
    from tome_lab.engine import apply_config

    name = config.model.name
    cache = {} if models is None else models
    if name not in cache:
        check_model_name(name)
        cache[name] = _meta_model(name)
    ckpt = config.model.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise ValueError(f"checkpoint {ckpt!r} does not exist")
    apply_config(cache[name], config.tome)
    check_plugin_options(config.tome)


def check_points(points: Sequence[Any]) -> None:
    """Checks every point (see :func:`check_point`); each distinct setting is checked once.

    Raises:
        ValueError: naming each bad point and why (all of them, not only the first).
    """
    models: dict[str, Any] = {}
    seen: dict[str, str | None] = {}
    errors = []
    for point in points:
        cfg = point.config
        key = repr((cfg.model, cfg.tome))  # the options dict makes them unhashable
        if key not in seen:
            try:
                check_point(cfg, models)
                seen[key] = None
            except (ValueError, TypeError) as err:
                seen[key] = str(err)
        if seen[key] is not None:
            errors.append(f"{point.name}: {seen[key]}")
    if errors:
        raise ValueError(f"{len(errors)} of {len(points)} point(s) would fail:\n  "
                         + "\n  ".join(errors))
