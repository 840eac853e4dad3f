"""The only module that knows timm's internals: applies Token Merging to a timm ViT.

It keeps every submodule timm built (norms, qkv, q/k norms, LayerScale, drop-path, MLP,
projection) and rewrites only each block's residual path and its attention core, so the fused
``F.scaled_dot_product_attention`` kernel stays; proportional attention enters as its float
mask. Blocks or attention modules holding anything this module does not know raise
``TypeError`` at patch time instead of computing something else.

Layout checked against timm 1.0.x ``VisionTransformer`` (class / distillation / register
tokens, average pooling, LayerScale, qk-norm, scale-norm, gated attention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from tome_lab.config import ToMeConfig
from tome_lab.flops import ViTSpec
from tome_lab.matching import MatchContext
from tome_lab.merge import clamp_r, merge_source
from tome_lab.registry import ATTENTION, COMBINE, FEATURES, MATCHING, SCHEDULES

_BLOCK_CHILDREN = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTN_CHILDREN = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop"}
_POOLS = ("token", "avg", "avgmax", "max", "")  # size-aware or unaffected by merging


@dataclass
class ToMeState:
    """Per-model state: the plan fixed at patch time and what the last forward left.

    Each block reads its entry sizes from slot ``i`` and writes its exit sizes to slot
    ``i + 1`` (never a running value), so recomputing a block (gradient checkpointing) sees
    the same inputs as its first run.

    Attributes:
        config: the configuration applied.
        r: per-layer r from the schedule (before clamping).
        spec: the model's numbers (tokens, prefix, depth, FLOP terms).
        sizes: depth + 1 slots of [B, N_i, 1] token sizes entering block i (None: all ones).
        masks: depth + 1 slots of the attention masks those sizes give (None: no mask).
        sources: depth + 1 slots of [B, N_i, N0] patch membership (``trace_source``).
        tokens: tokens leaving each block in the last forward.
    """

    config: ToMeConfig
    r: list[int]
    spec: ViTSpec
    sizes: list[Tensor | None] = field(default_factory=list)
    masks: list[Tensor | None] = field(default_factory=list)
    sources: list[Tensor | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        slots = self.spec.depth + 1
        self.sizes, self.masks, self.sources = [None] * slots, [None] * slots, [None] * slots
        self.tokens = [0] * self.spec.depth

    @property
    def size(self) -> Tensor | None:
        """[B, N, 1] token sizes after the last forward (None if nothing merged)."""
        return self.sizes[-1]

    @property
    def source(self) -> Tensor | None:
        """[B, N, N0] patch membership after the last forward (``trace_source``)."""
        return self.sources[-1]


@dataclass(frozen=True)
class _BlockPlan:
    """What one block does, fixed at patch time: plain data and module-level functions only,
    so a patched model pickles, deep-copies and saves with ``torch.save``."""

    index: int
    r: int
    state: ToMeState
    match: Callable[..., Any]
    match_options: dict[str, Any]
    mask: Callable[[Tensor | None], Tensor | None]
    feature: Callable[..., Tensor] | None  # None: the matcher needs no similarity metric
    combine: Callable[..., tuple[Tensor, Tensor]]
    head_mean: bool  # head_agg == "mean"
    trace_source: bool


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


def _token_flops(module: nn.Module | None, norm_repeat: int = 1) -> int:
    """Per-token FLOPs of a module's linear layers and LayerNorms, as fvcore counts them
    (a LayerNorm costs 5 per element, 4 without affine; ``norm_repeat`` for per-head norms)."""
    if module is None:
        return 0
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel()
        elif isinstance(m, nn.LayerNorm):
            width = 1
            for d in m.normalized_shape:
                width *= d
            total += (5 if m.elementwise_affine else 4) * width * norm_repeat
    return total


def _patch_embed_flops(model: nn.Module) -> int:
    """FLOPs of the patch embedding: closed form for timm's PatchEmbed, fvcore otherwise."""
    from timm.layers import PatchEmbed

    from tome_lab.flops import count_flops

    pe = model.patch_embed
    if type(pe) is PatchEmbed and isinstance(pe.proj, nn.Conv2d):
        return pe.num_patches * (pe.proj.weight.numel() + _token_flops(pe.norm))
    # a custom stem (e.g. convolutions): count it as fvcore would inside the whole model
    chans = model.pretrained_cfg.get("input_size", (3,))[0]
    return round(count_flops(pe, (chans, *pe.img_size)) * 1e9)


def vit_spec(model: nn.Module) -> ViTSpec:
    """Reads the numbers that token counts and FLOPs depend on from a timm ViT."""
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
    fixed = (_patch_embed_flops(model) + _token_flops(model.norm_pre) * num_tokens
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
    )


def _attention(attn: nn.Module, x: Tensor, mask: Tensor | None
               ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """timm Attention with an additive mask; returns ([B, N, C], per-head (q, k, v))."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    if attn.fused_attn:
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        if mask is not None:
            logits = logits + mask
        x = attn.attn_drop(logits.softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    x = attn.proj(x)
    if attn.training or not isinstance(attn.proj_drop, nn.Dropout):  # eval dropout: identity
        x = attn.proj_drop(x)
    return x, (q, k, v)


def _metric(plan: _BlockPlan, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The matcher's similarity feature: (B, N, d) averaged or (B, N, H*d) concatenated."""
    feat = plan.feature(x, q, k, v)  # (B, H, N, d)
    return feat.mean(1) if plan.head_mean else feat.transpose(1, 2).flatten(2)


def _block_forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                   is_causal: bool = False) -> Tensor:
    """timm's pre-norm block with a merge between the attention residual and the MLP."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched block takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    plan: _BlockPlan = self._tome_plan
    st, i = plan.state, plan.index
    size, mask = st.sizes[i], st.masks[i]
    y, (q, k, v) = _attention(self.attn, self.norm1(x), mask)
    x_in, x = x, x + self.drop_path1(self.ls1(y))
    del y
    r = clamp_r(plan.r, x.shape[1], st.spec.num_prefix)
    source = st.sources[i]
    if r > 0:  # a block that merges nothing computes no feature, similarity, mask or gather
        metric = None
        if plan.feature is not None:
            metric = _metric(plan, x_in, q, k, v)
        ctx = MatchContext(metric=metric, num_prefix=st.spec.num_prefix,
                           distance=st.config.distance, size=size, x=x, q=q, k=k,
                           class_token=st.spec.class_token, partition=st.config.partition)
        merge, _ = plan.match(ctx, r, **plan.match_options)
        if plan.trace_source:
            source = merge_source(merge, x, source)
        x, size = plan.combine(merge, x, size)
        mask = plan.mask(size)
        del ctx, metric, merge
    # the qkv buffer goes before the MLP allocates its hidden layer (as in timm's block)
    del q, k, v, x_in
    st.sizes[i + 1], st.masks[i + 1], st.sources[i + 1] = size, mask, source
    st.tokens[i] = int(x.shape[1])
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


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
    """timm's pool with average pooling weighted by token size (as ToMe does for MAE)."""
    pool_type = self.global_pool if pool_type is None else pool_type
    size = self._tome.size
    if pool_type not in ("avg", "avgmax") or size is None:
        return type(self).pool(self, x, pool_type)
    if not self.pool_include_prefix:
        x, size = x[:, self.num_prefix_tokens:], size[:, self.num_prefix_tokens:]
    mean = (x * size).sum(1) / size.sum(1)
    return mean if pool_type == "avg" else 0.5 * (x.amax(1) + mean)


def apply_tome(model: nn.Module, r: int | list[int] = 16, matching: str = "bipartite",
               schedule: str = "constant", prop_attn: bool = True, trace_source: bool = False,
               **options: Any) -> nn.Module:
    """Patches a timm ``VisionTransformer`` in place to merge tokens; returns it.

    Calling it again reconfigures; :func:`remove_tome` restores the original.

    Args:
        model: a timm VisionTransformer (class / distillation / register tokens or none).
        r: tokens merged per block, or an explicit list with one entry per block.
        matching: a matching plug-in name (see ``tome_lab.registry.MATCHING``).
        schedule: a schedule plug-in name (``constant``, ``list``, ``linear``,
            ``decreasing``, ``increasing``, ``flops``).
        prop_attn: proportional attention (True) or plain attention.
        trace_source: record which input patches each output token holds.
        **options: ``distance``, ``feature``, ``head_agg``, ``combine``, ``partition``
            (see :class:`~tome_lab.config.ToMeConfig`) and the chosen plug-ins' own options
            (e.g. ``gflops`` for ``schedule="flops"``, ``criterion`` for ``pruning``).

    Raises:
        ValueError: unknown names or bad values.
        TypeError: a model whose blocks hold something this patch does not understand.
    """
    knobs = {k: options.pop(k) for k in ("distance", "feature", "head_agg", "combine",
                                         "partition") if k in options}
    cfg = ToMeConfig(r=tuple(r) if isinstance(r, list) else r, matching=matching,
                     schedule=schedule, prop_attn=prop_attn, trace_source=trace_source,
                     options=options, **knobs)
    return apply_config(model, cfg)


def config_spec(spec: ViTSpec, cfg: ToMeConfig) -> ViTSpec:
    """``spec`` with what the matching costs under ``cfg`` (for the analytic FLOP count)."""
    if cfg.head_agg == "concat":
        width = spec.embed_dim if cfg.feature == "x" else spec.attn_dim
    else:
        width = spec.embed_dim if cfg.feature == "x" else spec.head_dim
    return replace(spec, matching=cfg.matching, metric_dim=width, partition=cfg.partition,
                   matching_options=tuple(sorted(cfg.matching_options().items())))


def apply_config(model: nn.Module, cfg: ToMeConfig) -> nn.Module:
    """:func:`apply_tome` from a :class:`~tome_lab.config.ToMeConfig`."""
    spec = config_spec(vit_spec(model), cfg)
    rs = SCHEDULES.get(cfg.schedule)(cfg.r, spec, **cfg.schedule_options())
    match_fn = MATCHING.get(cfg.matching)
    if cfg.matching == "none":  # the no-merge baseline plans no merges
        rs = [0] * spec.depth
    if len(rs) != spec.depth or any(v < 0 for v in rs):
        raise ValueError(f"schedule {cfg.schedule!r} gave {rs}; need {spec.depth} values >= 0")
    state = ToMeState(config=cfg, r=rs, spec=spec)
    m_opts = cfg.matching_options()
    check = getattr(match_fn, "check_options", None)
    if check is not None:  # bad plug-in options fail at patch time, not in the first forward
        check(**m_opts)
    mask = ATTENTION.get(cfg.attention)
    feature = FEATURES.get(cfg.feature) if "metric" in getattr(match_fn, "uses", ()) else None
    combine = COMBINE.get(cfg.combine)
    tome_block = _tome_block_class()
    model._tome = state
    for i, blk in enumerate(model.blocks):
        blk._tome_plan = _BlockPlan(
            index=i, r=rs[i], state=state, match=match_fn, match_options=m_opts, mask=mask,
            feature=feature, combine=combine, head_mean=cfg.head_agg == "mean",
            trace_source=cfg.trace_source)
        blk.__class__ = tome_block
    # a partial of a module-level function, unlike a bound method, pickles
    model.pool = partial(_pool, model)
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undoes :func:`apply_tome`: the model computes exactly what timm's code computes."""
    _, block_cls, _ = _timm_classes()
    for blk in model.blocks:
        if type(blk) is _TOME_CLASSES.get("ToMeBlock"):
            blk.__class__ = block_cls
        blk.__dict__.pop("_tome_plan", None)
    model.__dict__.pop("pool", None)
    model.__dict__.pop("_tome", None)
    return model


def tome_state(model: nn.Module) -> ToMeState | None:
    """The :class:`ToMeState` of a patched model (sizes, sources, tokens), or None."""
    return model.__dict__.get("_tome")


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`apply_tome` is in effect on ``model``."""
    return tome_state(model) is not None


__all__ = ["ToMeState", "apply_config", "apply_tome", "config_spec", "is_patched",
           "remove_tome", "tome_state", "vit_spec"]
