"""EViT: keep the attentive tokens, fuse the inattentive ones into one (Liang et al., "Not All
Patches are What You Need: Expediting Vision Transformers via Token Reorganizations", ICLR
2022).

Between a block's attention and its MLP, EViT scores each token by the attention the class
token pays it, averaged over heads, a_i = mean_h softmax(q_cls k^T / sqrt(d))_i; it keeps the
K most attended tokens as they are and fuses all the others (the inattentive set I) into one
new token, appended after the kept ones:

    x_fused = sum_{i in I} a_i x_i / sum_{i in I} a_i        (fusion="mean", the default)
    x_fused = sum_{i in I} a_i x_i                           (fusion="sum")

The protected prefix (class, distillation, register tokens) is kept first and never scored.
In later blocks the fused token is an ordinary token: it may be kept, or fused again.

What r means here: a block asked to remove r tokens keeps K = M - r - 1 attentive tokens of
its M unprotected ones and fuses the other r + 1 into one, so the count falls by exactly r
(1 <= r <= M - 1). r = M - 1 fuses every unprotected token into one. For EViT's own keep rate
k the code keeps ceil(k M) attentive tokens plus the fused one, i.e. r = M - ceil(k M) - 1.

Where tome_lab chose or deviated:

- **The fused token's weights.** The official code (youweiliang/evit, ``evit.py``) forms
  ``sum(a_i x_i)`` without dividing by the weights' sum, so the fused token is shrunk by the
  attention mass of the inattentive tokens, a scale the paper's models learn during training.
  tome_lab is training-free, and a model trained without EViT has never seen such a token: the
  default (``fusion="mean"``) divides by sum_I a_i, the class-attention-weighted average of
  the fused tokens; ``fusion="sum"`` is the official code's sum. (We could not check the PDF's
  equation here; the code is what we read.) If every a_i of the set underflows to 0 the
  divisor is clamped to the dtype's smallest normal number and the fused token is zero.
- **Sizes.** The fused token stands for the sum of the fused tokens' sizes (kept tokens keep
  theirs), so sizes add up to the input count and ``trace_source`` gives it the union of their
  patches. Under proportional attention (``prop_attn=True``, tome_lab's default; the paper has
  none) later blocks see it as that many copies of itself, and the a_i themselves include the
  log size (they come from the block's own attention), so under ``fusion="mean"`` a large
  token already weighs more in the average without a second size factor. ``prop_attn=False``
  treats the fused token as one token, as the paper's code does.
- **The combine knob is refused**: EViT fixes its own fusion. ``merge(x, mode)`` reduces each
  output token's group with ``mode`` (a kept token alone, the inattentive set together), as
  any grouping does, which source tracing (``amax``) and ``unmerge`` (every fused position
  gets the fused token) use; EViT's weighted fusion is ``merge.wavg``, which the engine's
  default combine runs. ``mode="keep"`` raises (the fused token has no destination).
- **Order.** Kept tokens stay in sequence order (the official code orders them by descending
  attention). Attention and the MLP are permutation-equivariant, so this changes only the
  order of the output tokens, which token a later tie goes to, and float summation order.
- **No class token.** EViT is defined by the class token's attention. Without one, tome_lab
  uses the mean attention each token receives (over heads and queries), as ``pruning`` does,
  so that ``evit`` against ``pruning`` isolates the fusion on every layout; that score is not
  the paper's, and results on such models are EViT-style, not EViT.
- **Gradients.** The a_i come from the engine's attention statistics, computed without
  gradient, so in training no gradient flows through the fusion weights (the official code
  lets it flow into q and k); the tokens themselves get their gradients.
- **Bound** ``all_but_one``: EViT is not a pairing, and any r up to M - 1 is meaningful: a
  keep rate at or below 0.5 (the token-reduction studies go down to 0.25) removes more than
  half of a block's tokens, which ``half`` would clamp; at least the fused token remains.

The published schedule is keep rate 0.7 after the 4th, 7th and 10th of DeiT's 12 blocks:
``schedule="stages"`` (keep_rate=0.7 by default). That schedule removes
r = M - ceil(k M) at a stage, so that ceil(k M) unprotected tokens leave the block whatever the
matcher; with EViT's fused token among them that is one attentive token fewer than the
official code keeps (DeiT-S at 224 px: 197 -> 139 -> 98 -> 69 tokens against the code's
197 -> 140 -> 100 -> 72). :func:`published_r` gives the per-block r list that reproduces the
code's counts (``apply_tome(model, r=published_r(197, 1, 12), matching="evit")``).

Cost: the class token's attention row (one query per head, N x C products; the mean received
attention without a class token, N^2 x C), both counted by :func:`tome_lab.flops.stats_flops`;
the top-k, the scatter and the weighted sum are element-wise, which fvcore does not count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, group_merge_fns
from tome_lab.registry import MATCHING

FUSIONS = ("mean", "sum")


def _check_options(fusion: str = "mean") -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"unknown evit fusion {fusion!r}; valid: {', '.join(FUSIONS)}")


def _request(class_token: bool, fusion: str = "mean") -> frozenset[str]:
    """The class token's attention row, else the mean attention each token receives."""
    return frozenset({"cls"}) if class_token else frozenset({"received"})


@MATCHING.register("evit")
@uses(reduction="merge", bound="all_but_one", attention=frozenset({"cls", "received"}))
def evit(ctx: MatchContext, r: int, fusion: str = "mean") -> tuple[MergeFn, MergeFn]:
    """Keeps the M - r - 1 most attended unprotected tokens and fuses the other r + 1 into one.

    Args:
        ctx: the block's tokens ``x`` [B, N, C], prefix count, class-token flag and attention
            statistics (``attn.cls`` [B, H, N] with a class token, ``attn.received`` [B, N]
            without).
        r: tokens removed (1 <= r <= N - prefix - 1).
        fusion: ``"mean"`` (class-attention-weighted average) or ``"sum"`` (the official
            code's unnormalised weighted sum).

    Returns:
        ``merge(x, mode)`` ([B, N, C'] -> [B, N - r, C']: prefix, kept tokens in sequence
        order, then the fused token) with ``merge.wavg(x, size)`` (EViT's fusion and the summed
        sizes), and ``unmerge(x)`` ([B, N - r, C'] -> [B, N, C']).
    """
    _check_options(fusion)  # apply_config checks it at patch time; a direct call here
    b, n, _ = ctx.x.shape
    p = ctx.num_prefix
    k = n - p - r - 1  # attentive tokens kept
    with torch.no_grad():  # the block's statistics, computed once (patch.py)
        score = ctx.attn.cls.mean(1) if ctx.class_token else ctx.attn.received  # (B, N)
        top = score[:, p:].topk(k, dim=1).indices.sort(dim=1).values + p  # (B, K)
        rows = torch.arange(n - r, device=score.device)  # output rows; the last is the fused
        assign = torch.full((b, n), n - r - 1, device=score.device)  # (B, N) all to the fused,
        assign[:, :p] = rows[:p]  # but the prefix, first and alone,
        assign.scatter_(1, top, rows[p:p + k].expand(b, -1))  # and the kept, in sequence order
        fused = assign == n - r - 1  # (B, N) the inattentive set
        weight = torch.where(fused, score, torch.zeros_like(score))
        if fusion == "mean":
            total = weight.sum(1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
            weight = weight / total
        weight = torch.where(fused, weight, torch.ones_like(weight))[..., None]  # (B, N, 1)
    merge, unmerge = group_merge_fns(assign, n - r)

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # the kept rows are groups of one (x * 1); the fused row sums the weighted tokens
        out = merge(x * weight.to(x.dtype), mode="sum")
        if size is None:
            size = x.new_ones(b, n, 1)
        return out, merge(size, mode="sum")

    merge.wavg = wavg
    return merge, unmerge


def published_r(num_tokens: int, num_prefix: int, depth: int, keep_rate: float = 0.7,
                at: Sequence[int] | None = None) -> list[int]:
    """The per-block r that reproduces the official code's token counts: at each stage block
    it keeps ceil(keep_rate * M) attentive tokens of M unprotected ones plus the fused one.

    Args:
        num_tokens: tokens entering the first block (prefix included), e.g. 197 for DeiT-S.
        num_prefix: protected tokens.
        depth: blocks.
        keep_rate: EViT's keep rate.
        at: 0-based stage blocks (None: blocks 3, 6 and 9 of 12, the published ones; only for
            a 12-block model).
    """
    if at is None:
        if depth != 12:
            raise ValueError(f"published_r: the published stages are for 12 blocks; give at= "
                             f"for depth {depth}")
        at = (3, 6, 9)
    n, out = num_tokens, []
    for i in range(depth):
        m = n - num_prefix
        r = max(m - math.ceil(keep_rate * m) - 1, 0) if i in at else 0
        out.append(r)
        n -= r
    return out


evit.attention_request = _request
evit.check_options = _check_options
