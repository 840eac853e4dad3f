"""MCTF, training-free: multi-criteria token fusion with bidirectional bipartite matching.

Lee et al., "Multi-criteria Token Fusion with One-step-ahead Attention for Efficient Vision
Transformers", CVPR 2024 (official code: github.com/mlvlab/MCTF, ``utils/mctf.py``, read for
the formulas and defaults). The tokens are dealt alternately into A and B (the whole
sequence, prefix included, as ToMe); the weight of an edge between A token i and B token j
multiplies three criteria, each with its temperature tau (exponent 1 / tau):

- similarity: W_sim = ((cos(x_i, x_j) + 1) / 2) ^ (1 / tau_sim), cosine of the tokens;
- informativeness: W_info = (a~_i a~_j) ^ (1 / tau_info), a~ = (1 / a) / max(1 / a), where
  a is the attention a token receives, averaged over heads and queries (tokens that receive
  little attention are uninformative and merge first);
- size: W_size = (s~_i s~_j) ^ (1 / tau_size), s~ = (1 / s) / max(1 / s) (small tokens
  merge first);

with the official evaluation defaults tau_sim = 1, tau_info = 20, tau_size = 40 (the
``mctf_type`` of ``run/eval_deit_*_mctf.sh``); a tau of 0 switches its criterion off, as in
the official code. Bidirectional matching: r1 = r // 2 A tokens merge into their best B
tokens (the r1 heaviest edges), then r2 = r - r1 B tokens merge into their best remaining A
tokens, by the same (not recomputed) weights; a B token that received A tokens in the first
step carries them along. The fusion (official ``pooling_type=1``, its default) is an
attention- and size-weighted average: x' = sum w x / sum w over a group, w = a s.

What tome_lab had to choose or deviate:

- One-step-ahead attention (the paper's third idea) is not implemented: it takes the
  informativeness from the attention of the block where the fused tokens are used next,
  and the official code gets it by merging at the start of a block, with that block's
  attention, and reusing the merged attention map. tome_lab merges between a block's
  attention residual and its MLP (the block protocol), so the next attention is the next
  block's, on tokens that this block's MLP has not produced yet: it would take the next
  block's weights and a second MLP pass. ``one_step_ahead=True`` is refused at configuration
  time rather than approximated. The informativeness used is therefore that of the
  official ``one_step_ahead=0`` mode: the attention of the block that merges, computed once
  by the engine (``MatchContext.attn.received``, proportional attention's log size
  included, as in the official code).
- Where: between the attention residual and the MLP (the official ``one_step_ahead=0`` code
  merges after the MLP, with the same attention); the tokens compared are the ones about
  to be merged (``MatchContext.x``), as the official code compares its ``x``. So the
  ``metric`` knobs (feature, distance, head_agg) are refused: the paper fixes cosine on x.
- Prefix: every prefix token is protected (never a source or a destination, kept first in
  order), with the alternate split as in ``bipartite``; the official code protects the
  first ``num_protected`` A rows only, which is the class token (a distillation token,
  dealt into B, would not be protected there). The normalisations by the maximum (of 1 / a
  and 1 / s) run over the whole sequence, prefix included, as in the official code.
- Order: the unmerged A tokens in sequence order when there is a prefix, else in descending
  order of their best weight; then the unmerged B tokens in descending order of their
  step-2 weight (as the official code concatenates them); without bidirection, B in
  sequence order.
- The official wrapper keeps at least 10 tokens (r = t - 10 when t - r < 10); tome_lab
  clamps r by the bipartite bound (half the unprotected tokens) only, as for every matcher.
- Fusion: the paper's attention-weighted average is ``pooling="attention"`` (default),
  applied when the combine knob is ``wavg`` (the default), which it replaces;
  ``pooling="size"`` gives ToMe's size-weighted average. Other combine rules (``mean``,
  ``max``, ``keep``: a destination is an unmerged token of A or B) act on the same groups.
- The cosine guards zero-norm tokens (1e-6) and the similarity is clamped at 0 before its
  fractional power; the official code does neither (neither matters with tau_sim = 1).

Cost (what fvcore counts): the [ceil(N/2), floor(N/2)] cosine similarity over the token
width, plus the engine's attention statistics (every query's attention once per block);
the informativeness and size weights are outer products by broadcasting (element-wise).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import _best_edges
from tome_lab.merge import MergeFn, _join, group_merge_fns
from tome_lab.registry import MATCHING

POOLINGS = ("attention", "size")


def _inverse_weight(v: Tensor) -> Tensor:
    """(1 / v) / max(1 / v) per image, over the whole sequence: [B, N] -> [B, N]."""
    inv = 1.0 / v
    return inv / inv.amax(dim=1, keepdim=True)


def _scores(ctx: MatchContext, tau_sim: float, tau_info: float, tau_size: float) -> Tensor:
    """[B, Na, Nb] the multi-criteria weights of every A -> B edge (alternate split)."""
    x = ctx.x
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    a, b = unit[:, ::2], unit[:, 1::2]
    if tau_sim:
        w = ((a @ b.transpose(-1, -2) + 1) / 2).clamp_min(0) ** (1 / tau_sim)  # (B, Na, Nb)
    else:
        w = x.new_ones(x.shape[0], a.shape[1], b.shape[1])
    if tau_info:
        info = _inverse_weight(ctx.attn.received.to(w.dtype))  # (B, N)
        w = w * (info[:, ::2, None] * info[:, None, 1::2]) ** (1 / tau_info)
    if tau_size and ctx.size is not None:
        small = _inverse_weight(ctx.size[..., 0].to(w.dtype))  # (B, N)
        w = w * (small[:, ::2, None] * small[:, None, 1::2]) ** (1 / tau_size)
    return w


@MATCHING.register("mctf")
@uses("combine", "keep", attention=frozenset({"received"}), sizes=True)
def mctf(ctx: MatchContext, r: int, tau_sim: float = 1, tau_info: float = 20,
         tau_size: float = 40, bidirectional: bool = True, pooling: str = "attention",
         one_step_ahead: bool = False) -> tuple[MergeFn, MergeFn]:
    """Multi-criteria bidirectional bipartite matching of ``ctx.x``; returns (merge, unmerge).

    Args:
        ctx: the block's tokens x [B, N, C], sizes, attention received [B, N], prefix count.
        r: tokens to merge (1 <= r <= (N - prefix) // 2).
        tau_sim: temperature of the similarity criterion (0: off).
        tau_info: temperature of the informativeness criterion (0: off).
        tau_size: temperature of the size criterion (0: off).
        bidirectional: merge r // 2 tokens A -> B, then the rest B -> A.
        pooling: ``attention`` (the paper's fusion, weights a s) or ``size`` (ToMe's), under
            the default combine rule.
        one_step_ahead: not implemented (refused at configuration time; module docstring).
    """
    b, n, _ = ctx.x.shape
    p, dev = ctx.num_prefix, ctx.x.device
    b_prefix = p // 2  # alternate split: prefix positions 1, 3, ... land in B
    a_prefix = p - b_prefix
    r1, r2 = (r // 2, r - r // 2) if bidirectional else (r, 0)
    with torch.no_grad():
        scores = _scores(ctx, tau_sim, tau_info, tau_size)  # (B, Na, Nb)
        nb = scores.shape[2]
        # step 1, A -> B; _best_edges sets the protected rows and columns to -inf in place
        unm1, src1, dst1 = _best_edges(scores, r1, p > 0, a_prefix, b_prefix)
        if r2:  # step 2, B -> the unmerged A tokens, by the same weights
            back = scores.gather(1, unm1[..., None].expand(-1, -1, nb)).transpose(1, 2)
            unm2, src2, dst2 = _best_edges(back, r2, False, b_prefix, a_prefix)
        else:
            unm2 = torch.arange(nb, device=dev).expand(b, nb)
        keep_pos = _join(unm1 * 2, unm2 * 2 + 1, p, b_prefix)  # (B, N - r) output order
        slot = torch.zeros(b, n, dtype=torch.long, device=dev)
        slot = slot.scatter(1, keep_pos, torch.arange(n - r, device=dev).expand(b, -1))
        slot_b = slot[:, 1::2]
        if r2:  # a B source goes where its A destination goes
            slot_b = slot_b.scatter(1, src2, slot.gather(1, unm1.gather(1, dst2) * 2))
        slot_a = slot[:, ::2].scatter(1, src1, slot_b.gather(1, dst1))  # A sources follow
        assign = torch.empty_like(slot)
        assign[:, ::2] = slot_a
        assign[:, 1::2] = slot_b
    merge, unmerge = group_merge_fns(assign, n - r, rep_idx=keep_pos)
    if pooling == "attention":
        received = ctx.attn.received  # (B, N)

        def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
            # the paper's fusion: the group's average weighted by attention received x size
            size = x.new_ones(x.shape[0], x.shape[1], 1) if size is None else size
            w = received[..., None].to(x.dtype) * size  # (B, N, 1)
            return merge(x * w, mode="sum") / merge(w, mode="sum"), merge(size, mode="sum")

        merge.wavg = wavg
    return merge, unmerge


def _check_options(tau_sim: float = 1, tau_info: float = 20, tau_size: float = 40,
                   bidirectional: bool = True, pooling: str = "attention",
                   one_step_ahead: bool = False) -> None:
    for name, tau in (("tau_sim", tau_sim), ("tau_info", tau_info), ("tau_size", tau_size)):
        if not isinstance(tau, numbers.Real) or isinstance(tau, bool) or not tau >= 0:
            raise ValueError(f"mctf's {name} must be a number >= 0 (0 switches the criterion "
                             f"off), got {tau!r}")
    if not isinstance(bidirectional, bool):
        raise ValueError(f"mctf's bidirectional must be True or False, got {bidirectional!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown mctf pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    if one_step_ahead is not False:
        raise ValueError(
            f"mctf's one_step_ahead={one_step_ahead!r} is not implemented: it needs the next "
            f"block's attention on tokens this block's MLP has not produced yet (tome_lab "
            f"merges between a block's attention and its MLP); valid: False")


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """The [ceil(N/2), floor(N/2)] cosine similarity of the tokens (width ``embed_dim``); the
    attention statistics are counted by the engine, the other criteria are element-wise."""
    return ((n + 1) // 2) * (n // 2) * spec.embed_dim


mctf.check_options = _check_options
mctf.flops = _flops
