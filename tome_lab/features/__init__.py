"""Similarity features: one file each, registered in ``tome_lab.registry.FEATURES``.

A feature plug-in maps the block's input ``x`` ([B, N, C]) and its per-head ``q``, ``k``,
``v`` ([B, H, N, d]) to a per-head feature [B, H, N, d'] (a head-less one as H = 1); the
engine then averages (``head_agg="mean"``) or concatenates (``"concat"``) the heads.
Paper, Table 1a: keys work best.
"""

from __future__ import annotations

from tome_lab.registry import FEATURES, import_submodules

HEAD_AGG = ("mean", "concat")

import_submodules(__name__)

__all__ = ["FEATURES", "HEAD_AGG"]
