"""FLOP counting: fvcore's exact count of the traced graph, and an analytic model of it.

Convention of the ToMe paper's tables: one fused multiply-add counts as one FLOP, and only
matrix products and convolutions count (norms, softmax, activations are left out), which is
what fvcore counts by default. fvcore has no handle for ``aten::scaled_dot_product_attention``
and would count timm's fused attention as zero, so one is registered here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tome_lab.merge import clamp_r


@dataclass(frozen=True)
class ViTSpec:
    """The numbers of a ViT that token counts and FLOPs depend on (built by ``patch.vit_spec``).

    Attributes:
        depth: number of blocks.
        num_tokens: tokens entering the first block, prefix included.
        num_prefix: protected prefix tokens (class, distillation, registers).
        class_token: whether token 0 is a class token.
        attn_dim: heads x head_dim.
        head_dim: the width of the similarity metric (keys averaged over heads).
        attn_token_flops: per token, the part of a block before the merge (norm1, qkv,
            q/k norms, output projection).
        mlp_token_flops: per token, the part after the merge (norm2, MLP).
        final_token_flops: per token leaving the last block (the final norm).
        fixed_flops: everything else (patch embedding, pre-norm, classifier head).
    """

    depth: int
    num_tokens: int
    num_prefix: int
    class_token: bool
    attn_dim: int
    head_dim: int
    attn_token_flops: int
    mlp_token_flops: int
    final_token_flops: int
    fixed_flops: int


def tokens_per_layer(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """Tokens leaving each block when block ``i`` merges ``r[i]`` (clamped as the engine does)."""
    n, out = spec.num_tokens, []
    for ri in r:
        n -= clamp_r(ri, n, spec.num_prefix)
        out.append(n)
    return out


def analytic_gflops(spec: ViTSpec, r: Sequence[int], matching_cost: bool = True) -> float:
    """GFLOPs (MACs) of one image under the per-layer schedule ``r``, as fvcore counts them.

    A block entering with N tokens and merging r of them costs N * attn_token_flops, plus
    2 * N^2 * attn_dim for attention (q k^T and attn v), plus Na * Nb * head_dim for the
    bipartite similarity when it merges, plus (N - r) * mlp_token_flops after the merge.
    """
    n, total = spec.num_tokens, float(spec.fixed_flops)
    for ri in r:
        total += n * spec.attn_token_flops + 2 * n * n * spec.attn_dim
        rr = clamp_r(ri, n, spec.num_prefix)
        if rr > 0 and matching_cost:
            total += ((n + 1) // 2) * (n // 2) * spec.head_dim
        n -= rr
        total += n * spec.mlp_token_flops
    return (total + n * spec.final_token_flops) / 1e9


def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle: q k^T and attn v, B*H*Nq*Nk*(d + dv) MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(i) for i in inputs[:3])
    *batch, nq, d = q
    nk, dv = k[-2], v[-1]
    prod = 1
    for b in batch:
        prod *= b
    return prod * nq * nk * (d + dv)


def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> float:
    """GFLOPs of one image through ``model`` as fvcore counts them (with an SDPA handle).

    Args:
        model: any module taking a [1, *input_size] image batch.
        input_size: (C, H, W).

    Returns:
        GFLOPs (one multiply-add = one FLOP).
    """
    with warnings.catch_warnings():  # fvcore's import trips torch.jit deprecation warnings
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(model, x)
            fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            logging.getLogger("fvcore").setLevel(logging.ERROR)
            total = fca.total()
    finally:
        model.train(was_training)
    return total / 1e9
