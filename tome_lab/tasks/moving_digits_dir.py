"""``moving_digits_dir``: the ``moving_digits`` clips labelled by digit *and* direction.

``moving_digits`` is saturated (its models score 99.8-100% on test and random merging keeps
99.7% at r = 20, so it cannot rank merging methods; issue 24). This task keeps its clips, pools
and splits exactly and makes the label harder: ``label = digit * 8 + direction``, 80 classes.
The direction still needs the motion across frames (no single frame shows it), and the digit's
identity now needs the ink's fine shape, which merging similar space-time tokens can blur, and
which the held-out test digits (disjoint from the training pool) make a generalisation problem.

The clips are ``tome_lab.tasks.moving_digits.generate``'s, unchanged (``train`` 6,000 clips of
3,500 digits, ``val`` 500 of 500 carved from the training pool, ``test`` 1,000 of 1,000 held
out); the digit is the bundled MNIST label of each clip's source. ``VERSION`` names this
labelling; a change to ``moving_digits``' generator changes its version, which enters every
result's identity through ``moving_digits``, and must bump ``VERSION`` here as well.

``vit_video_dir`` is ``vit_video_digits``' architecture (``moving_digits.video_vit``) with an
80-way head.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import nn
from torch.utils.data import Dataset

import tome_lab.tasks.moving_digits as md
from tome_lab.config import DataConfig
from tome_lab.data import _mnist_arrays, generator_version
from tome_lab.models import register_once
from tome_lab.registry import DATASETS

VERSION = 1  # this labelling's version: bump it with any change to what generate() returns
DIGITS = 10
CLASSES = DIGITS * len(md.DIRECTIONS)  # 80: label = digit * 8 + direction
SPLITS = md.SPLITS

ZOO_CHECKPOINT = Path(__file__).resolve().parents[1] / "zoo" / "vit_video_dir.safetensors"
MODEL = "vit_video_dir"


class DirClips(NamedTuple):
    """One split.

    Attributes:
        clips: [N, T, 32, 32] float32 in 0..1, ``moving_digits.generate(split).clips``.
        labels: [N] int64, ``digits * 8 + directions``.
        digits: [N] int64, the MNIST label of each clip's digit.
        directions: [N] int64, the direction of motion (an index into ``md.DIRECTIONS``).
        sources: [N] int64, the digit of each clip (an index into the 5,000 bundled digits).
    """

    clips: np.ndarray
    labels: np.ndarray
    digits: np.ndarray
    directions: np.ndarray
    sources: np.ndarray


def generate(split: str) -> DirClips:
    """The ``moving_digits`` clips of ``split`` with their digit x direction labels (cached per
    process; the arrays are read-only).

    Args:
        split: ``train``, ``val`` or ``test``.

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown moving_digits_dir split {split!r}; valid: {', '.join(SPLITS)}")
    return _generate(split)


@functools.cache
def _generate(split: str) -> DirClips:
    s = md.generate(split)
    _, y = _mnist_arrays()
    digits = y[s.sources].astype(np.int64)
    labels = digits * len(md.DIRECTIONS) + s.labels
    for a in (digits, labels):
        a.setflags(write=False)
    return DirClips(s.clips, labels, digits, s.labels, s.sources)


@DATASETS.register("moving_digits_dir", "video_digits_dir")
@generator_version(f"{VERSION}+moving_digits{md.moving_digits.version}")
def moving_digits_dir(cfg: DataConfig, model: nn.Module) -> Dataset:
    """Clips [1, 8, 32, 32] labelled by digit x direction, 80 classes (``train`` 6,000 /
    ``val`` 500 / ``test`` 1,000), normalised with the model's mean and std."""
    s = generate(cfg.split)
    return md.clip_dataset(s.clips, s.labels, model, "moving_digits_dir", MODEL)


_CFG: dict[str, Any] = dict(md._VIDEO_CFG, num_classes=CLASSES, file=str(ZOO_CHECKPOINT))
default_cfgs: dict[str, dict[str, Any]] = {MODEL: _CFG}


def vit_video_dir(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``vit_video_digits``' video ViT with an 80-way digit x direction head: 256 space-time
    tokens, no class token, average pooling; width 64, 2 heads, depth 12, MLP ratio 2.

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults; ``num_frames`` and
            ``tubelet`` go to ``TubeEmbed``.
    """
    return md.video_vit(MODEL, CLASSES, _CFG, ZOO_CHECKPOINT, pretrained, kwargs)


register_once(vit_video_dir)
