"""Attention variants: one file each, registered in ``tome_lab.registry.ATTENTION``.

An attention plug-in maps token sizes ([B, N, 1] or None) to an additive float mask for
``F.scaled_dot_product_attention`` ([B, 1, 1, N] or None), so timm's fused kernel stays.
"""

from __future__ import annotations

from tome_lab.registry import ATTENTION, import_submodules

import_submodules(__name__)

__all__ = ["ATTENTION"]
