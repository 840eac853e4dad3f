"""A random half of the unprotected tokens in A, the rest in B (torch's RNG, so seeded)."""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.registry import PARTITIONS


@PARTITIONS.register("random")
def random(n: int, num_prefix: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A fresh split per image and per call; both sets sorted by position."""
    m = n - num_prefix
    perm = torch.rand(batch, m, device=device).argsort(dim=1) + num_prefix
    a = perm[:, : m // 2].sort(dim=1).values
    b = perm[:, m // 2:].sort(dim=1).values
    return a, b
