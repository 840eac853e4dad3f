"""FLOP counting: fvcore's exact count of the traced graph, and an analytic model of it.

Convention of the ToMe paper's tables, which is fvcore's default: one fused multiply-add
counts as one FLOP; matrix products, linear layers and convolutions count, and so do the
normalisations (a LayerNorm costs 5 FLOPs per element with affine weights, 4 without; batch
norm likewise); softmax, activations, element-wise arithmetic, scatters and sorts do not.
fvcore has no handle for ``aten::scaled_dot_product_attention`` and would count timm's fused
attention as zero, so one is registered here.

The analytic count (:func:`analytic_gflops`) reproduces fvcore's for every matching plug-in,
similarity feature, head aggregation, distance, partition and combine rule (the tests hold
them equal for each): the spec carries which matcher runs and on how wide a metric.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
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
        embed_dim: the token width (the metric's width for ``feature="x"``).
        matching: the matching plug-in whose cost :func:`matching_flops` adds.
        metric_dim: the width of the similarity metric (head_dim for a per-head feature
            averaged over heads, attn_dim when heads are concatenated, the token width for
            ``feature="x"``); 0 means head_dim.
        partition: the partition plug-in of a bipartite matcher.
        matching_options: the matcher's options as sorted (name, value) pairs.
        bound: the matcher's per-block bound on r (a key of :data:`tome_lab.merge.BOUNDS`).
        stats: the attention statistics the matcher requests (``cls``, ``received``,
            ``full``), whose products :func:`matching_flops` adds.
        block_stats: per block, the statistics the matcher requests there, when that differs
            from block to block (the composite's pairs: none where a block prunes nothing);
            empty: ``stats`` in every block.
        grid: (rows, columns) of the patch grid, or None.
        own_flops: the matcher's own count, ``fn(spec, n, r, block=i, **options) -> int`` (a
            module-level function the plug-in declares as ``flops``; ``block`` the block's
            index), or None.
        attn_width: per-head width of the q k^T and attn v products in the blocks after the
            first merge, where proportional attention has sizes to add (the bias channel's
            padded width, ``attn_impl="bias_channel"``); 0 means head_dim.
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
    embed_dim: int = 0
    matching: str = "bipartite"
    metric_dim: int = 0
    partition: str = "alternate"
    matching_options: tuple[tuple[str, Any], ...] = ()
    bound: str = "half"
    stats: tuple[str, ...] = ()
    block_stats: tuple[tuple[str, ...], ...] = ()
    grid: tuple[int, int] | None = None
    own_flops: Callable[..., int] | None = None
    attn_width: int = 0


def token_flops(module: nn.Module | None, norm_repeat: int = 1) -> int:
    """Per-token FLOPs of a module's linear layers and LayerNorms, as fvcore counts them (a
    LayerNorm costs 5 per element, 4 without affine; ``norm_repeat`` for per-head norms;
    element-wise products cost nothing). Every family adapter reads its FLOP terms with it."""
    if module is None:
        return 0
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel()
        elif isinstance(m, nn.LayerNorm):
            width = 1
            for d in m.normalized_shape:
                width *= d
            total += (5 if m.elementwise_affine else 4) * width * norm_repeat
    return total


def block_r(spec: ViTSpec, r: int, n: int) -> int:
    """The r a block entering with ``n`` tokens removes when asked for ``r`` (the engine's
    clamp by the matcher's bound)."""
    return clamp_r(r, n, spec.num_prefix, spec.bound)


def stats_flops(spec: ViTSpec, n: int, block: int | None = None) -> int:
    """Products of the attention statistics block ``block`` computes for its matcher (N
    tokens in; ``block`` None: what every block asks, ``spec.stats``): the class token's row
    is one query against N keys per head; the attention received and the full matrix need
    every query's row (computed once for both)."""
    want = spec.block_stats[block] if block is not None and spec.block_stats else spec.stats
    if not want:
        return 0
    queries = n if {"received", "full"} & set(want) else 1
    return queries * n * spec.attn_dim


def tokens_per_layer(spec: ViTSpec, r: Sequence[int]) -> list[int]:
    """Tokens leaving each block when block ``i`` merges ``r[i]`` (clamped as the engine does)."""
    n, out = spec.num_tokens, []
    for ri in r:
        n -= block_r(spec, ri, n)
        out.append(n)
    return out


def metric_width(spec: ViTSpec) -> int:
    """The width of the similarity metric the matcher compares (``metric_dim``, else
    ``head_dim``)."""
    return spec.metric_dim or spec.head_dim


def matching_flops(spec: ViTSpec, n: int, r: int, block: int) -> int:
    """FLOPs fvcore counts for one matching call in block ``block``: N tokens in, r merged
    (r >= 1, clamped).

    The attention statistics the matcher asked for in that block (:func:`stats_flops`) plus
    its own products (the ``flops`` function each plug-in declares, given ``spec``, ``n``,
    ``r``, ``block`` and its options). Only matrix products count (similarities, attention
    scores); norms of the cosine, sorts, scatters and the combine rule's arithmetic are
    element-wise, which fvcore skips.
    """
    opts = dict(spec.matching_options)
    own = spec.own_flops(spec, n, r, block=block, **opts) if spec.own_flops is not None else 0
    return stats_flops(spec, n, block) + own


def analytic_gflops(spec: ViTSpec, r: Sequence[int], matching_cost: bool = True) -> float:
    """GFLOPs (MACs) of one image under the per-layer schedule ``r``, as fvcore counts them.

    A block entering with N tokens and merging r of them costs N * attn_token_flops, plus
    2 * N^2 * attn_dim for attention (q k^T and attn v; heads * attn_width wide once an earlier
    block has merged, when ``attn_width`` is set), plus :func:`matching_flops` when it merges,
    plus (N - r) * mlp_token_flops after the merge.
    """
    n, total = spec.num_tokens, float(spec.fixed_flops)
    heads, merged = spec.attn_dim // spec.head_dim, False
    for i, ri in enumerate(r):
        width = spec.attn_width if merged and spec.attn_width else spec.head_dim
        total += n * spec.attn_token_flops + 2 * n * n * heads * width
        rr = block_r(spec, ri, n)
        if rr > 0 and matching_cost:
            total += matching_flops(spec, n, rr, i)
        merged = merged or rr > 0
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
            try:
                total = fca.total()
            except RuntimeError as err:
                if "Unsupported value kind" not in str(err):
                    raise
                raise RuntimeError(
                    f"fvcore's torch.jit trace cannot follow this model ({err}); FlexAttention "
                    f"(attn_impl='flex') is one such op: count the model patched with "
                    f"attn_impl='mask', whose products are the same") from None
    finally:
        model.train(was_training)
    return total / 1e9
