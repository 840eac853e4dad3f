"""Hugging Face transformers' ``SiglipVisionModel``: the family adapter
(:mod:`tome_lab.families._hf`), with a size-aware attention-pooling head.

Layout (transformers 5): ``embeddings`` (conv patch embedding, learned positions; no class
token) -> ``encoder.layers[i]`` = ``layer_norm1`` -> ``self_attn`` (``q_proj`` / ``k_proj`` /
``v_proj`` / ``out_proj``) -> residual -> ``layer_norm2`` -> ``mlp`` (``fc1`` / gelu / ``fc2``)
-> residual; then ``post_layernorm`` on every token (``last_hidden_state``: the merged tokens)
and, with ``vision_use_head``, the attention-pooling ``head``: a learned probe attends over all
tokens through an ``nn.MultiheadAttention``, then a residual MLP; ``pooler_output`` is the
probe's output. No prefix token: every token may merge.

What merging means before the head: the head pools the merged tokens as if each were the
unmerged duplicates it stands for. Its probe attention gets each key's log size added to its
logits (proportional attention: exactly what it computes over s identical copies of a token),
so a merged token of size s weighs as its s patches did, the way ToMe's size-weighted average
pool treats an average-pooled model. The head is size-aware whether or not the blocks use
proportional attention (``prop_attn`` is about the blocks, as ToMe's average pool is weighted
either way). Before any merge (sizes all one) it computes the library's head.
``SiglipForImageClassification`` (an unweighted mean over all tokens) is not accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tome_lab.families._hf import HFFamily, Names, check_mha, sized_attention_pool, token_flops
from tome_lab.registry import FAMILIES


def sized_head(head: nn.Module, x: Tensor, size: Tensor | None) -> Tensor:
    """``SiglipMultiheadAttentionPoolingHead`` on [B, N, C] tokens of sizes [B, N, 1] (None:
    all ones), the probe attending proportionally; returns [B, C]."""
    probe = head.probe.expand(x.shape[0], -1, -1)  # (B, 1, C)
    h = sized_attention_pool(head.attention, probe, x, size)  # (B, 1, C)
    h = h + head.mlp(head.layernorm(h))
    return h[:, 0]


class HFSiglip(HFFamily):
    """``SiglipVisionModel``, with or without its attention-pooling head."""

    name = "hf_siglip"
    describe = "Hugging Face SiglipVisionModel"
    names = Names(norm1="layer_norm1", attn="self_attn", out="out_proj", norm2="layer_norm2",
                  mlp="mlp", scale="scale", dropout="dropout", heads="num_heads")

    def classes(self) -> dict[str, tuple[type, ...]]:
        from transformers.models.siglip import modeling_siglip as m

        return {"model": (m.SiglipVisionModel,), "embed": (m.SiglipVisionEmbeddings,),
                "block": (m.SiglipEncoderLayer,), "attn": (m.SiglipAttention,)}

    def base(self, model: nn.Module) -> nn.Module:
        return model

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.encoder.layers

    def embed(self, base: nn.Module, pixel_values: Tensor) -> Tensor:
        return base.embeddings(pixel_values)

    def prefix(self, base: nn.Module) -> tuple[int, bool]:
        return 0, False

    def patch_conv(self, base: nn.Module) -> nn.Conv2d:
        return base.embeddings.patch_embedding

    def check_more(self, model: nn.Module, base: nn.Module) -> None:
        from transformers.models.siglip import modeling_siglip as m

        if not base.use_head:
            return
        head = base.head
        if type(head) is not m.SiglipMultiheadAttentionPoolingHead or \
                {n for n, _ in head.named_children()} != {"attention", "layernorm", "mlp"}:
            raise TypeError(f"the pooling head is a {type(head).__name__} holding "
                            f"{sorted(n for n, _ in head.named_children())}; ToMe's size-aware "
                            f"pooling knows SiglipMultiheadAttentionPoolingHead")
        if head.probe.shape[:2] != (1, 1):
            raise TypeError(f"the pooling head's probe is {tuple(head.probe.shape)}; ToMe knows "
                            f"one probe token")
        check_mha(head.attention, "the pooling head's attention")

    def head_flops(self, model: nn.Module, base: nn.Module) -> tuple[int, int, int]:
        final = token_flops(base.post_layernorm)
        if not base.use_head:
            return 0, final, 0
        c = base.config.hidden_size
        # per token: its key and value in-projections, and the probe's q k and attn v products;
        # once: the probe's query in-projection, out_proj, the head's norm and MLP
        return 0, final + 2 * c * c + 2 * c, c * c + token_flops(base.head)

    def output(self, model: nn.Module, base: nn.Module, x: Tensor, size: Tensor | None,
               labels: Tensor | None) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if labels is not None:
            raise TypeError("SiglipVisionModel takes no labels")
        seq = base.post_layernorm(x)  # (B, N, C): the merged tokens
        pooled = sized_head(base.head, seq, size) if base.use_head else None
        return BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=pooled)


FAMILIES.register("hf_siglip")(HFSiglip())
