"""PPT: token pruning or pooling, chosen per block and per image by the spread of the
importance scores (Wu, Zeng, Wang, Wang and Chen, "PPT: Token Pruning and Pooling for
Efficient Vision Transformers", arXiv 2310.01812, 2023).

In a block that reduces tokens, PPT scores each unprotected token j by its significance (the
score of ATS, as the official code computes it), the class token's attention summed over
heads times the norm of the token's value vector (all heads concatenated), normalised over
the unprotected tokens:

    s_j = sum_h A_h[cls, j] ||v_j|| / sum_k sum_h A_h[cls, k] ||v_k||

and takes the (unbiased) variance of the s_j over the M unprotected tokens. A large variance
means a few tokens carry the attention ("inattentive redundancy"): the block **prunes**, keeping
the M - r tokens of highest s_j. A small one means the attention is spread over similar
tokens ("duplicative redundancy"): the block **pools** them with ToMe's bipartite soft matching
(keys averaged over heads, cosine, the alternate split, size-weighted averages):

    Var(s) >= threshold  ->  prune r tokens          Var(s) < threshold  ->  merge r tokens

The decision is taken for each image of the batch (the official code splits the batch into a
pooling and a pruning sub-batch). ``threshold`` defaults to 7e-5, the official README's
off-the-shelf DeiT-S setting (6e-5 for its fine-tuning run); the published setting applies PPT
in blocks 3, 6 and 9 (0-based) with r = 50: ``r=[0, 0, 0, 50, 0, 0, 50, 0, 0, 50, 0, 0]``.

Where tome_lab chose or deviated:

- **Read from the official code** (xjwu1024/PPT, ``pp_block_adaptive`` and ``PPTAttention``):
  the significance score, the variance test and its direction, the threshold, and the order
  of the pruned block's survivors; the paper's PDF we could not check. The variance is
  absolute, so the same threshold means a different spread at another token count.
- **Order after pruning**: as in the official code, the survivors are in descending order of
  s_j (tome_lab's ``pruning`` keeps sequence order); later blocks' alternate split reads this
  order. The prefix stays first.
- **The prefix**: every protected token (class, distillation, registers) is kept and left out
  of the scores and their variance. The official code protects the class token only, so on a
  distilled model its pruning could drop the distillation token.
- **No class token**: PPT is defined by the class token's attention. Without one, tome_lab
  uses the mean attention each token receives (over heads and queries) in its place, as
  ``pruning`` and ``evit`` do; such results are PPT-style, not PPT, and the threshold was not
  calibrated for that score.
- **Both branches are computed for every image**, then each image takes its own: the
  similarity matrix of pooling is computed even for an image that prunes (the official code
  computes it for the pooling sub-batch only). The graph stays static (``fullgraph`` compile,
  one analytic count); the count is the official cost plus one similarity per pruning image.
- **Sizes**: a pooling block sums the sizes of merged tokens; a pruning block drops tokens
  with their sizes (the official code does the same), so sizes sum to the input count only
  while no block has pruned (``reduction="prune"``); ``trace_source`` and ``unmerge`` hold
  (a pruned position unmerges to zeros, a merged one to its group's token).
- **The combine knob is refused**: PPT fixes its own (size-weighted average when pooling,
  nothing when pruning); ``metric``'s knobs (feature, distance, head_agg) apply to pooling.
- **Bound** ``half``: ToMe's bipartite matching, and the official code clamps both branches
  to (N - 1) // 2.
- **Gradients**: the scores and the decision come from the engine's statistics (no gradient).

Cost (:func:`_flops`): the class token's attention row (N x C; the attention received without
one, N^2 x C), counted by :func:`tome_lab.flops.stats_flops`, and bipartite's
[ceil(N/2), floor(N/2)] similarity; value norms, the variance and the sort are element-wise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec, metric_width
from tome_lab.matching._context import MatchContext, uses
from tome_lab.matching.bipartite import bipartite
from tome_lab.merge import MergeFn, prune_fns
from tome_lab.registry import MATCHING


def _check_options(threshold: float = 7e-5) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or math.isnan(threshold) or threshold < 0:
        raise ValueError(f"ppt threshold must be a number >= 0 (the variance of the "
                         f"significance scores at and above which a block prunes), got "
                         f"{threshold!r}")


def _request(class_token: bool, threshold: float = 7e-5) -> frozenset[str]:
    """The class token's attention row, else the mean attention each token receives."""
    return frozenset({"cls"}) if class_token else frozenset({"received"})


def significance(ctx: MatchContext) -> Tensor:
    """[B, M] the unprotected tokens' significance scores (each row sums to 1)."""
    p = ctx.num_prefix
    attn = ctx.attn.cls.sum(1) if ctx.class_token else ctx.attn.received  # (B, N)
    vnorm = ctx.v.transpose(1, 2).flatten(2).norm(dim=-1)  # (B, N) heads concatenated
    score = (attn * vnorm)[:, p:]  # (B, M)
    return score / score.sum(1, keepdim=True)


@MATCHING.register("ppt")
@uses("metric", reduction="prune", attention=frozenset({"cls", "received"}))
def ppt(ctx: MatchContext, r: int, threshold: float = 7e-5) -> tuple[MergeFn, MergeFn]:
    """Per image: prune the r least significant unprotected tokens when the significance
    scores' variance reaches ``threshold``, else merge r by bipartite soft matching.

    Args:
        ctx: the block's metric [B, N, C'], values ``v`` [B, H, N, d], prefix count and
            attention statistics (``attn.cls`` [B, H, N], or ``attn.received`` [B, N]).
        r: tokens removed (1 <= r <= (N - prefix) // 2).
        threshold: the variance at and above which an image's block prunes.

    Returns:
        ``merge(x, mode)`` ([B, N, C'] -> [B, N - r, C']) with ``merge.wavg(x, size)``, and
        ``unmerge(x)`` ([B, N - r, C'] -> [B, N, C']).
    """
    _check_options(threshold)  # apply_config checks it at patch time; a direct call here
    b, n, _ = ctx.x.shape
    p = ctx.num_prefix
    with torch.no_grad():
        score = significance(ctx)  # (B, M)
        prune = (score.var(dim=1) >= threshold)[:, None, None]  # (B, 1, 1)
        keep = score.argsort(dim=1, descending=True, stable=True)[:, :n - p - r] + p
        keep = torch.cat([torch.arange(p, device=keep.device).expand(b, -1), keep], dim=1)
    pool_merge, pool_unmerge = bipartite(ctx, r)
    cut, cut_unmerge = prune_fns(keep, n)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        return torch.where(prune, cut(x, mode), pool_merge(x, mode))

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pooled, pooled_size = pool_merge.wavg(x, size)
        if size is None:
            size = x.new_ones(b, n, 1)
        return (torch.where(prune, cut(x), pooled),
                torch.where(prune, cut(size), pooled_size))

    def unmerge(x: Tensor) -> Tensor:
        return torch.where(prune, cut_unmerge(x), pool_unmerge(x))

    merge.wavg = wavg
    return merge, unmerge


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """Bipartite soft matching's [ceil(N/2), floor(N/2)] similarity, computed for every image
    (the attention statistic is counted by :func:`tome_lab.flops.stats_flops`)."""
    return ((n + 1) // 2) * (n // 2) * metric_width(spec)


ppt.attention_request = _request
ppt.check_options = _check_options  # apply_config calls it at patch time
ppt.flops = _flops
