"""Merge schedules: per-layer r. One file each, registered in ``tome_lab.registry.SCHEDULES``.

A schedule is a function ``fn(r, spec: ViTSpec, **options) -> list[int]`` returning one r
per block; it raises ``ValueError`` for lengths or targets it cannot meet.
"""

from __future__ import annotations

from tome_lab.registry import SCHEDULES, import_submodules

import_submodules(__name__)

__all__ = ["SCHEDULES"]
