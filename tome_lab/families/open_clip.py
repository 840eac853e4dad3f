"""open_clip's image tower (``open_clip.transformer.VisionTransformer``): the adapter for CLIP
models built on ``nn.MultiheadAttention`` (Radford et al., 2021; open_clip, Ilharco et al.).

The only module that knows open_clip's internals. It reuses every submodule open_clip built
(``conv1``, the class and position embeddings, ``ln_pre``, each ``ResidualAttentionBlock``'s
``ln_1`` / ``ln_2``, LayerScale ``ls_1`` / ``ls_2``, MLP, the attention's ``out_proj``,
``ln_post``, ``proj``) and rewrites each block's residual path with the engine's merge between
the attention residual and the MLP. The ToMe paper's code replaced ``nn.MultiheadAttention``
by an unfused rewrite to add proportional attention; here q, k and v come from the module's
own packed ``in_proj_weight`` / ``in_proj_bias`` (one ``F.linear``, as
``F.multi_head_attention_forward`` computes them) and go to the engine's attention core
(``plan.core``: ``F.scaled_dot_product_attention``, with proportional attention's log size as
its mask or bias), so the fused kernel stays.

The blocks run batch-first whatever ``transformer.batch_first`` says (open_clip's
``Transformer`` transposes to [N, B, C] around its blocks only when it is False; the patched
forward never calls it), so both settings compute the same.

Pooling: ``pool_type='tok'`` reads the class token (token 0, never merged); ``'avg'`` averages
the patch tokens weighted by their sizes (each merged token counts for the patches it holds),
before or after ``ln_post`` as ``final_ln_after_pool`` says. ``output_tokens=True`` returns
the merged patch tokens with their sizes in ``tome_state(model).size``. Attentional pooling
(CoCa's ``attn_pool``), ``pool_type='none'`` and the ``CustomResidualAttentionBlock`` (qk-norm,
scaled-cosine, head scaling) raise ``TypeError`` at patch time: an attention pooler weighs
every key alike, and a merged key stands for several patches, so merging before it is not
size-aware.

Layout checked against open_clip 3.x.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tome_lab.config import ToMeConfig
from tome_lab.engine import (
    BlockPlan,
    Family,
    ForwardState,
    finish_forward,
    new_forward,
    reduce,
    sized_mean,
    start_positions,
)
from tome_lab.flops import ViTSpec
from tome_lab.flops import token_flops as _token_flops
from tome_lab.registry import FAMILIES

_BLOCK_CHILDREN = {"ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"}
_POOLS = ("tok", "avg")


def _classes() -> tuple[type, type]:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    return VisionTransformer, ResidualAttentionBlock


def _check(model: nn.Module) -> None:
    """Raises ``TypeError`` for any part of ``model`` this adapter does not understand."""
    vit_cls, block_cls = _classes()
    if not isinstance(model, vit_cls):
        raise TypeError(f"ToMe's open_clip adapter patches open_clip VisionTransformer, got "
                        f"{type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None:
        raise TypeError("attentional pooling (attn_pool) weighs every token alike, and a merged "
                        "token stands for several patches; ToMe supports pool_type 'tok' and "
                        "'avg' (size-weighted) on open_clip towers")
    if model.pool_type not in _POOLS:
        raise TypeError(f"pool_type={model.pool_type!r} returns every token as the output; "
                        f"ToMe supports {', '.join(map(repr, _POOLS))}")
    for name in ("forward", "_embeds", "_pool", "_global_pool"):
        if getattr(type(model), name) is not getattr(vit_cls, name):
            raise TypeError(f"{type(model).__name__} overrides VisionTransformer.{name}; ToMe "
                            f"runs open_clip's own steps and would skip that override")
    for i, blk in enumerate(model.transformer.resblocks):
        if type(blk) not in (block_cls, _TOME_CLASSES.get("ToMeResidualAttentionBlock")):
            raise TypeError(f"block {i} is a {type(blk).__name__}; ToMe patches open_clip's "
                            f"ResidualAttentionBlock only")
        extra = {n for n, _ in blk.named_children()} - _BLOCK_CHILDREN
        if extra:  # ln_1_kv: a cross-attention block
            raise TypeError(f"block {i} holds submodules ToMe does not understand: {sorted(extra)}")
        attn = blk.attn
        if type(attn) is not nn.MultiheadAttention:
            raise TypeError(f"block {i} attention is a {type(attn).__name__}; ToMe patches "
                            f"nn.MultiheadAttention only")
        if (not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
                or attn.in_proj_weight is None):
            raise TypeError(f"block {i} MultiheadAttention has separate k/v dims, bias_k/bias_v "
                            f"or add_zero_attn; ToMe supports the packed self-attention layout")


def open_clip_spec(model: nn.Module) -> ViTSpec:
    """The numbers that token counts and FLOPs depend on, as fvcore counts the patched tower:
    per token ln_1, the packed q/k/v projection (3 C^2) and ``out_proj`` before the merge,
    ln_2 and the MLP after it, ``ln_post`` per token leaving (on the pooled vector only with
    ``final_ln_after_pool``); ``conv1``, ``ln_pre`` and ``proj`` fixed."""
    _check(model)
    blk = model.transformer.resblocks[0]
    attn = blk.attn
    rows, cols = (int(g) for g in model.grid_size)
    num_tokens = rows * cols + 1
    heads, width = attn.num_heads, attn.embed_dim
    attn_flops = (_token_flops(blk.ln_1) + attn.in_proj_weight.numel()
                  + _token_flops(attn.out_proj))
    post = _token_flops(model.ln_post)
    proj = model.proj.numel() if model.proj is not None else 0
    fixed = (rows * cols * model.conv1.weight.numel() + _token_flops(model.ln_pre) * num_tokens
             + proj + (post if model.final_ln_after_pool else 0))
    return ViTSpec(
        depth=len(model.transformer.resblocks),
        num_tokens=num_tokens,
        num_prefix=1,
        class_token=True,
        attn_dim=width,
        head_dim=width // heads,
        embed_dim=width,
        attn_token_flops=attn_flops,
        mlp_token_flops=_token_flops(blk.ln_2) + _token_flops(blk.mlp),
        final_token_flops=0 if model.final_ln_after_pool else post,
        fixed_flops=fixed,
        grid=(rows, cols),
    )


def _attention(attn: nn.MultiheadAttention, x: Tensor, mask: Tensor | None,
               core: Callable[..., Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``nn.MultiheadAttention`` self-attention on batch-first ``x`` ([B, N, C]) with the
    per-key bias ``mask`` through the engine's fused ``core``; returns ([B, N, C], per-head
    (q, k, v) [B, H, N, d])."""
    B, N, C = x.shape
    H = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3C), packed q | k | v
    q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    dropout = attn.dropout if attn.training else 0.0
    y = core(q, k, v, mask, (C // H) ** -0.5, dropout)  # (B, H, N, d)
    y = attn.out_proj(y.transpose(1, 2).reshape(B, N, C))
    return y, (q, k, v)


def _block_forward(self: nn.Module, q_x: Tensor, k_x: Tensor | None = None,
                   v_x: Tensor | None = None, attn_mask: Tensor | None = None, *,
                   tome: ForwardState | None = None) -> Tensor:
    """ResidualAttentionBlock's residual path (batch-first) with the merge between the
    attention residual and the MLP."""
    if k_x is not None or v_x is not None or attn_mask is not None:
        raise ValueError("a ToMe-patched block runs self-attention without a mask: merging "
                         "changes the token set a mask or other keys refer to")
    if tome is None:
        raise TypeError("a ToMe-patched block runs inside its model's forward, which passes it "
                        "the sizes of earlier blocks; call the model, not the block")
    plan: BlockPlan = self._tome_plan
    y, (q, k, v) = _attention(self.attn, self.ln_1(q_x), tome.masks[plan.index], plan.core)
    x_in, x = q_x, q_x + self.ls_1(y)
    del y
    x = reduce(plan, tome, x_in, x, q, k, v)
    del q, k, v, x_in
    return x + self.ls_2(self.mlp(self.ln_2(x)))


def _pool(self: nn.Module, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """VisionTransformer._pool without an attention pooler, the average weighted by size."""
    if self.pool_type == "avg":
        if not self.final_ln_after_pool:
            x = self.ln_post(x)
        pooled, tokens = sized_mean(x, size, 1), x[:, 1:]
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled, tokens
    if self.final_ln_after_pool:
        return self.ln_post(x[:, 0]), x[:, 1:]
    x = self.ln_post(x)
    return x[:, 0], x[:, 1:]


def _forward(self: nn.Module, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
    """VisionTransformer.forward with the forward's state passed to every block."""
    tome = new_forward(self)
    x = self._embeds(x)  # (B, N0, C): conv1, class token, positions, patch dropout, ln_pre
    start_positions(self, tome, x)
    recompute = self.transformer.grad_checkpointing and torch.is_grad_enabled()
    for blk in self.transformer.resblocks:
        if recompute:
            x = checkpoint(blk, x, tome=tome, use_reentrant=False)
        else:
            x = blk(x, tome=tome)
    finish_forward(self, tome)
    pooled, tokens = _pool(self, x, tome.sizes[-1])
    if self.proj is not None:
        pooled = pooled @ self.proj
    if self.output_tokens:
        return pooled, tokens
    return pooled


_TOME_CLASSES: dict[str, type] = {}


def _tome_block_class() -> type:
    """``ToMeResidualAttentionBlock``: open_clip's block with :func:`_block_forward`, built on
    first use; pickle finds it through the module's ``__getattr__``."""
    cls = _TOME_CLASSES.get("ToMeResidualAttentionBlock")
    if cls is None:
        cls = type("ToMeResidualAttentionBlock", (_classes()[1],), {
            "forward": _block_forward, "__module__": __name__,
            "__qualname__": "ToMeResidualAttentionBlock",
            "__doc__": "An open_clip ResidualAttentionBlock patched by tome_lab."})
        _TOME_CLASSES["ToMeResidualAttentionBlock"] = cls
    return cls


def __getattr__(name: str) -> type:
    if name == "ToMeResidualAttentionBlock":
        return _tome_block_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class OpenClipViT(Family):
    """open_clip's image tower: class token, ``ln_pre``, LayerScale, token or size-weighted
    average pooling, ``ln_post`` before or after pooling, projection."""

    name = "openclip"
    describe = "open_clip VisionTransformer image towers"

    def accepts(self, model: nn.Module) -> bool:
        try:
            vit_cls, _ = _classes()
        except ImportError:
            return False
        return isinstance(model, vit_cls)

    def spec(self, model: nn.Module) -> ViTSpec:
        return open_clip_spec(model)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.transformer.resblocks)

    def install(self, model: nn.Module, cfg: ToMeConfig) -> None:
        tome_block = _tome_block_class()
        for blk in model.transformer.resblocks:
            blk.__class__ = tome_block
        model.forward = partial(_forward, model)

    def remove(self, model: nn.Module) -> None:
        _, block_cls = _classes()
        for blk in model.transformer.resblocks:
            if type(blk) is _TOME_CLASSES.get("ToMeResidualAttentionBlock"):
                blk.__class__ = block_cls
        model.__dict__.pop("forward", None)


FAMILIES.register("openclip")(OpenClipViT())

__all__ = ["OpenClipViT", "open_clip_spec"]
