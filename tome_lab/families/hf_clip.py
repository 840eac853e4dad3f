"""Hugging Face transformers' ``CLIPVisionModel``: the family adapter
(:mod:`tome_lab.families._hf`).

Layout (transformers 5): ``embeddings`` (class embedding, bias-free conv patch embedding,
learned positions) -> ``pre_layrnorm`` -> ``encoder.layers[i]`` = ``layer_norm1`` ->
``self_attn`` (``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``) -> residual ->
``layer_norm2`` -> ``mlp`` (``fc1`` / quick_gelu / ``fc2``) -> residual; ``last_hidden_state``
is the last block's tokens (no final norm) and ``pooler_output`` is ``post_layernorm`` of
token 0. One protected prefix token (the class token); pooling reads it only, so it needs no
sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tome_lab.families._hf import HFFamily, Names
from tome_lab.flops import token_flops
from tome_lab.registry import FAMILIES


class HFCLIP(HFFamily):
    """``CLIPVisionModel``."""

    name = "hf_clip"
    describe = "Hugging Face CLIPVisionModel"
    names = Names(norm1="layer_norm1", attn="self_attn", out="out_proj", norm2="layer_norm2",
                  mlp="mlp", scale="scale", dropout="dropout", heads="num_heads")

    def classes(self) -> dict[str, tuple[type, ...]]:
        from transformers.models.clip import modeling_clip as m

        return {"model": (m.CLIPVisionModel,), "embed": (m.CLIPVisionEmbeddings,),
                "block": (m.CLIPEncoderLayer,), "attn": (m.CLIPAttention,)}

    def base(self, model: nn.Module) -> nn.Module:
        return model

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.encoder.layers

    def embed(self, base: nn.Module, pixel_values: Tensor) -> Tensor:
        return base.pre_layrnorm(base.embeddings(pixel_values))

    def prefix(self, base: nn.Module) -> tuple[int, bool]:
        return 1, True

    def patch_conv(self, base: nn.Module) -> nn.Conv2d:
        return base.embeddings.patch_embedding

    def head_flops(self, model: nn.Module, base: nn.Module) -> tuple[int, int, int]:
        # the pre-norm on every token entering the blocks; the post-norm on the class token
        return token_flops(base.pre_layrnorm), 0, token_flops(base.post_layernorm)

    def output(self, model: nn.Module, base: nn.Module, x: Tensor, size: Tensor | None,
               labels: Tensor | None) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if labels is not None:
            raise TypeError("CLIPVisionModel takes no labels")
        return BaseModelOutputWithPooling(last_hidden_state=x,
                                          pooler_output=base.post_layernorm(x[:, 0, :]))


FAMILIES.register("hf_clip")(HFCLIP())
