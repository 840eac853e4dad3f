"""The only module that knows timm's ``VisionTransformer``: its family adapter for the engine.

:class:`TimmViT` (registered as ``timm`` in ``tome_lab.registry.FAMILIES``) tells the engine
(:mod:`tome_lab.engine`, which plans, merges and counts for every family) where the blocks
are, and reads the model's numbers. It keeps every submodule timm built (norms, qkv, q/k
norms, LayerScale, drop-path, MLP, projection) and rewrites only each block's residual path,
with the engine's merge between the attention residual and the MLP, and its attention core:
plain attention stays on timm's fused ``F.scaled_dot_product_attention`` call, and
proportional attention's log size goes through the configured core
(``ToMeConfig.attn_impl``: float mask, bias channel or FlexAttention,
``tome_lab.attention.impl``). Blocks or attention modules holding anything this module does
not know raise ``TypeError`` at patch time instead of computing something else.

Layout checked against timm 1.0.x ``VisionTransformer`` (class / distillation / register
tokens, average pooling, LayerScale, qk-norm, scale-norm, gated attention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tome_lab.config import ToMeConfig
from tome_lab.engine import (
    BlockPlan,
    Family,
    ForwardState,
    ToMeState,
    apply_config,
    apply_tome,
    attention_request,
    attention_stats,
    config_spec,
    finish_forward,
    is_patched,
    new_forward,
    reduce,
    remove_tome,
    sized_mean,
    start_positions,
    tome_state,
    vit_spec,
)
from tome_lab.flops import ViTSpec
from tome_lab.flops import token_flops as _token_flops
from tome_lab.registry import FAMILIES

_BLOCK_CHILDREN = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTN_CHILDREN = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop"}
_POOLS = ("token", "avg", "avgmax", "max", "")  # size-aware or unaffected by merging


def _timm_classes() -> tuple[type, type, type]:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    return VisionTransformer, Block, Attention


def _check(model: nn.Module) -> None:
    vit_cls, block_cls, attn_cls = _timm_classes()
    if not isinstance(model, vit_cls):
        raise TypeError(f"ToMe patches timm VisionTransformer models, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in _POOLS:
        raise TypeError(
            f"global_pool={model.global_pool!r} pools with attention over all tokens, which "
            f"ToMe does not support; supported pools: {', '.join(repr(p) for p in _POOLS)}")
    # the patched forward runs VisionTransformer's own steps (and, for a size-weighted average
    # pool, its own head), so an override of those would be skipped
    names = ["forward", "forward_features"]
    if model.global_pool in ("avg", "avgmax"):
        names += ["forward_head", "pool"]
    for name in names:
        if getattr(type(model), name) is not getattr(vit_cls, name):
            raise TypeError(
                f"{type(model).__name__} overrides VisionTransformer.{name}; ToMe runs "
                f"VisionTransformer's own and would skip that override")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (block_cls, _TOME_CLASSES.get("ToMeBlock")):
            raise TypeError(f"block {i} is a {type(blk).__name__}; ToMe patches timm's Block only")
        extra = {n for n, _ in blk.named_children()} - _BLOCK_CHILDREN
        if extra:
            raise TypeError(f"block {i} holds submodules ToMe does not understand: {sorted(extra)}")
        if type(blk.attn) is not attn_cls:
            raise TypeError(
                f"block {i} attention is a {type(blk.attn).__name__}; ToMe patches timm's "
                f"Attention only")
        extra = {n for n, _ in blk.attn.named_children()} - _ATTN_CHILDREN
        if extra:
            raise TypeError(
                f"block {i} attention holds submodules ToMe does not understand: {sorted(extra)}")


def patch_embed_flops(model: nn.Module) -> int:
    """FLOPs of the patch embedding: closed form for timm's PatchEmbed, fvcore otherwise."""
    from timm.layers import PatchEmbed

    from tome_lab.flops import count_flops

    pe = model.patch_embed
    if type(pe) is PatchEmbed and isinstance(pe.proj, nn.Conv2d):
        return pe.num_patches * (pe.proj.weight.numel() + _token_flops(pe.norm))
    # a custom stem (e.g. convolutions): count it as fvcore would inside the whole model
    chans = model.pretrained_cfg.get("input_size", (3,))[0]
    return round(count_flops(pe, (chans, *pe.img_size)) * 1e9)


def timm_spec(model: nn.Module) -> ViTSpec:
    """Reads the numbers that token counts and FLOPs depend on from a timm ViT (the engine's
    :func:`~tome_lab.engine.vit_spec` adds a configuration's matcher costs)."""
    _check(model)
    pe = model.patch_embed
    num_patches = pe.num_patches
    heads = [m for m in (getattr(model, "head", None), getattr(model, "head_dist", None))
             if isinstance(m, nn.Linear)]
    blk = model.blocks[0]
    attn = blk.attn
    num_tokens = num_patches + model.num_prefix_tokens
    per_head = sum(_token_flops(n, attn.num_heads) for n in (attn.q_norm, attn.k_norm))
    attn_flops = (_token_flops(blk.norm1) + per_head + _token_flops(attn.qkv)
                  + _token_flops(attn.norm) + _token_flops(getattr(attn, "gate", None))
                  + _token_flops(attn.proj))
    fixed = (patch_embed_flops(model) + _token_flops(model.norm_pre) * num_tokens
             + _token_flops(model.fc_norm) + sum(h.weight.numel() for h in heads))
    return ViTSpec(
        depth=len(model.blocks),
        num_tokens=num_tokens,
        num_prefix=model.num_prefix_tokens,
        class_token=bool(getattr(model, "has_class_token", model.cls_token is not None)),
        attn_dim=attn.num_heads * attn.head_dim,
        head_dim=attn.head_dim,
        embed_dim=model.embed_dim,
        attn_token_flops=attn_flops,
        mlp_token_flops=_token_flops(blk.norm2) + _token_flops(blk.mlp),
        final_token_flops=_token_flops(model.norm),
        fixed_flops=fixed,
        grid=grid_of(pe),
    )


def max_pool_refusal(global_pool: str) -> str | None:
    """Why a timm model pooled by ``global_pool`` cannot run the learned-rate relaxation (a
    max over the tokens still sees faded ones), or None; shared by the timm families."""
    if global_pool in ("max", "avgmax"):
        return (f"global_pool={global_pool!r} takes a max over the tokens, where a faded token "
                f"still counts; the learned-rate relaxation needs a size-aware output "
                f"(global_pool 'token' or 'avg')")
    return None


def grid_of(patch_embed: nn.Module) -> tuple[int, int] | None:
    """(rows, columns) of the patch grid, or None when the stem has no 2-D grid."""
    grid = getattr(patch_embed, "grid_size", None)
    if grid is None or len(grid) != 2:
        return None
    rows, cols = (int(g) for g in grid)
    return (rows, cols) if rows * cols == patch_embed.num_patches else None


def _attention(attn: nn.Module, x: Tensor, mask: Tensor | None, core: Callable[..., Tensor]
               ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """timm Attention with a per-key additive bias ``mask`` ([B, 1, 1, N] or None) computed by
    the attention ``core``; returns ([B, N, C], per-head (q, k, v))."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        x = core(q, k, v, mask, attn.scale, attn.attn_drop.p if attn.training else 0.0)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        if mask is not None:
            logits = logits + mask.to(q.dtype)
        x = attn.attn_drop(logits.softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    x = attn.proj(x)
    if attn.training or not isinstance(attn.proj_drop, nn.Dropout):  # eval dropout: identity
        x = attn.proj_drop(x)
    return x, (q, k, v)


def _block_forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                   is_causal: bool = False, *, tome: ForwardState | None = None) -> Tensor:
    """timm's pre-norm block with a merge between the attention residual and the MLP; the
    forward's own state comes in as ``tome`` (see :func:`_features`)."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched block takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    if tome is None:
        raise TypeError("a ToMe-patched block runs inside its model's forward (or "
                        "forward_features), which passes it the sizes of earlier blocks; "
                        "call the model, not the block")
    plan: BlockPlan = self._tome_plan
    y, (q, k, v) = _attention(self.attn, self.norm1(x), tome.masks[plan.index], plan.core)
    x_in, x = x, x + self.drop_path1(self.ls1(y))
    del y
    x = reduce(plan, tome, x_in, x, q, k, v)
    # the qkv buffer goes before the MLP allocates its hidden layer (as in timm's block)
    del q, k, v, x_in
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _features(self: nn.Module, x: Tensor, tome: ForwardState) -> Tensor:
    """VisionTransformer.forward_features with the forward's state passed to every block
    (checked at patch time to be the class's own steps; the submodules are timm's)."""
    x = self.patch_embed(x)
    x = self._pos_embed(x)
    x = self.patch_drop(x)
    x = self.norm_pre(x)
    start_positions(self, tome, x)
    recompute = self.grad_checkpointing and torch.is_grad_enabled()
    for blk in self.blocks:
        if recompute:
            x = checkpoint(blk, x, tome=tome, use_reentrant=False)
        else:
            x = blk(x, tome=tome)
    x = self.norm(x)
    finish_forward(self, tome)
    return x


def _forward_features(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False) -> Tensor:
    """The patched ``forward_features``: a fresh :class:`ForwardState` for this forward."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched model takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    return _features(self, x, new_forward(self))


def _forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
             is_causal: bool = False) -> Tensor:
    """The patched ``forward``: features and head from one :class:`ForwardState`, so that the
    size-weighted pool uses this forward's sizes whatever other forwards run meanwhile."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched model takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    tome = new_forward(self)
    x = _features(self, x, tome)
    if self.global_pool not in ("avg", "avgmax") or tome.sizes[-1] is None:
        return self.forward_head(x)  # the class's own head; its pool needs no sizes
    x = _sized_pool(self, x, tome.sizes[-1], self.global_pool)  # VisionTransformer.forward_head
    x = self.fc_norm(x)
    x = self.head_drop(x)
    return self.head(x)


def _sized_pool(self: nn.Module, x: Tensor, size: Tensor, pool_type: str) -> Tensor:
    """Average pooling weighted by token size (as ToMe does for MAE); avgmax's max as timm's."""
    skip = 0 if self.pool_include_prefix else self.num_prefix_tokens
    mean = sized_mean(x, size, skip)
    return mean if pool_type == "avg" else 0.5 * (x[:, skip:].amax(1) + mean)


_TOME_CLASSES: dict[str, type] = {}


def _tome_block_class() -> type:
    """``ToMeBlock``: timm's ``Block`` with :func:`_block_forward`, built on first use so that
    importing tome_lab does not import timm; pickle finds it through the module's
    ``__getattr__``."""
    cls = _TOME_CLASSES.get("ToMeBlock")
    if cls is None:
        _, block_cls, _ = _timm_classes()
        cls = type("ToMeBlock", (block_cls,), {
            "forward": _block_forward, "__module__": __name__, "__qualname__": "ToMeBlock",
            "__doc__": "A timm Block patched by tome_lab (see ``_block_forward``)."})
        _TOME_CLASSES["ToMeBlock"] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name == "ToMeBlock":
        return _tome_block_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pool(self: nn.Module, x: Tensor, pool_type: str | None = None) -> Tensor:
    """timm's pool, size-weighted for average pooling, for a caller that runs
    ``forward_features`` and ``forward_head`` apart: it reads the sizes of the last finished
    forward (the patched ``forward`` passes its own instead)."""
    pool_type = self.global_pool if pool_type is None else pool_type
    size = self._tome.size
    if pool_type not in ("avg", "avgmax") or size is None:
        return type(self).pool(self, x, pool_type)
    return _sized_pool(self, x, size, pool_type)


class TimmViT(Family):
    """timm's ``VisionTransformer``: class / distillation / register tokens or none, token or
    (size-weighted) average pooling, LayerScale, qk-norm, scale-norm, gated attention."""

    name = "timm"
    describe = "timm VisionTransformer models"

    def accepts(self, model: nn.Module) -> bool:
        try:
            vit_cls, _, _ = _timm_classes()
        except ImportError:
            return False
        return isinstance(model, vit_cls)

    def spec(self, model: nn.Module) -> ViTSpec:
        return timm_spec(model)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.blocks)

    def install(self, model: nn.Module, cfg: ToMeConfig) -> None:
        tome_block = _tome_block_class()
        for blk in model.blocks:
            blk.__class__ = tome_block
        # partials of module-level functions, unlike bound methods, pickle
        model.forward = partial(_forward, model)
        model.forward_features = partial(_forward_features, model)
        model.pool = partial(_pool, model)

    def relax_refusal(self, model: nn.Module) -> str | None:
        return max_pool_refusal(model.global_pool)

    def remove(self, model: nn.Module) -> None:
        _, block_cls, _ = _timm_classes()
        for blk in model.blocks:
            if type(blk) is _TOME_CLASSES.get("ToMeBlock"):
                blk.__class__ = block_cls
        for name in ("forward", "forward_features", "pool"):
            model.__dict__.pop(name, None)


FAMILIES.register("timm")(TimmViT())

# the engine's public names, importable from here as before the engine had its own module
__all__ = ["ForwardState", "TimmViT", "ToMeState", "apply_config", "apply_tome",
           "attention_request", "attention_stats", "config_spec", "is_patched", "remove_tome",
           "timm_spec", "tome_state", "vit_spec"]
