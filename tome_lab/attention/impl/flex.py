"""FlexAttention: the per-key bias added by a ``score_mod`` (``torch.nn.attention.flex_attention``).

The ``score_mod`` reads log s of the key from a captured [B, N] tensor (the sizes differ per
image after a merge). Fused only under ``torch.compile``: called eagerly, PyTorch runs its
unfused reference, which materialises the (B, H, N, N) scores and warns once, so this core is
for compiled models (tests run it eagerly and compiled). It has no attention dropout: a
dropout above 0 raises.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.attention.flex_attention import flex_attention

from tome_lab.attention.impl._plain import plain_attention
from tome_lab.registry import ATTN_IMPL


@ATTN_IMPL.register("flex", "flex_attention")
def flex(q: Tensor, k: Tensor, v: Tensor, log_size: Tensor | None, scale: float,
         dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T * scale + log s[b, key]) v through ``flex_attention``."""
    if log_size is None:
        return plain_attention(q, k, v, dropout_p)
    if dropout_p > 0:
        raise ValueError(f"attn_impl='flex' has no attention dropout (dropout_p={dropout_p}); "
                         f"use attn_impl='mask' or 'bias_channel' to train with it")
    bias = log_size.reshape(log_size.shape[0], log_size.shape[-1])  # (B, N), kept in float32

    def add_log_size(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
                     ) -> Tensor:
        return score + bias[b, kv_idx]

    return flex_attention(q, k, v, score_mod=add_log_size, scale=scale)
