"""Attention cores: how the logit bias of an attention plug-in is computed (issue 26).

An attention plug-in (``tome_lab.registry.ATTENTION``: ``plain``, ``proportional``) says
*what* the logits get: a per-key additive bias, log s for proportional attention (ToMe, Eq. 1).
An attention core (``tome_lab.registry.ATTN_IMPL``, chosen by ``ToMeConfig.attn_impl``) says
*how* ``softmax(q k^T * scale + bias) v`` is computed: a float mask for
``F.scaled_dot_product_attention`` (``mask``), one more q / k channel so the bias needs no mask
and SDPA may pick its flash kernel (``bias_channel``), FlexAttention with a ``score_mod``
(``flex``), or a rule by device and dtype (``auto``). One file per core.

A registry of its own rather than a wider ATTENTION contract: the two choices are orthogonal
(any core computes any plug-in's bias), a config names each once, and every ATTENTION plug-in
keeps its one-line contract (sizes -> bias), which the attention statistics of the matchers
read too (``engine.attention_stats``).

The contract of a core::

    core(q, k, v, log_size, scale, dropout_p=0.0) -> out

q, k, v are (B, H, N, d) per-head tensors; ``log_size`` is the plug-in's bias, [B, 1, 1, N]
(log s of each key, broadcast over heads and queries), or None; ``scale`` the logit scale
(timm's ``head_dim ** -0.5``); out is (B, H, N, d). With ``log_size`` None every core runs
timm's own call, ``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)``, with no
mask: plain attention, and proportional attention before the first merge, stay on it.
Cores are module-level functions (patched models pickle) that trace in one graph under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from tome_lab.registry import ATTN_IMPL, import_submodules

import_submodules(__name__)

__all__ = ["ATTN_IMPL"]
