"""``spoken_digits``: the words "zero" to "nine" spoken by espeak-ng voices, as log-mel images.

The task puts ToMe in the paper's audio regime (Sec. 4.3, AudioMAE on AudioSet) offline: a
spectrogram ViT in the AudioMAE layout, whose patches cover time x frequency.

This module is the dataset and the model; the generator they read (voices, rendering,
features, split files and the command) is :mod:`tome_lab.tasks.spoken_digits_synth`, whose
names are re-exported here.

**Clips.** Each *speaker* (one espeak-ng voice setting) says the ten digits, one clip each,
in noise; how a clip is drawn is in :mod:`tome_lab.tasks.spoken_digits_synth`.

**Splits** (disjoint voice settings between training and test):

| split | speakers | clips | voices |
|---|---|---|---|
| ``train`` | 500 | 5,000 | training variants, training accents |
| ``val`` (for choices made during training) | 50 | 500 | training variants and accents |
| ``test`` (held out, reported) | 100 | 1,000 | held-out variants only, any accent |

``HELD_OUT_VARIANTS`` (a quarter of the variants) and ``HELD_OUT_ACCENTS`` are never heard in
``train`` or ``val``.

**Features.** Log-mel spectrograms from librosa: ``N_MELS`` mel bands x ``FRAMES`` frames
(10 ms hop), in dB relative to full scale, clipped to ``[DB_MIN, DB_MAX]`` and stored as
uint8 (0.4 dB steps), so a split of 1,000 clips is 8 MB before compression. The dataset
hands the model ``(uint8 - FEATURE_MEAN) / FEATURE_STD`` as a [1, 64, 128] image.

**Generation** is one command, cached after the first run (``$TOME_LAB_CACHE`` or
``~/.cache/tome_lab``)::

    python -m tome_lab.tasks.spoken_digits_synth      # all splits into the cache
    python -m tome_lab.tasks.spoken_digits_synth --split test --out DIR --workers 2

(``python -m tome_lab.tasks.spoken_digits`` runs the same command.)

The ``test`` split that the committed model was measured on ships with the package
(``tome_lab/zoo/spoken_digits_test.npz``), so evaluation needs no espeak-ng; ``train`` and
``val`` need it once. ``vit_audio_digits`` is the matching model (see :func:`vit_audio_digits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tome_lab.config import DataConfig
from tome_lab.data import DataError, _check_classes, generator_version, model_data_config
from tome_lab.registry import DATASETS
from tome_lab.tasks.spoken_digits_synth import (  # noqa: F401  # the generator, re-exported
    _FORMAT,
    ACCENTS,
    AMPLITUDE,
    CACHE_ENV,
    DB_MAX,
    DB_MIN,
    ESPEAK_ENV,
    FMAX,
    FMIN,
    FRAMES,
    GAIN_DB,
    HELD_OUT_ACCENTS,
    HELD_OUT_VARIANTS,
    HOP,
    N_FFT,
    N_MELS,
    PITCH,
    RATE,
    SAMPLE_RATE,
    SEED,
    SNR_DB,
    SPLITS,
    VARIANTS,
    WORDS,
    EspeakNotFound,
    Speaker,
    SpokenSplit,
    _split_id,
    cache_dir,
    espeak_binary,
    espeak_version,
    generate,
    log_mel,
    main,
    make_clip,
    read_split,
    render,
    save_split,
    speakers,
    split_path,
    synthesize,
)

# The uint8 features' mean and standard deviation over the train split (measured once by
# ``feature_stats()``; fixed here so that the model's input does not depend on the cache).
FEATURE_MEAN, FEATURE_STD = 76.0, 33.0

MODEL = "vit_audio_digits"
COMMITTED_TEST = Path(__file__).resolve().parents[1] / "zoo" / "spoken_digits_test.npz"


def load(split: str, workers: int = 1) -> SpokenSplit:
    """A split: the committed ``test``, else the cached file, else generated and cached.

    Raises:
        ValueError: an unknown split.
        EspeakNotFound: the split is neither committed nor cached and espeak-ng is missing.
    """
    _split_id(split)
    if split == "test" and COMMITTED_TEST.is_file():
        return read_split(COMMITTED_TEST)
    path = split_path(split)
    if not path.is_file():
        s = generate(split, workers=workers, progress=True)
        save_split(s, path, {"espeak": espeak_version(espeak_binary())})
    return read_split(path)


def spoken_digits(cfg: DataConfig, model: nn.Module) -> Dataset:
    """Spoken digits as [1, 64, 128] log-mel images (5,000 train / 500 val / 1,000 test)."""
    want = (1, N_MELS, FRAMES)
    have = tuple(model_data_config(model)["input_size"])
    if have != want:
        raise DataError(f"dataset 'spoken_digits' gives {want} log-mel inputs but the model "
                        f"takes {have}; use {MODEL!r}")
    s = load(cfg.split)
    _check_classes(s.labels, model, "spoken_digits")
    x = (torch.from_numpy(s.features.astype(np.float32)) - FEATURE_MEAN) / FEATURE_STD
    return TensorDataset(x[:, None].contiguous(), torch.from_numpy(s.labels.copy()))


if __name__ != "__main__":  # ``python -m`` runs this file twice: as itself and as __main__
    DATASETS.register("spoken_digits", "speech_digits")(generator_version(1)(spoken_digits))


def feature_stats(s: SpokenSplit) -> tuple[float, float]:
    """Mean and standard deviation of a split's uint8 features (how ``FEATURE_*`` were set)."""
    x = s.features.astype(np.float64)
    return float(x.mean()), float(x.std())


# ---------------------------------------------------------------------------------------------
# The model


class SpecStem(nn.Module):
    """Patch embedding of a spectrogram by three stride-2 3x3 convolutions: [B, 1, F, T] ->
    [B, F/8 * T/8, D] tokens, one per 8 (mel) x 8 (frame) cell of the time-frequency grid.

    A convolutional stem in place of the one linear projection of each patch is what lets a
    ViT learn from a few thousand examples (Xiao et al., "Early convolutions help transformers
    see better", NeurIPS 2021); like AST's overlapping patches, each token also sees a little
    of its neighbours. It costs about a tenth of ``vit_audio_digits``' FLOPs and keeps the
    attributes timm and tome_lab read from ``PatchEmbed`` (``img_size``, ``patch_size``,
    ``grid_size``, ``num_patches``, ``proj``, ``norm``).

    Args:
        img_size: (mel bands, frames), each divisible by 8.
        patch_size: total stride; must be 8 (or (8, 8)).
        in_chans: input channels.
        embed_dim: token width.
        bias: bias of ``proj`` (timm passes ``not pre_norm``).
        width: channels of the first convolution (doubled in the second).
        **kwargs: other ``PatchEmbed`` arguments timm passes; ``norm_layer`` is honoured.
    """

    def __init__(self, img_size: int | tuple[int, int] = (N_MELS, FRAMES),
                 patch_size: int | tuple[int, int] = 8, in_chans: int = 1,
                 embed_dim: int = 64, bias: bool = True, width: int = 16,
                 **kwargs: Any) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if patch != (8, 8) or size[0] % 8 or size[1] % 8:
            raise ValueError(f"SpecStem has a fixed stride of 8 on sizes divisible by 8, got "
                             f"patch_size={patch_size}, img_size={img_size}")
        if kwargs.get("output_fmt") not in (None, "NCHW") or kwargs.get("dynamic_img_pad"):
            raise ValueError("SpecStem supports fixed-size inputs only (no dynamic_img_size)")
        norm_layer = kwargs.get("norm_layer")
        self.img_size, self.patch_size = size, patch
        self.grid_size = (size[0] // 8, size[1] // 8)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.flatten, self.output_fmt, self.dynamic_img_pad = True, "NCHW", False
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
            nn.GELU(),
        )
        self.proj = nn.Conv2d(2 * width, embed_dim, 3, 2, 1, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Total stride, as timm's ``PatchEmbed.feat_ratio``."""
        return 8 if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F, T] -> [B, N, D] tokens, row-major over the (mel, frame) grid."""
        x = self.proj(self.stem(x))  # (B, D, F/8, T/8)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D)


ZOO_CHECKPOINT = Path(__file__).resolve().parents[1] / "zoo" / f"{MODEL}.safetensors"
# The inputs are standardised by the dataset already (FEATURE_MEAN / FEATURE_STD), hence 0 / 1.
_AUDIO_CFG: dict[str, Any] = dict(
    url="", hf_hub_id=None, num_classes=10, input_size=(1, N_MELS, FRAMES), mean=(0.0,),
    std=(1.0,), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
    first_conv="patch_embed.stem.0", classifier="head", license="mit",
    # timm's pretrained config names the committed checkpoint, so that tome_lab.models sees
    # its weights as available offline (``--model.pretrained true``).
    file=str(ZOO_CHECKPOINT))


def vit_audio_digits(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A spectrogram ViT in the AudioMAE layout for ``spoken_digits``.

    timm's ``VisionTransformer`` on a [1, 64, 128] log-mel image embedded by
    :class:`SpecStem` into an 8 x 16 grid of **128 time-frequency patch tokens** (each an
    eighth of the mel band over 80 ms), with learned position embeddings for that grid; no
    class token, mean pooling (size-weighted once ToMe merges) and a LayerNorm before the
    head, as AudioMAE (Huang et al., NeurIPS 2022) fine-tunes. Width 64, depth 8, 2 heads
    (head_dim 32), MLP ratio 2: small enough to train in about half an hour on a busy 2-core
    CPU.

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults.
    """
    from timm.models.vision_transformer import VisionTransformer

    from tome_lab.models import build_zoo_model

    return build_zoo_model(VisionTransformer, dict(
        img_size=(N_MELS, FRAMES), patch_size=(8, 8), in_chans=1, num_classes=10, embed_dim=64,
        depth=8, num_heads=2, mlp_ratio=2.0, embed_layer=SpecStem, class_token=False,
        global_pool="avg", fc_norm=True), kwargs, _AUDIO_CFG, MODEL, pretrained, ZOO_CHECKPOINT)


# timm reads a registered model's pretrained config from its module's ``default_cfgs``.
default_cfgs: dict[str, dict[str, Any]] = {MODEL: _AUDIO_CFG}


def _register() -> None:
    from tome_lab.models import register_once

    register_once(vit_audio_digits)


_register()


__all__ = ["ACCENTS", "AMPLITUDE", "CACHE_ENV", "COMMITTED_TEST", "DB_MAX", "DB_MIN", "ESPEAK_ENV",
           "FEATURE_MEAN", "FEATURE_STD", "FMAX", "FMIN", "FRAMES", "GAIN_DB", "HELD_OUT_ACCENTS",
           "HELD_OUT_VARIANTS", "HOP", "MODEL", "N_FFT", "N_MELS", "PITCH", "RATE", "SAMPLE_RATE",
           "SEED", "SNR_DB", "SPLITS", "VARIANTS", "WORDS", "ZOO_CHECKPOINT", "EspeakNotFound",
           "Speaker", "SpecStem", "SpokenSplit", "cache_dir", "espeak_binary", "espeak_version",
           "feature_stats", "generate", "load", "log_mel", "main", "make_clip", "read_split",
           "render", "save_split", "speakers", "split_path", "spoken_digits", "synthesize",
           "vit_audio_digits"]


if __name__ == "__main__":  # the command lives with the generator
    raise SystemExit(main())
