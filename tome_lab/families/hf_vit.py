"""Hugging Face transformers' ``ViTModel`` and ``ViTForImageClassification`` (DeiT
checkpoints load into these too): the family adapter (:mod:`tome_lab.families._hf`).

Layout (transformers 5): ``embeddings`` (class token, conv patch embedding, learned positions),
``layers[i]`` = ``layernorm_before`` -> ``attention`` (``q_proj`` / ``k_proj`` / ``v_proj`` /
``o_proj``) -> ``dropout`` -> residual -> ``layernorm_after`` -> ``mlp`` (``fc1`` / ``fc2``)
-> ``dropout`` -> residual; then ``layernorm`` and, on ``ViTModel``, the optional ``pooler``
(dense + tanh on token 0). One protected prefix token (the class token); the pooler and the
classifier read token 0 only, which merging never moves, so they need no sizes. The merge sits
after the attention residual and before ``layernorm_after``, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tome_lab.families._hf import HFFamily, Names
from tome_lab.flops import token_flops
from tome_lab.registry import FAMILIES


class HFViT(HFFamily):
    """``ViTModel`` (pooler or none) and ``ViTForImageClassification``."""

    name = "hf_vit"
    describe = "Hugging Face ViTModel / ViTForImageClassification"
    names = Names(norm1="layernorm_before", attn="attention", out="o_proj",
                  norm2="layernorm_after", mlp="mlp", drop1="dropout", drop2="dropout")

    def classes(self) -> dict[str, tuple[type, ...]]:
        from transformers.models.vit import modeling_vit as m

        return {"model": (m.ViTModel, m.ViTForImageClassification),
                "embed": (m.ViTEmbeddings,), "block": (m.ViTLayer,), "attn": (m.ViTAttention,)}

    def base(self, model: nn.Module) -> nn.Module:
        return model.vit if hasattr(model, "classifier") else model

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.layers

    def embed(self, base: nn.Module, pixel_values: Tensor) -> Tensor:
        return base.embeddings(pixel_values)

    def prefix(self, base: nn.Module) -> tuple[int, bool]:
        return 1, True

    def patch_conv(self, base: nn.Module) -> nn.Conv2d:
        return base.embeddings.patch_embeddings.projection

    def check_more(self, model: nn.Module, base: nn.Module) -> None:
        from transformers.models.vit import modeling_vit as m

        if base.pooler is not None and type(base.pooler) is not m.ViTPooler:
            raise TypeError(f"the pooler is a {type(base.pooler).__name__}; ToMe knows ViTPooler")
        if hasattr(model, "classifier") and not isinstance(model.classifier,
                                                           (nn.Linear, nn.Identity)):
            raise TypeError(f"the classifier is a {type(model.classifier).__name__}; ToMe knows "
                            f"a Linear (or Identity) on the class token")

    def head_flops(self, model: nn.Module, base: nn.Module) -> tuple[int, int, int]:
        fixed = token_flops(base.pooler) + token_flops(getattr(model, "classifier", None))
        return 0, token_flops(base.layernorm), fixed

    def output(self, model: nn.Module, base: nn.Module, x: Tensor, size: Tensor | None,
               labels: Tensor | None) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

        seq = base.layernorm(x)  # (B, N, C): the merged tokens
        if model is base:
            if labels is not None:
                raise TypeError("ViTModel takes no labels")
            pooled = base.pooler(seq) if base.pooler is not None else None  # token 0 only
            return BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=pooled)
        logits = model.classifier(seq[:, 0, :])
        loss = None if labels is None else model.loss_function(labels, logits, model.config)
        return ImageClassifierOutput(loss=loss, logits=logits)


FAMILIES.register("hf_vit")(HFViT())
