"""Data augmentation for training on small data: a random affine warp per image.

DeiT (Touvron et al., ICML 2021) trains a ViT on ImageNet with heavy augmentation; on the
embedded digits, shifts, small rotations and zoom are what keeps a ViT from memorising 3,600
images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(x: Tensor, generator: torch.Generator, shift: float = 3.0, degrees: float = 12.0,
            scale: tuple[float, float] = (0.9, 1.1)) -> Tensor:
    """Random affine per image: shift by up to ``shift`` pixels, rotate, scale.

    The random draws come from ``generator`` on the CPU, so a run is reproducible from its
    seed whatever device the images are on.

    Args:
        x: [B, C, H, W] normalised images (any device).
        generator: a CPU generator that seeds the draws.
        shift: largest translation in pixels.
        degrees: largest rotation.
        scale: zoom range.

    Returns:
        [B, C, H, W] on ``x``'s device; borders are filled by replication, i.e. with the
        background of digits.
    """
    B, _, H, W = x.shape

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=generator)  # (B,)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    tx, ty = uniform(-shift, shift) * 2 / W, uniform(-shift, shift) * 2 / H
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(device=x.device, dtype=x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
