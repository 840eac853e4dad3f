"""What a matching plug-in sees of a block."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class MatchContext:
    """Inputs of one matching call.

    Attributes:
        metric: [B, N, C'] the similarity feature (keys averaged over heads by default).
        num_prefix: protected tokens at the head of the sequence (class, distillation,
            registers); they are never merged away.
        distance: the similarity used on ``metric`` (see :func:`tome_lab.merge.similarity`).
        size: [B, N, 1] token sizes, or None before the first merge.
    """

    metric: Tensor
    num_prefix: int
    distance: str = "cosine"
    size: Tensor | None = None
