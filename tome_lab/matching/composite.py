"""Composite reduction: prune p tokens, then merge m of the rest, in the same block.

DiffRate (Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision
Transformers", ICCV 2023) prunes and merges in every block, each at its own learned rate; this
plug-in is the inference side of that. A block removing ``r = p + m`` tokens first drops the p
unprotected tokens of lowest importance (the ``pruning`` plug-in's ``criterion``; by default
the class token's attention averaged over heads, else the attention each token receives,
both from the block's attention statistics, proportional attention's log size included), then
merges m of the N - p tokens left by bipartite soft matching (ToMe, Bolya et al., ICLR 2023,
Alg. 1: the ``bipartite`` plug-in on the kept tokens, their metric, the configured partition).
Both steps return ``(merge, unmerge)``; the composite's ``merge`` applies the pruning's then the
matching's, so size-weighted averaging, source tracing and ``unmerge`` (zeros where pruned)
follow from the contract of :mod:`tome_lab.merge`.

The per-block counts come from ``pairs``, one ``(p, m)`` per block (``apply_tome(model,
matching="composite", pairs=[(0, 4), (6, 2), ...])``); that option implies ``schedule="pairs"``
(:mod:`tome_lab.schedules.pairs`), which gives each block its ``r = p + m`` and checks at patch
time that every pair fits the tokens its block receives. Without ``pairs``, a block asked for r
splits it as evenly as it can: ``p = max(r // 2, 2r - M)`` (M unprotected tokens; the second
term when merging half of r would exceed bipartite's bound on the N - p left), ``m = r - p``.

Deviations from DiffRate: DiffRate merges the pruned-away ranks' least important tokens into
the kept ones by similarity to all kept tokens; here the merge step is ToMe's bipartite
matching on the kept tokens (the one merge every method here is compared with).

The attention statistic is asked for per block (``block_attention_request``): with ``pairs``,
a block that only merges computes none. Without ``pairs``, every reducing block computes it,
and a block whose split prunes nothing (r = 1) leaves it unused, which the FLOP count, as
fvcore's trace, leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor

from tome_lab.flops import ViTSpec, stats_flops
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import _flops as bipartite_flops
from tome_lab.matching.bipartite import bipartite
from tome_lab.matching.pruning import CRITERIA, pruning
from tome_lab.matching.pruning import _request as pruning_request
from tome_lab.merge import MergeFn, do_nothing, merge_wavg
from tome_lab.registry import MATCHING


def split(r: int, m_tokens: int) -> tuple[int, int]:
    """(p, m) for a block asked to remove r of its ``m_tokens`` unprotected tokens without
    ``pairs``: half pruned (the larger half merged), more pruned when merging that many would
    exceed bipartite's bound ``(m_tokens - p) // 2``."""
    p = max(r // 2, 2 * r - m_tokens, 0)
    return p, r - p


def check_pairs(pairs: Any) -> tuple[tuple[int, int], ...]:
    """``pairs`` as a tuple of (p, m) int pairs; raises ``ValueError`` naming what is wrong."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise ValueError(f"composite pairs must be a list of [p, m] pairs, one per block, "
                         f"got {pairs!r}")
    out = []
    for i, pair in enumerate(pairs):
        ok = (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair))
        if not ok:
            raise ValueError(f"composite pairs[{i}] must be [p, m], two ints >= 0 (tokens "
                             f"pruned, then merged), got {pair!r}")
        out.append((int(pair[0]), int(pair[1])))
    return tuple(out)


def _check_options(pairs: Any = None, criterion: str = "attention") -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown composite criterion {criterion!r}; valid: "
                         f"{', '.join(CRITERIA)}")
    if pairs is not None:
        check_pairs(pairs)


def _request(class_token: bool, pairs: Any = None, criterion: str = "attention"
             ) -> frozenset[str]:
    """The pruning criterion's statistic; none when ``pairs`` prunes in no block."""
    if pairs is not None and all(int(p) == 0 for p, _ in pairs):
        return frozenset()
    return pruning_request(class_token, criterion)


def _block_request(class_token: bool, block: int, depth: int, pairs: Any = None,
                   criterion: str = "attention") -> frozenset[str]:
    """Block ``block``'s statistic: the criterion's where its pair prunes (or without
    ``pairs``, where the split may), none where it only merges."""
    if pairs is not None and block < len(pairs) and int(pairs[block][0]) == 0:
        return frozenset()  # (a pairs list of the wrong length is refused by its schedule)
    return _request(class_token, pairs, criterion)


@MATCHING.register("composite")
@uses("metric", "partition", "combine", "keep", reduction="prune", bound="all_but_one",
      attention=frozenset({"cls", "received"}), stochastic=True)
def composite(ctx: MatchContext, r: int, pairs: Sequence[Sequence[int]] | None = None,
              criterion: str = "attention") -> tuple[MergeFn, MergeFn]:
    """Prunes p tokens by ``criterion``, then merges m of the rest by bipartite matching.

    Args:
        ctx: the block's metric [B, N, C'], tokens x [B, N, C], attention statistics, prefix.
        r: tokens removed, p + m (1 <= r <= N - prefix - 1).
        pairs: one (p, m) per block, or None to split r (see :func:`split`).
        criterion: the pruning criterion (``attention``, ``norm``, ``random``).

    Returns:
        ``merge(x, mode)`` ([B, N, C] -> [B, N - r, C]) with ``merge.wavg``, and ``unmerge``.
    """
    _check_options(pairs, criterion)  # apply_config checks it at patch time; a direct call here
    n = ctx.x.shape[1]
    if pairs is None:
        p, m = split(r, n - ctx.num_prefix)
    else:
        p, m = (int(v) for v in pairs[ctx.block])
        if p + m != r:
            raise ValueError(
                f"composite block {ctx.block}: pairs give (p, m) = ({p}, {m}) but the block "
                f"was asked for r={r}; pairs go with schedule 'pairs' (implied when given)")
    if p > 0:
        cut, uncut = pruning(ctx, p, criterion)
    else:
        cut, uncut = do_nothing, do_nothing
    if m > 0:
        kept = replace(ctx, metric=cut(ctx.metric), x=cut(ctx.x),
                       size=None if ctx.size is None else cut(ctx.size), q=None, k=None,
                       v=None, attn=None, position=None)
        pool, unpool = bipartite(kept, m)
    else:
        pool, unpool = do_nothing, do_nothing

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        return pool(cut(x, mode), mode)

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = cut(x)
        size = x.new_ones(x.shape[0], x.shape[1], 1) if size is None else cut(size)
        if m == 0:
            return x, size
        return merge_wavg(pool, x, size)

    def unmerge(x: Tensor) -> Tensor:
        return uncut(unpool(x))

    merge.wavg = wavg
    return merge, unmerge


def _flops(spec: ViTSpec, n: int, r: int, pairs: Any = None, criterion: str = "attention",
           block: int = 0) -> int:
    """Bipartite matching's similarity on the N - p tokens left after pruning.

    The pruning criterion's attention statistic is counted by
    :func:`tome_lab.flops.stats_flops` in the blocks that ask for it: with ``pairs``, only
    those that prune (:func:`_block_request`). Without ``pairs`` every reducing block asks
    for it, and one that prunes nothing (r = 1) leaves it unused, so fvcore's trace drops it
    and so does this count (``- stats_flops``), as ``torch.compile`` would. Norms, random
    draws and top-k are element-wise, which fvcore skips.
    """
    p, m = (int(v) for v in pairs[block]) if pairs is not None else split(r, n - spec.num_prefix)
    own = bipartite_flops(spec, n - p, m) if m > 0 else 0
    return own - (stats_flops(spec, n, block) if p == 0 else 0)


composite.check_options = _check_options  # apply_config calls it at patch time
composite.attention_request = _request
composite.block_attention_request = _block_request
composite.flops = _flops
# ToMeConfig: the option that fixes every block's count, implying the schedule of that name
composite.schedule_option = "pairs"

