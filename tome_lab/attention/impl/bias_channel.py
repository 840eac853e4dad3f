"""The bias channel: the per-key bias as one more q / k channel, so SDPA needs no mask.

q' = [q, c, 0...] and k' = [k, log s / (c * scale), 0...], so that
q'·k' * scale = q·k * scale + log s: the logits of proportional attention with no
``attn_mask``, and ``F.scaled_dot_product_attention`` may pick its flash kernel, which takes no
float mask. c = 1: any non-zero constant gives the same logits in exact arithmetic, and the
power-of-two scale of the usual head widths (64: 1/8) makes the division exact, so the only
rounding is log s's own in the input dtype (as the float mask's).

Width: d + 1 zero-padded up to :data:`MULTIPLE` = 8, e.g. 64 -> 72 (SDPA's CUDA flash and
memory-efficient kernels take head widths that are multiples of 8, up to 256; FlashAttention-2
then runs its next compiled head width, 96 for 72). Flash also needs q, k and v of one width,
and the CPU's fused kernel likewise, so v is zero-padded to the same width and the padded
output channels (zeros) are sliced off. The q·k and attn·v products are therefore
``width`` wide instead of d (``tome_lab.flops`` counts them so; fvcore sees the padded shapes).
A size of 0 (log s = -inf) gives k' = -inf and a logit of -inf, as the mask does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tome_lab.attention.impl._plain import plain_attention
from tome_lab.registry import ATTN_IMPL

MULTIPLE = 8  # head widths SDPA's flash / memory-efficient CUDA kernels take
C = 1.0  # the query's extra channel


def width(head_dim: int) -> int:
    """The padded per-head width of q', k' and v': head_dim + 1 rounded up to a multiple of 8."""
    return -(-(head_dim + 1) // MULTIPLE) * MULTIPLE


@ATTN_IMPL.register("bias_channel", "bias")
def bias_channel(q: Tensor, k: Tensor, v: Tensor, log_size: Tensor | None, scale: float,
                 dropout_p: float = 0.0) -> Tensor:
    """softmax(q'·k'^T * scale) v' with the bias in channel d of q' and k'; (B, H, N, d) out."""
    if log_size is None:
        return plain_attention(q, k, v, dropout_p)
    B, H, N, d = q.shape
    pad = width(d) - d - 1
    # divided in log s's own precision (float32), rounded once to the query's dtype
    bias = (log_size.reshape(B, 1, N, 1) / (C * scale)).to(q.dtype).expand(B, H, N, 1)
    q2 = torch.cat([q, q.new_full((B, H, N, 1), C), q.new_zeros(B, H, N, pad)], dim=-1)
    k2 = torch.cat([k, bias, k.new_zeros(B, H, N, pad)], dim=-1)  # (B, H, N, width)
    v2 = F.pad(v, (0, pad + 1))  # flash wants v as wide as q and k
    out = F.scaled_dot_product_attention(q2, k2, v2, dropout_p=dropout_p, scale=scale)
    return out[..., :d]


# what the analytic FLOP count reads (``patch.config_spec``): q k^T and attn v are this wide
bias_channel.qk_width = width  # type: ignore[attr-defined]
