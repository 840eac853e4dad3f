"""timm's EVA family (``timm.models.eva.Eva``): the adapter for ViTs with rotary position
embeddings (EVA-02, the RoPE ViTs of Heo et al., ECCV 2024, timm's ``vit_*_rope_*``).

This is a second timm family, kept in its own file: :mod:`tome_lab.patch` stays the only module
that knows timm's ``VisionTransformer``, and this one is the only module that knows timm's
``Eva``, ``EvaBlock``, ``EvaAttention`` / ``AttentionRope`` and ``RotaryEmbeddingCat``. It reuses
every submodule timm built (norms, q/k/v projections and biases, q/k norms, scale-norm, gate,
LayerScale ``gamma_1`` / ``gamma_2``, drop-path, MLP / SwiGLU, the rope module's frequency
bands and table) and writes only each block's residual path, with the engine's merge between
the attention residual and the MLP, and its attention core (``plan.core``).

Rotary positions after a merge. A merged token no longer sits on one grid point, so the family
declares ``positions = True``: the engine carries each token's (row, column) through every
merge by ``ToMeConfig.position_rule``:

- ``mean`` (the default): the size-weighted mean of the positions of the patches the token
  holds (its centroid), generally fractional;
- ``keep``: the position of the destination token it was merged into (always a grid point).

Each block rotates q and k at the tokens' current positions. At a grid point the rotation is
timm's own table (``rope.get_embed()``, gathered by row * cols + col), so r = 0, and every
token that never moved, computes exactly what timm computes. At a fractional position it is
the same function of the coordinate that timm's ``build_rotary_pos_embed`` tabulates at grid
points: the coordinate mapped as ``_build_grid`` maps it (grid type, offset, ``ref_feat_shape``
rescaling, 'xy' channel order), times the rope's frequency bands, then sin / cos in timm's
layout (interleaved or ``rotate_half``), in the model's precision (at least float32). Prefix
tokens (class, registers) are never rotated, as in timm. ``benchmarks/rope_rule.py`` compares
the two rules (docs/engine.md).

Layout checked against timm 1.0.x: ``Eva`` with pre-norm ``EvaBlock`` s, ``EvaAttention`` or
``AttentionRope`` (fused or separate q/k/v, q/k norm, scale-norm, gate; no grouped-query
heads), RoPE of type ``cat`` (``RotaryEmbeddingCat``, fixed grid, no coordinate augmentation)
or none, class / register tokens, token / avg / avgmax / max pooling. Anything else (post-norm
blocks, mixed / DINOv3 / M-RoPE, dynamic image size, patch dropout, attention pooling) raises
``TypeError`` at patch time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

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

_BLOCK_CHILDREN = {"norm1", "attn", "drop_path1", "norm2", "mlp", "drop_path2"}
_ATTN_CHILDREN = {"qkv", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "attn_drop", "norm",
                  "gate", "proj", "proj_drop"}
_POOLS = ("token", "avg", "avgmax", "max", "")  # size-aware or unaffected by merging
_GRID_TYPES = ("index", "pixel", "centered")


def _classes() -> dict[str, type]:
    from timm.layers import AttentionRope, RotaryEmbeddingCat
    from timm.models.eva import Eva, EvaAttention, EvaBlock

    return dict(model=Eva, block=EvaBlock, attn=(EvaAttention, AttentionRope),
                rope=RotaryEmbeddingCat)


def _check(model: nn.Module) -> None:
    """Raises ``TypeError`` for any part of ``model`` this adapter does not understand."""
    cls = _classes()
    if not isinstance(model, cls["model"]):
        raise TypeError(f"ToMe's EVA adapter patches timm Eva models, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in _POOLS:
        raise TypeError(
            f"global_pool={model.global_pool!r} pools with attention over all tokens, which "
            f"ToMe does not support on EVA; supported pools: {', '.join(map(repr, _POOLS))}")
    if model.dynamic_img_size:
        raise TypeError("dynamic_img_size=True: the patch grid, and so each token's rotary "
                        "position, changes per input; ToMe supports a fixed grid")
    if model.patch_drop is not None:
        raise TypeError("patch_drop_rate > 0 drops patches before the blocks; ToMe's grid "
                        "positions assume every patch enters")
    if getattr(model, "rope_mixed", False):
        raise TypeError("rope_type='mixed' learns per-block frequencies; ToMe's EVA adapter "
                        "supports rope_type='cat' (RotaryEmbeddingCat) only")
    rope = model.rope
    if rope is not None:
        if type(rope) is not cls["rope"]:
            raise TypeError(f"rope is a {type(rope).__name__}; ToMe's EVA adapter supports "
                            f"RotaryEmbeddingCat (rope_type='cat') only")
        if rope.aug_active:
            raise TypeError("the rope module augments coordinates in training (shift / jitter "
                            "/ rescale); ToMe's EVA adapter does not reproduce that")
        if rope.grid_type not in _GRID_TYPES or rope.pos_embed is None:
            raise TypeError(f"rope grid_type={rope.grid_type!r} without a fixed table is not "
                            f"supported")
        if list(rope.feat_shape) != list(model.patch_embed.grid_size):
            raise TypeError(f"rope feat_shape {rope.feat_shape} is not the patch grid "
                            f"{model.patch_embed.grid_size}")
    # the patched forward runs Eva's own steps, so an override of those would be skipped
    names = ["forward", "forward_features", "_pos_embed", "forward_head", "pool"]
    for name in names:
        if getattr(type(model), name) is not getattr(cls["model"], name):
            raise TypeError(f"{type(model).__name__} overrides Eva.{name}; ToMe runs Eva's own "
                            f"and would skip that override")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (cls["block"], _TOME_CLASSES.get("ToMeEvaBlock")):
            raise TypeError(f"block {i} is a {type(blk).__name__}; ToMe's EVA adapter patches "
                            f"the pre-norm EvaBlock only")
        extra = {n for n, _ in blk.named_children()} - _BLOCK_CHILDREN
        if extra:
            raise TypeError(f"block {i} holds submodules ToMe does not understand: {sorted(extra)}")
        attn = blk.attn
        if type(attn) not in cls["attn"]:
            raise TypeError(f"block {i} attention is a {type(attn).__name__}; ToMe's EVA adapter "
                            f"patches EvaAttention and AttentionRope only")
        extra = {n for n, _ in attn.named_children()} - _ATTN_CHILDREN
        if extra:
            raise TypeError(
                f"block {i} attention holds submodules ToMe does not understand: {sorted(extra)}")
        if getattr(attn, "num_kv_groups", 1) != 1:
            raise TypeError(f"block {i} uses grouped-query attention (num_kv_heads); not supported")
        if attn.num_prefix_tokens != model.num_prefix_tokens:
            raise TypeError(f"block {i} leaves {attn.num_prefix_tokens} tokens unrotated, the "
                            f"model has {model.num_prefix_tokens} prefix tokens")
        if rope is not None and rope.dim != attn.head_dim:
            raise TypeError(f"rope dim {rope.dim} is not block {i}'s head_dim {attn.head_dim}")


def eva_spec(model: nn.Module) -> ViTSpec:
    """The numbers that token counts and FLOPs depend on, as fvcore counts the patched model:
    per token, norm1, q/k/v (one linear or three), per-head q/k norms, scale-norm, gate and the
    output projection before the merge, norm2 and the MLP after it; the final norm per token
    leaving; the patch embedding, pre-norm, fc_norm and head fixed. The rotary embedding is
    element-wise (no FLOPs in fvcore's convention)."""
    from tome_lab.patch import grid_of, patch_embed_flops

    _check(model)
    blk = model.blocks[0]
    attn = blk.attn
    heads = attn.num_heads
    qkv = (_token_flops(attn.qkv) if attn.qkv is not None else
           sum(_token_flops(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)))
    per_head = sum(_token_flops(n, heads) for n in (attn.q_norm, attn.k_norm))
    attn_flops = (_token_flops(blk.norm1) + qkv + per_head + _token_flops(attn.norm)
                  + _token_flops(attn.gate) + _token_flops(attn.proj))
    num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    head = model.head.weight.numel() if isinstance(model.head, nn.Linear) else 0
    fixed = (patch_embed_flops(model) + _token_flops(model.norm_pre) * num_tokens
             + _token_flops(model.fc_norm) + head)
    return ViTSpec(
        depth=len(model.blocks),
        num_tokens=num_tokens,
        num_prefix=model.num_prefix_tokens,
        class_token=model.cls_token is not None,
        attn_dim=heads * attn.head_dim,
        head_dim=attn.head_dim,
        embed_dim=model.embed_dim,
        attn_token_flops=attn_flops,
        mlp_token_flops=_token_flops(blk.norm2) + _token_flops(blk.mlp),
        final_token_flops=_token_flops(model.norm),
        fixed_flops=fixed,
        grid=grid_of(model.patch_embed),
    )


# ------------------------------------------------------------------ rotary at any position


def rope_coords(rope: nn.Module, position: Tensor, grid: tuple[int, int]) -> Tensor:
    """[..., 2] the rope's coordinates of grid positions ``position`` ([..., 2] (row, col),
    possibly fractional), in the rope's channel order: timm's ``_build_grid`` for one point
    (grid type, offset, ``ref_feat_shape`` rescaling, 'xy' swapping the channels)."""
    feat, ref = list(grid), rope.ref_feat_shape
    t = [position[..., 0], position[..., 1]]
    if rope.grid_indexing == "xy":  # channel 0 is the column coordinate
        feat, t = feat[::-1], t[::-1]
        ref = list(ref)[::-1] if ref is not None else None
    out = []
    for c, (p, s) in enumerate(zip(t, feat, strict=True)):
        if rope.grid_type == "pixel":  # torch.linspace(-1, 1, s) at index p
            v = 2.0 * p / (s - 1) - 1.0 if s > 1 else p * 0.0 - 1.0
        elif rope.grid_type == "centered":
            denom = {"max": max(feat), "min": min(feat)}.get(rope.normalize_coords, s)
            v = (p + 0.5 + rope.grid_offset) / float(denom)
        else:  # index
            v = p + rope.grid_offset
        if ref is not None:
            v = v / s * ref[c]
        if rope.grid_type == "centered":
            v = 2.0 * v - 1.0
        out.append(v)
    return torch.stack(out, dim=-1)


def rope_embed(rope: nn.Module, position: Tensor, grid: tuple[int, int], dtype: torch.dtype
               ) -> Tensor:
    """[..., 2 * dim] the concatenated (sin, cos) rotary embedding at ``position`` ([..., 2]
    (row, col), possibly fractional) in ``dtype``: timm's ``build_rotary_pos_embed`` for one
    point (coordinates times the frequency bands, then its interleaved or half layout)."""
    coords = rope_coords(rope, position.to(dtype), grid)  # (..., 2)
    angles = (coords.unsqueeze(-1) * rope.bands.to(dtype)).flatten(-2)  # (..., dim / 2)
    sin, cos = angles.sin(), angles.cos()
    if rope.rotate_half:  # timm's _rope_layout: [f0, f1, .., f0, f1, ..]
        sin, cos = torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)
    else:  # [f0, f0, f1, f1, ..]
        sin, cos = sin.repeat_interleave(2, -1), cos.repeat_interleave(2, -1)
    return torch.cat([sin, cos], -1)


def rope_at(rope: nn.Module, table: Tensor, position: Tensor, grid: tuple[int, int]) -> Tensor:
    """[B, M, 2 * dim] the rotary embedding of tokens at ``position`` ([B, M, 2] (row, col)):
    timm's own ``table`` row ([N0, 2 * dim], ``rope.get_embed()``) where the position is a grid
    point, :func:`rope_embed` at the fractional coordinate elsewhere (in the model's precision,
    at least float32)."""
    rows, cols = grid
    computed = rope_embed(rope, position, grid, torch.promote_types(table.dtype, torch.float32))
    rounded = position.round()
    on_grid = (position == rounded).all(-1, keepdim=True)  # (B, M, 1)
    idx = (rounded[..., 0].clamp(0, rows - 1) * cols + rounded[..., 1].clamp(0, cols - 1)).long()
    return torch.where(on_grid, table[idx], computed.to(table.dtype))


def _rotate(x: Tensor, emb: Tensor, num_prefix: int, half: bool) -> Tensor:
    """timm's rotation of [B, H, N, d] ``x`` past its prefix by [B, 1, N - p, 2d] ``emb``."""
    from timm.layers import apply_rot_embed_cat

    return torch.cat([x[:, :, :num_prefix], apply_rot_embed_cat(x[:, :, num_prefix:], emb,
                                                                half=half)], dim=2)


# ------------------------------------------------------------------ patched forwards


def _qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head q, k, v ([B, H, N, d]) as EvaAttention / AttentionRope compute them."""
    B, N, _ = x.shape
    H, d = attn.num_heads, attn.head_dim
    if attn.qkv is not None:
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is None:
            qkv = attn.qkv(x)
        else:
            bias = torch.cat((q_bias, attn.k_bias, attn.v_bias))
            if attn.qkv_bias_separate:
                qkv = attn.qkv(x)
                qkv += bias
            else:
                qkv = F.linear(x, weight=attn.qkv.weight, bias=bias)
        q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = attn.q_proj(x).reshape(B, N, H, d).transpose(1, 2)
        k = attn.k_proj(x).reshape(B, N, H, d).transpose(1, 2)
        v = attn.v_proj(x).reshape(B, N, H, d).transpose(1, 2)
    return attn.q_norm(q), attn.k_norm(k), v


def _attention(attn: nn.Module, x: Tensor, emb: Tensor | None, mask: Tensor | None,
               core: Callable[..., Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """EVA attention with q, k rotated by ``emb`` ([B, 1, N - p, 2d] or None) and the per-key
    bias ``mask`` through the engine's ``core``; returns ([B, N, C], per-head (q, k, v))."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    q, k, v = _qkv(attn, x)  # (B, H, N, d)
    if emb is not None:
        q = _rotate(q, emb, attn.num_prefix_tokens, attn.rotate_half).type_as(v)
        k = _rotate(k, emb, attn.num_prefix_tokens, attn.rotate_half).type_as(v)
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
    x = attn.proj_drop(attn.proj(x))
    return x, (q, k, v)


def _block_forward(self: nn.Module, x: Tensor, rope: Tensor | None = None,
                   attn_mask: Tensor | None = None, is_causal: bool = False, *,
                   tome: ForwardState | None = None, rope_module: nn.Module | None = None
                   ) -> Tensor:
    """EvaBlock's pre-norm residual path with the merge between the attention residual and the
    MLP; ``rope`` is timm's table for the grid ([N0, 2d]), and q, k are rotated at the tokens'
    tracked positions (:func:`rope_at`)."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched block takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    if tome is None:
        raise TypeError("a ToMe-patched block runs inside its model's forward, which passes it "
                        "the sizes and positions of earlier blocks; call the model, not the block")
    plan: BlockPlan = self._tome_plan
    emb = None
    if rope is not None:
        p = self.attn.num_prefix_tokens
        position = tome.positions[plan.index][:, p:]  # (B, N - p, 2)
        emb = rope_at(rope_module, rope, position, plan.state.spec.grid).unsqueeze(1)
    y, (q, k, v) = _attention(self.attn, self.norm1(x), emb, tome.masks[plan.index], plan.core)
    del emb
    if self.gamma_1 is not None:
        y = self.gamma_1 * y
    x_in, x = x, x + self.drop_path1(y)
    del y
    x = reduce(plan, tome, x_in, x, q, k, v)
    del q, k, v, x_in
    y = self.mlp(self.norm2(x))
    if self.gamma_2 is not None:
        y = self.gamma_2 * y
    return x + self.drop_path2(y)


def _features(self: nn.Module, x: Tensor, tome: ForwardState) -> Tensor:
    """Eva.forward_features (its own steps, checked at patch time) with the forward's state."""
    x = self.patch_embed(x)
    x, rot = self._pos_embed(x)
    x = self.norm_pre(x)
    start_positions(self, tome, x)
    recompute = self.grad_checkpointing and torch.is_grad_enabled()
    for blk in self.blocks:
        if recompute:
            x = checkpoint(blk, x, rot, tome=tome, rope_module=self.rope, use_reentrant=False)
        else:
            x = blk(x, rot, tome=tome, rope_module=self.rope)
    x = self.norm(x)
    finish_forward(self, tome)
    return x


def _no_mask(attn_mask: Tensor | None, is_causal: bool) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched model takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")


def _forward_features(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False) -> Tensor:
    """The patched ``forward_features``: a fresh :class:`ForwardState` for this forward."""
    _no_mask(attn_mask, is_causal)
    return _features(self, x, new_forward(self))


def _sized_pool(self: nn.Module, x: Tensor, size: Tensor | None, pool_type: str) -> Tensor:
    """timm's ``global_pool_nlc`` with the average weighted by token size."""
    if pool_type not in ("avg", "avgmax") or size is None:
        return type(self).pool(self, x, pool_type)
    mean = sized_mean(x, size, self.num_prefix_tokens)
    return mean if pool_type == "avg" else 0.5 * (x[:, self.num_prefix_tokens:].amax(1) + mean)


def _forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
             is_causal: bool = False) -> Tensor:
    """The patched ``forward``: features and a size-weighted head from one forward's state."""
    _no_mask(attn_mask, is_causal)
    tome = new_forward(self)
    x = _features(self, x, tome)
    x = _sized_pool(self, x, tome.sizes[-1], self.global_pool)  # Eva.forward_head
    x = self.fc_norm(x)
    x = self.head_drop(x)
    return self.head(x)


def _pool(self: nn.Module, x: Tensor, pool_type: str | None = None) -> Tensor:
    """Eva's pool for a caller running ``forward_features`` and ``forward_head`` apart: the
    sizes of the last finished forward."""
    pool_type = self.global_pool if pool_type is None else pool_type
    return _sized_pool(self, x, self._tome.size, pool_type)


_TOME_CLASSES: dict[str, type] = {}


def _tome_block_class() -> type:
    """``ToMeEvaBlock``: timm's ``EvaBlock`` with :func:`_block_forward`, built on first use
    (importing tome_lab imports no timm); pickle finds it through the module's ``__getattr__``."""
    cls = _TOME_CLASSES.get("ToMeEvaBlock")
    if cls is None:
        cls = type("ToMeEvaBlock", (_classes()["block"],), {
            "forward": _block_forward, "__module__": __name__, "__qualname__": "ToMeEvaBlock",
            "__doc__": "A timm EvaBlock patched by tome_lab (see ``_block_forward``)."})
        _TOME_CLASSES["ToMeEvaBlock"] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name == "ToMeEvaBlock":
        return _tome_block_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EvaFamily(Family):
    """timm's ``Eva``: RoPE (``cat``) or none, class / register tokens, token or size-weighted
    average pooling, LayerScale, q/k norm, scale-norm, SwiGLU; token positions tracked."""

    name = "eva"
    describe = "timm Eva (EVA-02 / RoPE ViT) models"
    positions = True

    def accepts(self, model: nn.Module) -> bool:
        try:
            eva = _classes()["model"]
        except ImportError:
            return False
        return isinstance(model, eva)

    def spec(self, model: nn.Module) -> ViTSpec:
        return eva_spec(model)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.blocks)

    def install(self, model: nn.Module, cfg: ToMeConfig) -> None:
        tome_block = _tome_block_class()
        for blk in model.blocks:
            blk.__class__ = tome_block
        model.forward = partial(_forward, model)
        model.forward_features = partial(_forward_features, model)
        model.pool = partial(_pool, model)

    def relax_refusal(self, model: nn.Module) -> str | None:
        from tome_lab.patch import max_pool_refusal

        return max_pool_refusal(model.global_pool)

    def remove(self, model: nn.Module) -> None:
        block_cls = _classes()["block"]
        for blk in model.blocks:
            if type(blk) is _TOME_CLASSES.get("ToMeEvaBlock"):
                blk.__class__ = block_cls
        for name in ("forward", "forward_features", "pool"):
            model.__dict__.pop(name, None)


FAMILIES.register("eva")(EvaFamily())

__all__ = ["EvaFamily", "eva_spec", "rope_at", "rope_coords", "rope_embed"]
