"""Zero-TPrune: importance from a weighted PageRank over the attention graph, then pruning by
similarity among the tokens (Wang, Dedhia and Jha, "Zero-TPrune: Zero-Shot Token Pruning
through Leveraging of the Attention Graph in Pre-Trained Transformers", CVPR 2024).

The block's attention probabilities A_h [N, N] (row i: query i's distribution over the keys)
are the adjacency matrix of a directed graph; the Weighted PageRank (WPR) iterates the graph
shift operator on an importance signal, per head,

    s_h^(0) = w / sum(w),   w_i = sqrt(N) for the class token, 1 for every other token
    s_h^(t) = A_h^T s_h^(t-1)                                  (t = 1 .. iters)

so that a token is important when important tokens attend to it (A_h is row-stochastic, so
sum_i s_h(i) stays 1). The heads are aggregated by the paper's Emphasizing Informative Region
(EIR) root mean square over the heads that pass the Variance-based Head Filter (VHF),

    s(i) = sqrt( sum_h eta_h s_h(i)^2 / sum_h eta_h ),   eta_h = [var_min <= Var_h <= var_max]

One pruning layer runs the paper's three stages in its order, I' -> S -> I:

1. **I'-stage**: the importance after one WPR iteration (no pruning), to partition with.
2. **S-stage** (similarity): the M unprotected tokens sorted by that importance, the less
   important half (floor(M / 2) tokens) is set A and the rest B (the paper's "Sequential-U"
   partition, its best); each A token finds its most similar B token (cosine of the keys
   averaged over heads, the paper's choice and tome_lab's default ``metric``), and the r_S A
   tokens with the highest such similarity are pruned (dropped, not merged: the paper prunes).
3. **I-stage** (importance): WPR with ``iters`` iterations over the graph of the N - r_S
   remaining tokens, and the r_I least important unprotected ones are pruned.

The block removes exactly r = r_S + r_I unprotected tokens; the prefix (class, distillation,
register tokens) is never pruned, though it is part of the graph (it attends and is attended).

Where tome_lab chose or deviated (the paper's text is what we could read in summaries of it
and in the description of its equations, not the PDF itself):

- **Splitting r between the stages.** The paper configures each pruning layer with its own
  S- and I-stage counts; tome_lab's block gets one r. ``s_share`` (default 0.5) is the share
  of r the S-stage removes, r_S = min(floor(s_share r), floor(M / 2)) (A's size bounds it),
  and the I-stage removes the rest. ``s_share=0`` is the I-stage alone (WPR pruning; no I' or
  S stage is computed).
- **The I-stage's graph** after the S-stage is A restricted to the remaining tokens with each
  row renormalised to sum 1: the attention the block would have computed had the pruned
  keys been masked out. We could not check how the paper restricts it.
- **iters** (default 5) is one count for every block, or ``iters="paper"``: the paper's
  per-layer counts (30-50 iterations in the first three layers, 5-10 in the middle ones and 1
  in the last three, where it found convergence), at the low end of each range: 30 in blocks
  0-2, 1 in the last three, 5 between (a block that is both among the first and the last
  three, in a model of fewer than six blocks, counts as a first one). The analytic count
  reads each block's own count (the block index reaches ``flops``).
- **VHF's variance** is that of N s_h (each head's distribution scaled to mean 1, population
  variance over all N tokens of the graph), so that the paper's thresholds [0.01, 0.7] are
  scale-free; the paper's normalisation is not stated in what we read. An image whose heads
  all fail the filter aggregates all of them (the paper's formula would divide by zero).
  ``var_min=0, var_max=inf`` turns the filter off.
- **Initialisation.** With a class token it starts with sqrt(N) times the others' score (the
  paper's "Zero-TPrune"; distillation and register tokens start as patches do); without one,
  uniformly (the paper's "Zero-TPrune-uni"), which is therefore defined on every layout.
- **Ties and order.** Surviving tokens stay in sequence order; A and B are cut from a stable
  sort by importance.
- **Sizes.** A pruned token's patches are dropped with it; survivors keep their sizes, so
  sizes no longer sum to the input count (``reduction="prune"``); ``unmerge`` gives a pruned
  position zeros.
- **Gradients.** Scores come from the engine's attention statistics (no gradient).
- **Bound** ``all_but_one``: any r up to M - 1 (the I-stage leaves at least one token).

Cost (:func:`_flops`): the full attention probabilities (N^2 x C, counted by
:func:`tome_lab.flops.stats_flops`); the I'-stage's one [N, N] x [N] product per head; the S
stage's [floor(M/2), M - floor(M/2)] similarity of the metric; ``iters`` [N', N'] x [N']
products per head in the I-stage (N' = N - r_S). Sorts, the renormalisation and EIR are
element-wise, which fvcore does not count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, prune_fns, similarity
from tome_lab.registry import MATCHING

# the paper's per-layer WPR iterations, the low end of each range: first three, middle, last three
PAPER_ITERS = (30, 5, 1)


def block_iters(iters: int | str, block: int, depth: int) -> int:
    """The I-stage's WPR iterations in block ``block`` of ``depth``: ``iters`` itself, or for
    ``"paper"`` 30 in the first three blocks, 1 in the last three, 5 between."""
    if iters != "paper":
        return int(iters)
    first, middle, last = PAPER_ITERS
    return first if block < 3 else last if block >= depth - 3 else middle


def _check_options(iters: int | str = 5, s_share: float = 0.5, var_min: float = 0.01,
                   var_max: float = 0.7) -> None:
    if iters != "paper" and (isinstance(iters, bool) or not isinstance(iters, int)
                             or iters < 1):
        raise ValueError(f"zero_tprune iters must be an int >= 1 (WPR iterations) or 'paper' "
                         f"(the paper's per-layer counts), got {iters!r}")
    if isinstance(s_share, bool) or not isinstance(s_share, (int, float)) \
            or not 0 <= s_share <= 1:
        raise ValueError(f"zero_tprune s_share must be a number in [0, 1] (the share of r the "
                         f"S-stage removes), got {s_share!r}")
    for name, v in (("var_min", var_min), ("var_max", var_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise ValueError(f"zero_tprune {name} must be a number >= 0, got {v!r}")
    if var_min > var_max:
        raise ValueError(f"zero_tprune var_min ({var_min}) must not exceed var_max ({var_max})")


def split_r(r: int, m: int, s_share: float = 0.5) -> tuple[int, int]:
    """(r_S, r_I): the tokens the S- and the I-stage remove of ``m`` unprotected ones."""
    r_s = min(int(r * s_share), m // 2)
    return r_s, r - r_s


def wpr(probs: Tensor, iters: int, class_token: bool, var_min: float = 0.01,
        var_max: float = 0.7) -> Tensor:
    """Weighted PageRank importance, EIR over the heads that pass VHF.

    Args:
        probs: [B, H, N, N] row-stochastic attention (row i: query i).
        iters: graph-shift iterations.
        class_token: token 0 starts with sqrt(N) times the others' score.
        var_min, var_max: VHF's bounds on the variance of N s_h.

    Returns:
        [B, N] importance.
    """
    b, h, n, _ = probs.shape
    w = probs.new_ones(b, h, n, 1)
    if class_token:
        w[:, :, 0] = math.sqrt(n)
    s = w / w.sum(2, keepdim=True)  # (B, H, N, 1)
    a_t = probs.transpose(-1, -2)  # s_i <- sum_j A(j, i) s_j
    for _ in range(iters):
        s = a_t @ s  # (B, H, N, 1)
    s = s[..., 0]  # (B, H, N)
    var = (s * n).var(dim=-1, unbiased=False)  # (B, H)
    keep = ((var >= var_min) & (var <= var_max)).to(s.dtype)
    keep = torch.where(keep.sum(1, keepdim=True) > 0, keep, torch.ones_like(keep))
    return ((s.square() * keep[..., None]).sum(1) / keep.sum(1)[:, None]).sqrt()  # (B, N)


@MATCHING.register("zero_tprune", "zero-tprune", "zerotprune")
@uses("metric", reduction="prune", bound="all_but_one", attention=frozenset({"full"}))
def zero_tprune(ctx: MatchContext, r: int, iters: int | str = 5, s_share: float = 0.5,
                var_min: float = 0.01, var_max: float = 0.7) -> tuple[MergeFn, MergeFn]:
    """Prunes r unprotected tokens: r_S by similarity among the less important half, then r_I
    by WPR importance over the remaining graph.

    Args:
        ctx: the block's metric [B, N, C'], prefix count, class-token flag and full attention
            probabilities (``attn.full`` [B, H, N, N]).
        r: tokens removed (1 <= r <= N - prefix - 1).
        iters: WPR iterations of the I-stage (the I'-stage runs one), or ``"paper"`` for
            the paper's per-layer counts (:func:`block_iters`).
        s_share: the share of r the S-stage removes (at most half the unprotected tokens).
        var_min, var_max: the Variance-based Head Filter's bounds (on N s_h).

    Returns:
        ``merge(x, mode)`` ([B, N, C'] -> [B, N - r, C'], survivors in sequence order) and
        ``unmerge(x)`` ([B, N - r, C'] -> [B, N, C'], zeros where a token was pruned).
    """
    _check_options(iters, s_share, var_min, var_max)  # apply_config checks it at patch time
    probs = ctx.attn.full  # (B, H, N, N)
    b, _, n, _ = probs.shape
    p, m = ctx.num_prefix, n - ctx.num_prefix
    r_s, r_i = split_r(r, m, s_share)
    with torch.no_grad():
        alive = torch.arange(n, device=probs.device).expand(b, n)  # (B, N') survivors
        if r_s > 0:
            rank = wpr(probs, 1, ctx.class_token, var_min, var_max)[:, p:]  # (B, M) I'-stage
            order = rank.argsort(dim=1, stable=True) + p  # least important first
            na = m // 2
            a_idx, b_idx = order[:, :na], order[:, na:]  # Sequential-U: A the less important
            c = ctx.metric.shape[-1]
            fa = ctx.metric.gather(1, a_idx[..., None].expand(-1, -1, c))
            fb = ctx.metric.gather(1, b_idx[..., None].expand(-1, -1, c))
            best = similarity(fa, fb, ctx.distance).amax(-1)  # (B, Na)
            gone = a_idx.gather(1, best.topk(r_s, dim=1).indices)  # (B, r_S)
            dead = torch.zeros(b, n, dtype=torch.uint8, device=probs.device)
            dead.scatter_(1, gone, torch.ones_like(gone, dtype=torch.uint8))
            # the survivors in sequence order (a stable sort puts them first, a static shape)
            alive = dead.argsort(dim=1, stable=True)[:, :n - r_s]  # (B, N')
        if r_i > 0:
            sub = probs.gather(2, alive[:, None, :, None].expand(-1, probs.shape[1], -1, n))
            sub = sub.gather(3, alive[:, None, None, :].expand(-1, probs.shape[1],
                                                               n - r_s, -1))
            sub = sub / sub.sum(-1, keepdim=True)  # (B, H, N', N') rows renormalised
            its = block_iters(iters, ctx.block, ctx.depth)
            score = wpr(sub, its, ctx.class_token, var_min, var_max)[:, p:]  # (B, N' - p)
            top = score.topk(n - r_s - p - r_i, dim=1).indices.sort(dim=1).values + p
            alive = torch.cat([alive[:, :p], alive.gather(1, top)], dim=1)  # (B, N - r)
    return prune_fns(alive, n)


def _flops(spec: ViTSpec, n: int, r: int, iters: int | str = 5, s_share: float = 0.5,
           block: int = 0, **options: Any) -> int:
    """The I'-stage's one [N, N] x [N] product per head and the S-stage's [floor(M/2),
    M - floor(M/2)] similarity (when r_S > 0), and the block's iterations
    (:func:`block_iters`) of [N', N'] x [N'] products per head in the I-stage (N' = N - r_S;
    when r_I > 0); the full attention probabilities are counted by
    :func:`tome_lab.flops.stats_flops`."""
    heads = spec.attn_dim // spec.head_dim
    m = n - spec.num_prefix
    r_s, r_i = split_r(r, m, s_share)
    total = 0
    if r_s > 0:
        total += heads * n * n + (m // 2) * (m - m // 2) * metric_width(spec)
    if r_i > 0:
        total += block_iters(iters, block, spec.depth) * heads * (n - r_s) ** 2
    return total


zero_tprune.check_options = _check_options  # apply_config calls it at patch time
zero_tprune.flops = _flops
