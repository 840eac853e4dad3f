"""DCT token reduction: keep the low-frequency cosine coefficients along the token axis.

He et al., "Fourier Transformer: Fast Long Range Modeling by Removing Sequence Redundancy
with FFT Operator", Findings of ACL 2023. The paper down-samples a sequence of hidden states
by an orthonormal DCT-II along the sequence axis, keeps the first N' coefficients and
returns to the token domain with an N'-point inverse DCT (the official code:
``idct(dct(X, norm='ortho')[..., :N'], norm='ortho')``, the class token set aside). Here,
in each block that reduces, the M = N - p unprotected tokens u [M, C] become

    x' = D_{N'}^T (D_M[:N'] u),   N' = M - r,

where D_K is the K x K orthonormal DCT-II matrix, D_K[k, j] = c_k cos(pi (2j + 1) k / 2K),
c_0 = sqrt(1/K), c_k = sqrt(2/K); D_M[:N'] its first N' rows (the low frequencies).

What tome_lab had to choose or declare:

- Where: between the attention residual and the MLP, as every reduction in tome_lab (the
  paper applies it to the input of chosen layers, which it then fine-tunes). The paper is
  trained with the reduction; here it is training-free, as issue 24 asks.
- Scaling: the paper's orthonormal pair, with no rescaling (the default). It multiplies a
  constant sequence by sqrt(M / N'): the DC coefficient of M equal tokens is sqrt(M) times
  their value, and the N'-point inverse divides by sqrt(N') only. ``preserve_mean=True``
  multiplies the output by sqrt(N' / M) instead, so the mean token (and a constant
  sequence) is kept; it is not the paper's.
- The prefix (class, distillation, register tokens) is left out of the transform and kept
  first, unchanged, as the official code does with the class token.
- New tokens are not groups of input tokens: ``trace_source`` is refused (``sources=False``),
  and the ``combine`` knob is refused too (nothing to combine: each new token is a weighted
  sum of all the old ones, with negative weights). ``merge(x, mode)`` applies the same linear
  map whatever the mode, except ``keep``, which has no destination token and raises.
- Sizes: each new token stands for (sum of the unprotected sizes) / N' patches, so the sizes
  still sum to the input's total. Under proportional attention the log size is then the same
  for every unprotected key, which changes nothing among them, but it raises all of them by
  log(S / N') against the prefix (whose sizes stay 1): the class token gets relatively less
  attention as the sequence shortens, as it would if the tokens had been merged evenly.
  Token values themselves are not size-weighted (a DCT has no notion of token size).
- ``unmerge`` is the inverse map, zero-padding the high frequencies:
  D_M[:N']^T (D_{N'} x'), exact for a sequence in the span of the first N' cosines.
- Bound: ``all_but_one`` (any r up to M - 1; it is not a matching).
- Positions are not carried past a block that creates tokens (the block protocol's rule).

Cost (what fvcore counts): two products per block, N' x M x C for the forward transform and
N' x N' x C for the inverse (C the token width); building the cosine matrices is
element-wise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tome_lab.flops import ViTSpec
from tome_lab.matching._context import MatchContext, uses
from tome_lab.merge import MergeFn
from tome_lab.registry import MATCHING


def dct_matrix(n: int, rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The first ``rows`` rows of the n x n orthonormal DCT-II matrix, [rows, n].

    Built in float64 and cast, so a float32 model gets correctly rounded entries.
    """
    k = torch.arange(rows, device=device, dtype=torch.float64)[:, None]
    j = torch.arange(n, device=device, dtype=torch.float64)[None, :]
    mat = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)  # (rows, n)
    mat[0] = mat[0] / math.sqrt(2.0)  # c_0 = sqrt(1 / n)
    return mat.to(dtype)


@MATCHING.register("dct", "fourier")
@uses(reduction="create", bound="all_but_one", sources=False)
def dct(ctx: MatchContext, r: int, preserve_mean: bool = False) -> tuple[MergeFn, MergeFn]:
    """Low-pass DCT down-sampling of the unprotected tokens, M -> M - r.

    Args:
        ctx: the block's tokens ``x`` [B, N, C] and prefix count.
        r: tokens removed (1 <= r <= N - prefix - 1).
        preserve_mean: rescale by sqrt(N' / M) so that the mean token is kept (not the
            paper's; see the module docstring).

    Returns:
        ``merge(x)`` ([B, N, C'] -> [B, N - r, C'] for any channel count C') with
        ``merge.wavg(x, size)`` (the tokens and sizes of the new sequence), and
        ``unmerge(x)`` ([B, N - r, C'] -> [B, N, C']).
    """
    n, p = ctx.x.shape[1], ctx.num_prefix
    m = n - p
    k = m - r
    scale = math.sqrt(k / m) if preserve_mean else 1.0

    def mats(x: Tensor) -> tuple[Tensor, Tensor]:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return dct_matrix(m, k, dtype, x.device), dct_matrix(k, k, dtype, x.device)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        if mode == "keep":
            raise ValueError("dct creates new tokens: there is no destination token to keep")
        fwd, inv = mats(x)  # (K, M), (K, K)
        coef = torch.matmul(fwd, x[:, p:])  # (B, K, C) the low-frequency coefficients
        y = torch.matmul(inv.transpose(0, 1), coef)  # (B, K, C) back to K tokens
        if scale != 1.0:
            y = y * scale
        return torch.cat([x[:, :p], y], dim=1)

    def wavg(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if size is None:
            size = x.new_ones(x.shape[0], n, 1)
        total = size[:, p:].sum(dim=1, keepdim=True)  # (B, 1, 1) patches the new tokens hold
        new = (total / k).expand(-1, k, -1)
        return merge(x), torch.cat([size[:, :p], new], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        fwd, inv = mats(x)
        coef = torch.matmul(inv, x[:, p:])  # (B, K, C) the kept coefficients
        y = torch.matmul(fwd.transpose(0, 1), coef)  # (B, M, C), high frequencies zero
        if scale != 1.0:
            y = y / scale
        return torch.cat([x[:, :p], y], dim=1)

    merge.wavg = wavg
    return merge, unmerge


def _check_options(preserve_mean: bool = False) -> None:
    if not isinstance(preserve_mean, bool):
        raise ValueError(f"dct's preserve_mean must be True or False, got {preserve_mean!r}")


def _flops(spec: ViTSpec, n: int, r: int, **options: Any) -> int:
    """N' x M x C (forward transform) + N' x N' x C (inverse), M = N - prefix, N' = M - r."""
    m = n - spec.num_prefix
    k = m - r
    return (k * m + k * k) * spec.embed_dim


dct.check_options = _check_options
dct.flops = _flops
