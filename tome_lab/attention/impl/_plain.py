"""What every core runs when there is no bias: timm's own fused call, with no mask."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def plain_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """timm's fused call with no mask: (B, H, N, d) in, (B, H, N, d) out."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
