"""Alternate tokens between A and B over the whole sequence, as published (the default)."""

from __future__ import annotations

import torch

from tome_lab.registry import PARTITIONS


@PARTITIONS.register("alternate")
def alternate(n: int, num_prefix: int, batch: int, device: torch.device) -> None:
    """None: the matcher uses strided slices, the fastest and the published split."""
    return None
