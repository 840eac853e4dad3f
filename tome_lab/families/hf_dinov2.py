"""Hugging Face transformers' DINOv2: ``Dinov2Model``, ``Dinov2WithRegistersModel`` and their
image classifiers; the family adapter (:mod:`tome_lab.families._hf`).

Layout (transformers 5): ``embeddings`` (class token, conv patch embedding, learned positions;
the registers variant inserts its ``register_tokens`` after the class token, after the
positions are added; the mask token is used only with ``bool_masked_pos``, which a patched model
refuses), ``encoder.layer[i]`` = ``norm1`` -> ``attention`` (``q_proj`` / ``k_proj`` /
``v_proj`` / ``o_proj``) -> ``layer_scale1`` -> ``drop_path`` -> residual -> ``norm2`` ->
``mlp`` (MLP or SwiGLU) -> ``layer_scale2`` -> ``drop_path`` -> residual; then ``layernorm``;
``pooler_output`` is token 0. Protected prefix: the class token and the registers (1 + R
tokens, registers at 1..R). The image classifiers read ``[class token, mean of the patch
tokens]``: the mean becomes size-weighted (each merged token counts for the patches it holds),
as ToMe pools its average-pooled models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tome_lab.engine import sized_mean
from tome_lab.families._hf import HFFamily, Names
from tome_lab.flops import token_flops
from tome_lab.registry import FAMILIES


class HFDinov2(HFFamily):
    """``Dinov2Model`` / ``Dinov2WithRegistersModel`` and their ``...ForImageClassification``."""

    name = "hf_dinov2"
    describe = "Hugging Face Dinov2Model / Dinov2WithRegistersModel (and image classifiers)"
    names = Names(norm1="norm1", attn="attention", out="o_proj", norm2="norm2", mlp="mlp",
                  ls1="layer_scale1", ls2="layer_scale2", drop1="drop_path", drop2="drop_path")

    def classes(self) -> dict[str, tuple[type, ...]]:
        from transformers.models.dinov2 import modeling_dinov2 as a
        from transformers.models.dinov2_with_registers import modeling_dinov2_with_registers as b

        return {"model": (a.Dinov2Model, a.Dinov2ForImageClassification,
                          b.Dinov2WithRegistersModel, b.Dinov2WithRegistersForImageClassification),
                "embed": (a.Dinov2Embeddings, b.Dinov2WithRegistersEmbeddings),
                "block": (a.Dinov2Layer, b.Dinov2WithRegistersLayer),
                "attn": (a.Dinov2Attention, b.Dinov2WithRegistersAttention)}

    def base(self, model: nn.Module) -> nn.Module:
        if not hasattr(model, "classifier"):
            return model
        return model.dinov2 if hasattr(model, "dinov2") else model.dinov2_with_registers

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.encoder.layer

    def embed(self, base: nn.Module, pixel_values: Tensor) -> Tensor:
        return base.embeddings(pixel_values)

    def prefix(self, base: nn.Module) -> tuple[int, bool]:
        return 1 + int(getattr(base.config, "num_register_tokens", 0)), True

    def patch_conv(self, base: nn.Module) -> nn.Conv2d:
        return base.embeddings.patch_embeddings.projection

    def check_more(self, model: nn.Module, base: nn.Module) -> None:
        regs = getattr(base.embeddings, "register_tokens", None)
        want = int(getattr(base.config, "num_register_tokens", 0))
        if (0 if regs is None else regs.shape[1]) != want:
            raise TypeError(f"the embeddings hold {0 if regs is None else regs.shape[1]} "
                            f"register tokens and the config says {want}")
        if hasattr(model, "classifier") and not isinstance(model.classifier,
                                                           (nn.Linear, nn.Identity)):
            raise TypeError(f"the classifier is a {type(model.classifier).__name__}; ToMe knows "
                            f"a Linear (or Identity) on [class token, patch mean]")

    def head_flops(self, model: nn.Module, base: nn.Module) -> tuple[int, int, int]:
        return 0, token_flops(base.layernorm), token_flops(getattr(model, "classifier", None))

    def output(self, model: nn.Module, base: nn.Module, x: Tensor, size: Tensor | None,
               labels: Tensor | None) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

        seq = base.layernorm(x)  # (B, N, C): the merged tokens
        if model is base:
            if labels is not None:
                raise TypeError(f"{type(model).__name__} takes no labels")
            return BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=seq[:, 0])
        skip = self.prefix(base)[0]  # the patch tokens' mean, each counted for its patches
        feats = torch.cat([seq[:, 0], sized_mean(seq, size, skip)], dim=1)  # (B, 2C)
        logits = model.classifier(feats)
        loss = None if labels is None else model.loss_function(labels, logits, model.config)
        return ImageClassifierOutput(loss=loss, logits=logits)


FAMILIES.register("hf_dinov2")(HFDinov2())
