"""What a matching plug-in sees of a block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

# The knobs outside a matcher that it may depend on ("keep": it has a destination token that
# combine="keep" can keep); ToMeConfig refuses a non-default knob
# that the chosen matcher ignores, at configuration time.
KNOBS = ("metric", "partition", "combine", "keep")


def uses(*knobs: str) -> Callable[[Callable], Callable]:
    """Declares which of :data:`KNOBS` a matching plug-in reads (default: none)."""
    bad = set(knobs) - set(KNOBS)
    if bad:
        raise ValueError(f"unknown knobs {sorted(bad)}; valid: {KNOBS}")

    def deco(fn: Callable) -> Callable:
        fn.uses = frozenset(knobs)
        return fn

    return deco


@dataclass(frozen=True)
class MatchContext:
    """Inputs of one matching call.

    Attributes:
        metric: [B, N, C'] the similarity feature (keys averaged over heads by default).
        num_prefix: protected tokens at the head of the sequence (class, distillation,
            registers); they are never merged away.
        distance: the similarity used on ``metric`` (see :func:`tome_lab.merge.similarity`).
        size: [B, N, 1] token sizes, or None before the first merge.
        x: [B, N, C] the tokens about to be merged (after the attention residual).
        q: [B, H, N, d] the block's queries (after q-norm), for attention-based criteria.
        k: [B, H, N, d] the block's keys (after k-norm).
        class_token: whether token 0 is a class token.
        partition: the partition plug-in name, for bipartite-style matchers.
    """

    metric: Tensor
    num_prefix: int
    distance: str = "cosine"
    size: Tensor | None = None
    x: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None
    class_token: bool = False
    partition: str = "alternate"
