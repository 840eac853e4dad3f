"""The float mask: the bias goes to ``F.scaled_dot_product_attention`` as ``attn_mask``.

What tome_lab did before issue 26. On a CPU SDPA's fused kernel takes the float mask; on CUDA a
float mask rules out the flash kernel (SDPA then runs its memory-efficient or math kernel).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tome_lab.attention.impl._plain import plain_attention
from tome_lab.registry import ATTN_IMPL


@ATTN_IMPL.register("mask", "float_mask")
def mask(q: Tensor, k: Tensor, v: Tensor, log_size: Tensor | None, scale: float,
         dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T * scale + log s) v with log s as a [B, 1, 1, N] additive mask."""
    if log_size is None:
        return plain_attention(q, k, v, dropout_p)
    if log_size.dtype != q.dtype:  # SDPA takes a float mask of the query's dtype only
        log_size = log_size.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=log_size, dropout_p=dropout_p,
                                          scale=scale)
