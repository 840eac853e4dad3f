"""``dots``: count the dots of one colour among distractor dots and noise, on a 56x56 canvas.

A task whose answer is *how many* patches carry something, so that it tests the two mechanisms
the ToMe paper's merges rest on (Bolya et al., ICLR 2023, Sec. 3): a merged token's ``size``
says how many patches it stands for, the size-weighted average keeps their mean, and
proportional attention (``log size`` on the logits) lets it count as many. Pruning drops
patches, so it should lose the count.

Each RGB image holds 1 to ``MAX_COUNT`` = 12 red dots (the label is their number) and 0 to
``MAX_DISTRACTORS`` = 8 dots of other colours, on a dim background with Gaussian noise. A dot
is a disc of ``DOT_PIXELS`` = 21 pixels (radius ``RADIUS``). Dots lie wholly inside the
canvas and may straddle patch borders anywhere, but never touch one another (centres at least
``MIN_DIST`` apart), so the count is well defined. With a stride-4 patch embedding the image
is a 14x14 grid of **196 patch tokens**, DeiT's count at 224 px with 16 px patches.

Everything is drawn from ``numpy``'s generator seeded with ``(SEED, split index)``, so the
splits come from disjoint seeds (``train`` 16,000, ``val`` 1,000, ``test`` 2,000 images), in
a few seconds, cached per process. ``VERSION`` names the generator: change it with any change
to what ``generate`` draws.

``vit_dots`` is a timm ``VisionTransformer`` with a class token and
``tome_lab.models.ConvStem`` as its patch embedding, plain timm ``Block`` / ``Attention``
blocks, registered with timm. Its zoo checkpoint trained with merging at r = 16 is
``tome_lab/zoo/vit_dots_tome16.safetensors`` (load it with ``checkpoint=``), as for the
video and audio tasks.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from tome_lab.config import DataConfig
from tome_lab.data import DataError, _check_classes, generator_version
from tome_lab.models import ConvStem, build_zoo_model, register_once
from tome_lab.registry import DATASETS

VERSION = 1  # the generator's version: bump it with any change to what generate() draws
SEED = 2028  # with the split's index, seeds every draw of that split
CANVAS = 56  # 14x14 patches of 4 px: 196 tokens
RADIUS = 2  # a dot is the disc of pixels within RADIUS + 0.5 of its centre: 21 pixels, 5 px wide
MIN_DIST = 2 * RADIUS + 3  # centre distance: at least two background pixels between dots
MAX_COUNT = 12  # target dots per image: uniform in 1..MAX_COUNT (the label)
MAX_DISTRACTORS = 8  # distractor dots per image: uniform in 0..MAX_DISTRACTORS
TARGET = (1.0, 0.15, 0.1)  # red
# Distractor colours: green, blue and yellow (yellow shares red's R channel, so a model has to
# read more than one channel to tell it from the target).
DISTRACTORS = ((0.15, 0.9, 0.2), (0.2, 0.35, 1.0), (1.0, 0.9, 0.15))
BACKGROUND = 0.12  # background level of every channel before noise
NOISE = 0.08  # standard deviation of the additive Gaussian pixel noise (0..1 scale)
SPLITS: dict[str, int] = {"train": 16000, "val": 1000, "test": 2000}  # images per split

ZOO_CHECKPOINT = Path(__file__).resolve().parents[1] / "zoo" / "vit_dots.safetensors"
MODEL = "vit_dots"


def _disc() -> np.ndarray:
    d = np.arange(-RADIUS, RADIUS + 1)
    return (d[:, None] ** 2 + d[None, :] ** 2) <= (RADIUS + 0.5) ** 2  # (2R+1, 2R+1)


DISC = _disc()
DOT_PIXELS = int(DISC.sum())


class DotsSplit(NamedTuple):
    """One generated split.

    Attributes:
        images: [N, 56, 56, 3] float32 RGB in 0..1.
        labels: [N] int64, the number of target-colour dots.
        centres: [N, K, 2] int64, (row, column) of every dot slot, K = MAX_COUNT +
            MAX_DISTRACTORS; unused slots hold -1.
        colours: [N, K] int64, 0 for the target colour, 1 + i for ``DISTRACTORS[i]``, -1 for an
            unused slot.
    """

    images: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    colours: np.ndarray


def generate(split: str) -> DotsSplit:
    """Generates a split (cached per process; the arrays are read-only).

    Args:
        split: ``train``, ``val`` or ``test``.

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown dots split {split!r}; valid: {', '.join(SPLITS)}")
    return _generate(split)


def _place(rng: np.random.Generator, used: np.ndarray) -> np.ndarray:
    """Dot centres [N, K, 2] for the slots marked in ``used`` [N, K], pairwise >= MIN_DIST.

    Slot by slot, for all images at once: draw a centre, redraw where it comes too close to an
    earlier slot of its image, until none does. With at most 20 dots of exclusion radius 7 px
    in a 52 px square, the canvas is far from full and a few redraws suffice.
    """
    n, k = used.shape
    lo, hi = RADIUS, CANVAS - RADIUS  # the whole disc inside the canvas
    centres = np.full((n, k, 2), -1, np.int64)
    for j in range(k):
        todo = np.flatnonzero(used[:, j])
        for _ in range(1000):
            if todo.size == 0:
                break
            c = rng.integers(lo, hi, (todo.size, 2))  # (M, 2)
            prev = centres[todo, :j]  # (M, j, 2)
            d2 = ((prev - c[:, None]) ** 2).sum(-1)  # (M, j)
            ok = ((d2 >= MIN_DIST**2) | (prev[..., 0] < 0)).all(1)
            centres[todo[ok], j] = c[ok]
            todo = todo[~ok]
        if todo.size:  # pragma: no cover - the canvas holds far more dots than MAX_* allow
            raise RuntimeError("could not place the dots apart; lower MAX_COUNT")
    return centres


@functools.cache
def _generate(split: str) -> DotsSplit:
    n = SPLITS[split]
    rng = np.random.default_rng([SEED, list(SPLITS).index(split)])
    k = MAX_COUNT + MAX_DISTRACTORS
    labels = rng.integers(1, MAX_COUNT + 1, n)  # (N,)
    n_dis = rng.integers(0, MAX_DISTRACTORS + 1, n)  # (N,)
    slot = np.arange(k)[None]  # (1, K)
    colours = np.where(slot < labels[:, None], 0, -1)  # (N, K): targets first
    dis = rng.integers(1, len(DISTRACTORS) + 1, (n, k))
    is_dis = (slot >= labels[:, None]) & (slot < (labels + n_dis)[:, None])
    colours = np.where(is_dis, dis, colours)
    centres = _place(rng, colours >= 0)
    palette = np.array((TARGET, *DISTRACTORS), np.float32)  # (1 + D, 3)
    images = np.full((n, CANVAS, CANVAS, 3), BACKGROUND, np.float32)
    dy, dx = np.nonzero(DISC)  # (P,), the disc's pixel offsets
    for j in range(k):
        idx = np.flatnonzero(colours[:, j] >= 0)
        rows = centres[idx, j, 0][:, None] + dy[None] - RADIUS  # (M, P)
        cols = centres[idx, j, 1][:, None] + dx[None] - RADIUS  # (M, P)
        images[idx[:, None], rows, cols] = palette[colours[idx, j]][:, None]  # (M, P, 3)
    images += NOISE * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    out = DotsSplit(images, labels.astype(np.int64), centres, colours.astype(np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def channel_stats(split: str = "train") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a split's pixels (3 decimals each)."""
    x = generate(split).images.reshape(-1, 3)  # (N * H * W, 3)
    mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    return tuple(round(float(v), 3) for v in mean), tuple(round(float(v), 3) for v in std)


def to_model_input(images: np.ndarray, model: nn.Module) -> Tensor:
    """[N, H, W, 3] RGB in 0..1 -> [N, 3, H, W] normalised with the model's per-channel stats.

    Raises:
        DataError: the model does not take 3 x 56 x 56 images.
    """
    from tome_lab.data import model_data_config

    dcfg = model_data_config(model)
    if tuple(dcfg["input_size"]) != (3, CANVAS, CANVAS):
        raise DataError(f"dataset 'dots' makes RGB images of shape {(3, CANVAS, CANVAS)} "
                        f"(C, H, W) but the model takes {tuple(dcfg['input_size'])}; use "
                        f"'{MODEL}'")
    x = torch.from_numpy(np.array(images, np.float32)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


@DATASETS.register("dots", "count_dots")
@generator_version(VERSION)
def dots(cfg: DataConfig, model: nn.Module) -> Dataset:
    """A dot-counting split (``train`` 16,000 / ``val`` 1,000 / ``test`` 2,000 RGB images)."""
    s = generate(cfg.split)
    x = to_model_input(s.images, model)  # checks the input size first: the clearer error
    _check_classes(s.labels, model, "dots")
    return TensorDataset(x, torch.from_numpy(s.labels.copy()))


# Per-channel pixel statistics of the train split (``channel_stats("train")``; a test checks).
_DOTS_CFG: dict[str, Any] = dict(
    url="", hf_hub_id=None, num_classes=MAX_COUNT + 1, input_size=(3, CANVAS, CANVAS),
    mean=(0.168, 0.139, 0.13), std=(0.203, 0.129, 0.11), interpolation="bilinear",
    crop_pct=1.0, crop_mode="center", first_conv="patch_embed.stem.0", classifier="head",
    license="mit",
    # A local file, so that tome_lab.models never looks for a download.
    file=str(ZOO_CHECKPOINT),
)
# timm's register_model reads the module's default_cfgs for the model's pretrained config.
default_cfgs: dict[str, dict[str, Any]] = {MODEL: _DOTS_CFG}


def vit_dots(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A small ViT for 56x56 RGB dot counting: 196 patch tokens + a class token.

    Width 64, 2 heads (head_dim 32 as in DeiT), depth 12 (ToMe's r is per block, so keep
    DeiT's depth), MLP ratio 2: small enough to train within 45 minutes on one CPU core.
    ``MAX_COUNT + 1`` outputs, so that the class index is the count (class 0 never occurs).

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults.
    """
    from timm.models.vision_transformer import VisionTransformer

    return build_zoo_model(VisionTransformer, dict(
        img_size=CANVAS, patch_size=4, in_chans=3, num_classes=MAX_COUNT + 1, embed_dim=64,
        depth=12, num_heads=2, mlp_ratio=2.0, embed_layer=ConvStem, class_token=True,
        global_pool="token"), kwargs, _DOTS_CFG, MODEL, pretrained, ZOO_CHECKPOINT)


register_once(vit_dots)
