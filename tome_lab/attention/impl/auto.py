"""``auto``: the attention core chosen by device and dtype when the forward runs.

The rule (:func:`choose`), measured on the CPU and provisional on CUDA (to be measured on a GPU,
issue 26; docs/engine.md says what was measured):

- CPU, any dtype: ``mask`` (SDPA's CPU kernel takes the float mask; DeiT-S timing in
  docs/engine.md);
- CUDA, float16 / bfloat16: ``bias_channel`` (no mask, so SDPA may run flash);
- anything else (CUDA float32, MPS, ...): ``mask``.

``flex`` is never chosen: eagerly it runs unfused. Device and dtype are static under
``torch.compile``, so the choice costs nothing in a compiled graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tome_lab.attention.impl.bias_channel import bias_channel
from tome_lab.attention.impl.mask import mask
from tome_lab.registry import ATTN_IMPL

_HALF = (torch.float16, torch.bfloat16)


def choose(device_type: str, dtype: torch.dtype) -> str:
    """The core ``auto`` runs for q on ``device_type`` ("cpu", "cuda", ...) in ``dtype``."""
    if device_type == "cuda" and dtype in _HALF:
        return "bias_channel"  # provisional: to be measured on a GPU (issue 26)
    return "mask"


@ATTN_IMPL.register("auto")
def auto(q: Tensor, k: Tensor, v: Tensor, log_size: Tensor | None, scale: float,
         dropout_p: float = 0.0) -> Tensor:
    """The core :func:`choose` picks for q's device and dtype."""
    core = bias_channel if choose(q.device.type, q.dtype) == "bias_channel" else mask
    return core(q, k, v, log_size, scale, dropout_p)
