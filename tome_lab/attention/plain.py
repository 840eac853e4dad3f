"""Plain attention: merged tokens are attended to as single tokens (ToMe's ablation)."""

from __future__ import annotations

from torch import Tensor

from tome_lab.registry import ATTENTION


@ATTENTION.register("plain", "none")
def plain(size: Tensor | None) -> Tensor | None:
    """No mask whatever the sizes."""
    return None
