"""First half of the unprotected tokens in A, second half in B (spatially split)."""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.registry import PARTITIONS


@PARTITIONS.register("halves")
def halves(n: int, num_prefix: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A: positions p .. p + m/2 - 1, B: the rest (m unprotected tokens)."""
    m = n - num_prefix
    pos = torch.arange(num_prefix, n, device=device)
    a, b = pos[: m // 2], pos[m // 2:]
    return a.expand(batch, -1), b.expand(batch, -1)
