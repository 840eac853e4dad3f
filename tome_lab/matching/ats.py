"""ATS: adaptive token sampling, so that each image keeps its own number of tokens (Fayyaz,
Koohpayegani, Jafari, Sengupta, Joze, Sommerlade, Pirsiavash and Gall, "Adaptive Token Sampling
for Efficient Vision Transformers", ECCV 2022).

In a block that reduces tokens, ATS scores each of the M unprotected tokens by its
significance, the class token's attention to it summed over heads times the norm of its value
vector (all heads concatenated), normalised over the unprotected tokens:

    S_j = sum_h A_h[cls, j] ||v_j|| / sum_k sum_h A_h[cls, k] ||v_k||

sorts the scores in ascending order (ties by sequence position), forms their cumulative
distribution CDF_t = S_(1) + ... + S_(t), and samples it by inverse transform at K evenly
spaced points (the deterministic sampling ATS uses at inference):

    u_k = (k - 1/2) / K,    k = 1 .. K,        token picked: the first t with CDF_t >= u_k

A token whose score exceeds 1/K is always picked; several points can land on one token, and
duplicates collapse, so an image keeps between 1 and K of its unprotected tokens, as many as
its scores' spread allows: the number differs from image to image. The prefix (class,
distillation, register tokens) is always kept, never scored.

What r means here: r is the cap. A block asked to remove r tokens samples K = N - p - r points,
so each image keeps at most N - r tokens (prefix included) and removes at least r; the batch
tensor leaves the block with exactly N - r rows. ``bound="all_but_one"``: any
1 <= r <= M - 1 is meaningful (K >= 1).

Batching: **padding with masked tokens** (not grouping). Each image's kept tokens come first,
in sequence order, after the prefix; the rows it does not fill are padding, a zero token of
**size 0**. Proportional attention adds log s to the logits, so a size-0 key gets log 0 = -inf
and exactly zero attention (every attention core, ``mask``, ``bias_channel`` and ``flex``,
gives -inf for it); the size-weighted average pool gives it zero weight, a later ATS block
gives it a zero score (it is never sampled), ``trace_source`` gives it no patch, and
``unmerge`` maps no input position to it. Because ATS drops tokens and never merges them,
every real token keeps size 1, so proportional attention here is exactly the paper's
attention with its "policy" mask (the official code multiplies exp(logits) by a 0/1 policy):
``prop_attn=True`` is ATS. Padding rows are still computed (their queries, MLP rows), so the
batch's cost is the cap's, N - r tokens; the per-image cost, what an implementation that
drops the padding would spend, is reported separately (:func:`tome_lab.evaluate.image_gflops`).

Where tome_lab chose or deviated:

- **Sampling points.** The paper's inverse transform sampling at evenly spaced points, read
  here as the midpoints (k - 1/2)/K with the standard inverse CDF (the first token whose
  cumulative score reaches the point). The official code (``AdaptiveTokenSampler.create_ys``)
  spaces its points from the smallest non-zero normalised CDF value to 1, normalises the CDF
  by (cdf - min) / (max - min) and takes the CDF point *nearest* to each sample, with a fixed
  reference count (196 points for DeiT) and at least 8 tokens; these differ in which border
  token a point picks, not in the principle. Sampling is deterministic: no random draw, one
  result per image (``stochastic=False``; no ``seed``).
- **Order.** Kept tokens stay in sequence order (the official code orders them by ascending
  score). Attention and the MLP are permutation-equivariant, so this changes only the order of
  output rows and float summation order.
- **Prefix.** Every protected token is kept and left out of the scores; the official code
  protects the class token only.
- **No class token** (e.g. the audio model): ATS defines the score by the class token's
  attention, and the paper does not treat models without one. tome_lab then uses the
  attention each token receives, averaged over heads and over the **real** queries (padding
  rows excluded), from the full attention matrix (the engine's ``received`` statistic would
  average over padding queries too). Such results are ATS-style, not ATS, as for ``evit`` and
  ``ppt``.
- **prop_attn=False is refused**: plain attention adds no mask, so the padding keys would be
  attended. ``ToMeConfig`` refuses ``prop_attn=False`` for a plug-in that declares
  ``pads = True`` (a ``ValueError`` at configuration time), so no block needs to check it.
- **The combine knob is refused** (a dropped token has no destination); the metric knobs too.
- **Gradients**: the scores and the sampling come from the engine's statistics (no gradient);
  the paper's differentiable training path is not reproduced (tome_lab is training-free here).

Cost: the class token's attention row (N x C products per block; the full matrix without a
class token, N^2 x C), counted by :func:`tome_lab.flops.stats_flops`; value norms, the sort,
the cumulative sum and the search are element-wise, which fvcore does not count, so the
plug-in declares no products of its own. The analytic count (and fvcore's) is the padded
batch's; ``evaluate`` and ``benchmarks/paired_sweep.py`` add each image's own count (mean,
spread) for a plug-in that declares ``pads = True``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn, _rows, _take
from tome_lab.registry import MATCHING


def _request(class_token: bool) -> frozenset[str]:
    """The class token's attention row, else the full matrix (the attention each token receives
    from the real queries only)."""
    return frozenset({"cls"}) if class_token else frozenset({"full"})


def significance(ctx: MatchContext, real: Tensor) -> Tensor:
    """[B, M] the unprotected tokens' significance scores, each row summing to 1; zero for
    padding.

    Args:
        ctx: the block's context (``attn.cls`` [B, H, N] or ``attn.full`` [B, H, N, N], ``v``).
        real: [B, N] True for real tokens, False for padding (size 0).
    """
    p = ctx.num_prefix
    if ctx.class_token:
        attn = ctx.attn.cls.sum(1)  # (B, N)
    else:  # received from the real queries: sum_h sum_{i real} P[h, i, j]
        attn = (ctx.attn.full * real[:, None, :, None].to(ctx.attn.full.dtype)).sum(dim=(1, 2))
    vnorm = ctx.v.transpose(1, 2).flatten(2).norm(dim=-1)  # (B, N) heads concatenated
    score = torch.where(real, attn * vnorm, torch.zeros_like(attn))[:, p:]  # (B, M)
    total = score.sum(1, keepdim=True).clamp_min(torch.finfo(score.dtype).tiny)
    return score / total


def sample(score: Tensor, k: int) -> Tensor:
    """[B, M] True for the tokens that inverse transform sampling at the K midpoints
    (k - 1/2)/K picks from each row of ``score`` (scores sorted ascending, then the first
    token whose cumulative score reaches each point); duplicates collapse."""
    b, m = score.shape
    ranked, order = score.sort(dim=1, stable=True)  # (B, M) ascending
    cdf = ranked.cumsum(dim=1)
    u = (torch.arange(k, device=score.device, dtype=score.dtype) + 0.5) / k  # (K,)
    at = torch.searchsorted(cdf, u.expand(b, k).contiguous(), side="left").clamp_max(m - 1)
    picked = order.gather(1, at)  # (B, K) token indices, repeats allowed
    hit = torch.ones_like(picked, dtype=torch.bool)  # a tensor source: jit traces (fvcore)
    return torch.zeros(b, m, dtype=torch.bool, device=score.device).scatter(1, picked, hit)


@MATCHING.register("ats")
@uses(reduction="prune", bound="all_but_one", attention=frozenset({"cls", "full"}))
def ats(ctx: MatchContext, r: int) -> tuple[MergeFn, MergeFn]:
    """Keeps, per image, the unprotected tokens that inverse transform sampling of the
    significance scores picks at K = N - p - r points, padding the rest with size-0 tokens.

    Args:
        ctx: the block's tokens ``x`` [B, N, C], sizes ``size`` [B, N, 1] (None before the
            first reduction; 0 marks padding), values ``v`` [B, H, N, d], prefix count and
            attention statistics (``attn.cls`` [B, H, N], or ``attn.full`` [B, H, N, N]).
        r: the cap: at least r tokens leave each image (1 <= r <= N - p - 1).

    Returns:
        ``merge(x, mode)`` ([B, N, C'] -> [B, N - r, C']: prefix, each image's kept tokens in
        sequence order, then zero rows) with ``merge.wavg(x, size)`` (sizes of kept tokens,
        0 for padding), and ``unmerge(x)`` ([B, N - r, C'] -> [B, N, C'], zeros where a token
        was dropped).
    """
    b, n, _ = ctx.x.shape
    p = ctx.num_prefix
    k = n - p - r  # sample points: the most unprotected tokens an image keeps
    with torch.no_grad():
        real = (torch.ones(b, n, dtype=torch.bool, device=ctx.x.device) if ctx.size is None
                else ctx.size[..., 0] > 0)  # (B, N)
        chosen = sample(significance(ctx, real), k)  # (B, M)
        count = chosen.sum(1, keepdim=True)  # (B, 1) tokens each image keeps
        # chosen first in sequence order, then the others, of which only K - count are read
        keep = (~chosen).to(torch.uint8).argsort(dim=1, stable=True)[:, :k] + p  # (B, K)
        keep = torch.cat([torch.arange(p, device=keep.device).expand(b, p), keep], dim=1)
        valid = torch.cat([torch.ones(b, p, dtype=torch.bool, device=keep.device),
                           torch.arange(k, device=keep.device) < count], dim=1)[..., None]
    rows = _rows(keep, n)  # (B * (N - r),)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        out = _take(x, rows)  # (B, N - r, C')
        return torch.where(valid, out, torch.zeros_like(out))

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if size is None:
            size = x.new_ones(b, n, 1)
        return merge(x), merge(size)

    def unmerge(x: Tensor) -> Tensor:
        c = x.shape[-1]
        out = x.new_zeros(b, n, c)
        return out.scatter(1, keep[..., None].expand(-1, -1, c),
                           torch.where(valid, x, torch.zeros_like(x)))

    merge.wavg = wavg
    return merge, unmerge


ats.attention_request = _request
# its batches carry size-0 padding and each image keeps its own token count: the evaluation
# reports per-image GFLOPs (tome_lab.evaluate.image_gflops)
ats.pads = True
