"""The block protocol: what a matching plug-in sees of a block and what it declares about itself.

A plug-in is ``fn(ctx: MatchContext, r: int, **options) -> (merge, unmerge)`` and carries its
:class:`Capabilities` as data (set with :func:`uses`). The engine reads the capabilities to
decide what to compute for it (a similarity metric, attention statistics, token positions),
how many tokens a block may remove (:attr:`Capabilities.bound`), and which configuration
knobs it refuses at configuration time; the docs' methods table is generated from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from torch import Tensor

from tome_lab.merge import BOUNDS

# The knobs outside a matcher that it may depend on ("keep": it has a destination token that
# combine="keep" can keep); ToMeConfig refuses a non-default knob
# that the chosen matcher ignores, at configuration time.
KNOBS = ("metric", "partition", "combine", "keep")

# How a plug-in reduces a block: merges tokens into others (the combine rule fuses them),
# drops them (pruning), creates new tokens from all of them (e.g. frequency coefficients), or
# does nothing.
REDUCTIONS = ("merge", "prune", "create", "none")


# Attention statistics a plug-in may request, computed once per block from the block's own
# q and k (after q/k-norm) with its attention mask (proportional attention's log size
# included): "cls" the class token's attention row, "received" the mean attention each token
# receives over heads and queries, "full" every head's probabilities.
STATS = ("cls", "received", "full")


@dataclass(frozen=True)
class Capabilities:
    """What a matching plug-in reads, produces and supports: plain data on the plug-in.

    Attributes:
        uses: the knobs of :data:`KNOBS` it reads; a non-default value of another is refused.
        reduction: one of :data:`REDUCTIONS`.
        bound: the per-block bound on r, a key of :data:`BOUNDS`.
        attention: the attention statistics of :data:`STATS` it requests.
        positions: it reads the tokens' grid positions (``MatchContext.position``).
        sources: ``trace_source`` gives each output token's input patches.
        unmerge: its ``unmerge`` maps merged tokens back to every input position.
        sizes: it reads token sizes (``MatchContext.size``) beyond what the combine rule does.
        stochastic: its output may depend on the random generator, under some option (report
            several seeds).
        fullgraph: ``torch.compile(fullgraph=True)`` traces it without a graph break.
    """

    uses: frozenset[str] = frozenset()
    reduction: str = "merge"
    bound: str = "half"
    attention: frozenset[str] = frozenset()
    positions: bool = False
    sources: bool = True
    unmerge: bool = True
    sizes: bool = False
    stochastic: bool = False
    fullgraph: bool = True

    def __post_init__(self) -> None:
        for name, got, valid in (("uses", self.uses, KNOBS), ("attention", self.attention, STATS)):
            bad = set(got) - set(valid)
            if bad:
                raise ValueError(f"unknown {name} {sorted(bad)}; valid: {', '.join(valid)}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; valid: "
                             f"{', '.join(REDUCTIONS)}")
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; valid: {', '.join(BOUNDS)}")
        object.__setattr__(self, "uses", frozenset(self.uses))
        object.__setattr__(self, "attention", frozenset(self.attention))

    def as_row(self) -> dict[str, object]:
        """The capabilities as one plain row (sets sorted into lists), for tables."""
        return {f.name: sorted(v) if isinstance(v := getattr(self, f.name), frozenset) else v
                for f in fields(self)}


def uses(*knobs: str, **caps: object) -> Callable[[Callable], Callable]:
    """Declares a matching plug-in's capabilities: the knobs of :data:`KNOBS` it reads, and any
    other :class:`Capabilities` field by keyword (defaults: a bipartite-bounded merge)."""
    capabilities = Capabilities(uses=frozenset(knobs), **caps)  # type: ignore[arg-type]

    def deco(fn: Callable) -> Callable:
        fn.uses = capabilities.uses
        fn.capabilities = capabilities
        return fn

    return deco


def capabilities(fn: Callable) -> Capabilities:
    """The capabilities a plug-in declared (the defaults if it declared none)."""
    return getattr(fn, "capabilities", None) or Capabilities(uses=getattr(fn, "uses", frozenset()))


@dataclass(frozen=True)
class AttentionStats:
    """Attention statistics of one block, computed once for all that asked (None: not asked).

    Attributes:
        cls: [B, H, N] the class token's attention probabilities over all tokens.
        received: [B, N] the attention each token receives, averaged over heads and queries.
        full: [B, H, N, N] every head's attention probabilities.
    """

    cls: Tensor | None = None
    received: Tensor | None = None
    full: Tensor | None = None


@dataclass(frozen=True)
class MatchContext:
    """Inputs of one matching call.

    Attributes:
        metric: [B, N, C'] the similarity feature (keys averaged over heads by default), or
            None when the plug-in does not use a metric.
        num_prefix: protected tokens at the head of the sequence (class, distillation,
            registers); they are never merged away.
        distance: the similarity used on ``metric`` (see :func:`tome_lab.merge.similarity`).
        size: [B, N, 1] token sizes, or None before the first merge.
        x: [B, N, C] the tokens about to be merged (after the attention residual).
        q: [B, H, N, d] the block's queries (after q-norm), for attention-based criteria.
        k: [B, H, N, d] the block's keys (after k-norm).
        v: [B, H, N, d] the block's values (e.g. value norms in a significance score).
        class_token: whether token 0 is a class token.
        partition: the partition plug-in name, for bipartite-style matchers.
        block: this block's index (0-based).
        depth: the number of blocks in the model.
        position: [B, N, 2] each token's (row, column) on the patch grid, the size-weighted
            mean of its patches' positions; (-1, -1) for the prefix. None unless the plug-in
            declared ``positions``.
        attn: the attention statistics the plug-in declared, or None.
        grid: (rows, columns) of the patch grid, or None when the model has none.
    """

    metric: Tensor | None
    num_prefix: int
    distance: str = "cosine"
    size: Tensor | None = None
    x: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None
    v: Tensor | None = None
    class_token: bool = False
    partition: str = "alternate"
    block: int = 0
    depth: int = 0
    position: Tensor | None = None
    attn: AttentionStats | None = None
    grid: tuple[int, int] | None = None
