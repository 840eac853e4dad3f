"""The only module that knows timm's internals: applies Token Merging to a timm ViT.

It keeps every submodule timm built (norms, qkv, q/k norms, LayerScale, drop-path, MLP,
projection) and rewrites only each block's residual path and its attention core: plain
attention stays on timm's fused ``F.scaled_dot_product_attention`` call, and proportional
attention's log size goes through the configured core (``ToMeConfig.attn_impl``: float mask,
bias channel or FlexAttention, ``tome_lab.attention.impl``). Blocks or attention modules
holding anything this module does not know raise ``TypeError`` at patch time instead of
computing something else.

Layout checked against timm 1.0.x ``VisionTransformer`` (class / distillation / register
tokens, average pooling, LayerScale, qk-norm, scale-norm, gated attention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tome_lab.config import ToMeConfig
from tome_lab.flops import ViTSpec
from tome_lab.matching import AttentionStats, MatchContext, capabilities
from tome_lab.merge import clamp_r, max_r, merge_source, merge_wavg
from tome_lab.registry import ATTENTION, ATTN_IMPL, COMBINE, FEATURES, MATCHING, SCHEDULES

_BLOCK_CHILDREN = {"norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"}
_ATTN_CHILDREN = {"qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop"}
_POOLS = ("token", "avg", "avgmax", "max", "")  # size-aware or unaffected by merging


@dataclass
class ForwardState:
    """What one forward computes between blocks, passed from block to block.

    Each forward builds its own, so concurrent forwards of one patched model (threads) never
    share it. Each block reads its entry slot ``i`` and writes its exit slot ``i + 1`` (never
    a running value), so recomputing a block (gradient checkpointing) sees the same inputs as
    its first run.

    Attributes:
        sizes: depth + 1 slots of [B, N_i, 1] token sizes entering block i (None: all ones).
        masks: depth + 1 slots of the attention masks those sizes give (None: no mask).
        sources: depth + 1 slots of [B, N_i, N0] patch membership (``trace_source``).
        positions: depth + 1 slots of [B, N_i, 2] grid positions (when the matcher reads them).
        tokens: tokens leaving each block.
    """

    sizes: list[Tensor | None]
    masks: list[Tensor | None]
    sources: list[Tensor | None]
    positions: list[Tensor | None]
    tokens: list[int]

    @classmethod
    def empty(cls, depth: int) -> ForwardState:
        """Slots for a model of ``depth`` blocks, nothing computed yet."""
        return cls([None] * (depth + 1), [None] * (depth + 1), [None] * (depth + 1),
                   [None] * (depth + 1), [0] * depth)


@dataclass
class ToMeState:
    """Per-model state: the plan fixed at patch time, and what the last finished forward left.

    A forward never reads ``last``: the blocks pass their own :class:`ForwardState` along, and
    ``last`` is replaced (one assignment) when a forward finishes, for reading afterwards
    (sizes, sources, tokens per block). With concurrent forwards it is the last to finish.

    Attributes:
        config: the configuration applied.
        r: per-layer r from the schedule (before clamping).
        spec: the model's numbers (tokens, prefix, depth, FLOP terms).
        last: the :class:`ForwardState` of the last finished forward.
    """

    config: ToMeConfig
    r: list[int]
    spec: ViTSpec
    last: ForwardState | None = None

    def _last(self) -> ForwardState:
        return self.last if self.last is not None else ForwardState.empty(self.spec.depth)

    @property
    def sizes(self) -> list[Tensor | None]:
        """depth + 1 slots of [B, N_i, 1] sizes entering block i in the last forward."""
        return self._last().sizes

    @property
    def sources(self) -> list[Tensor | None]:
        """depth + 1 slots of [B, N_i, N0] patch membership in the last forward."""
        return self._last().sources

    @property
    def positions(self) -> list[Tensor | None]:
        """depth + 1 slots of [B, N_i, 2] grid positions in the last forward."""
        return self._last().positions

    @property
    def tokens(self) -> list[int]:
        """Tokens leaving each block in the last forward."""
        return self._last().tokens

    @property
    def size(self) -> Tensor | None:
        """[B, N, 1] token sizes after the last forward (None if nothing merged)."""
        return self._last().sizes[-1]

    @property
    def source(self) -> Tensor | None:
        """[B, N, N0] patch membership after the last forward (``trace_source``)."""
        return self._last().sources[-1]


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
    core: Callable[..., Tensor]  # the attention core (``attn_impl``)
    head_mean: bool  # head_agg == "mean"
    trace_source: bool
    stats: frozenset[str] = frozenset()  # attention statistics the matcher asked for
    positions: bool = False  # the matcher reads grid positions
    creates: bool = False  # the matcher creates tokens (no sources, no positions after it)


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
    """Reads the numbers that token counts and FLOPs depend on from a timm ViT, with the
    costs of the default configuration's matcher (``bipartite``; :func:`config_spec` gives
    another configuration's)."""
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
    return config_spec(ViTSpec(
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
        grid=_grid(pe),
    ), ToMeConfig())


def _grid(patch_embed: nn.Module) -> tuple[int, int] | None:
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


def _metric(plan: _BlockPlan, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The matcher's similarity feature: (B, N, d) averaged or (B, N, H*d) concatenated."""
    feat = plan.feature(x, q, k, v)  # (B, H, N, d)
    return feat.mean(1) if plan.head_mean else feat.transpose(1, 2).flatten(2)


def _attention_stats(q: Tensor, k: Tensor, mask: Tensor | None, want: frozenset[str]
                     ) -> AttentionStats:
    """The attention statistics ``want`` asks for, from the block's own q and k and its mask
    (proportional attention's log size included): the class token's row alone when that is
    all that is asked, else every query's probabilities once for all of them."""
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        if want <= {"cls"}:
            logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
            if mask is not None:
                logits = logits + mask
            return AttentionStats(cls=logits.softmax(-1)[:, :, 0])
        logits = (q * scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        if mask is not None:
            logits = logits + mask
        probs = logits.softmax(-1)
        return AttentionStats(
            cls=probs[:, :, 0] if "cls" in want else None,
            received=probs.mean(dim=(1, 2)) if "received" in want else None,
            full=probs if "full" in want else None)


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
    plan: _BlockPlan = self._tome_plan
    st, i = plan.state, plan.index
    spec = st.spec
    size, mask = tome.sizes[i], tome.masks[i]
    y, (q, k, v) = _attention(self.attn, self.norm1(x), mask, plan.core)
    x_in, x = x, x + self.drop_path1(self.ls1(y))
    del y
    r = clamp_r(plan.r, x.shape[1], spec.num_prefix, spec.bound)
    source, position = tome.sources[i], tome.positions[i]
    if r > 0:  # a block that merges nothing computes no feature, similarity, mask or gather
        metric = None
        if plan.feature is not None:
            metric = _metric(plan, x_in, q, k, v)
        stats = _attention_stats(q, k, mask, plan.stats) if plan.stats else None
        ctx = MatchContext(metric=metric, num_prefix=spec.num_prefix,
                           distance=st.config.distance, size=size, x=x, q=q, k=k, v=v,
                           class_token=spec.class_token, partition=st.config.partition,
                           block=i, depth=spec.depth, position=position, attn=stats,
                           grid=spec.grid)
        merge, _ = plan.match(ctx, r, **plan.match_options)
        if plan.trace_source:
            source = merge_source(merge, x, source)
        if plan.positions:
            position = None if plan.creates else merge_wavg(merge, position, size)[0]
        x, size = plan.combine(merge, x, size)
        mask = plan.mask(size)
        del ctx, metric, merge, stats
    # the qkv buffer goes before the MLP allocates its hidden layer (as in timm's block)
    del q, k, v, x_in
    tome.sizes[i + 1], tome.masks[i + 1], tome.sources[i + 1] = size, mask, source
    tome.positions[i + 1] = position
    tome.tokens[i] = int(x.shape[1])
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _grid_positions(spec: ViTSpec, x: Tensor) -> Tensor:
    """[B, N0, 2] (row, column) of each patch token on the grid, (-1, -1) for the prefix."""
    rows, cols = spec.grid
    r = torch.arange(rows, device=x.device, dtype=torch.float32)
    c = torch.arange(cols, device=x.device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(rows * cols, 2)
    prefix = grid.new_full((spec.num_prefix, 2), -1.0)
    return torch.cat([prefix, grid]).expand(x.shape[0], -1, -1)


def _features(self: nn.Module, x: Tensor, tome: ForwardState) -> Tensor:
    """VisionTransformer.forward_features with the forward's state passed to every block
    (checked at patch time to be the class's own steps; the submodules are timm's)."""
    x = self.patch_embed(x)
    x = self._pos_embed(x)
    x = self.patch_drop(x)
    x = self.norm_pre(x)
    if self.blocks[0]._tome_plan.positions:  # every block's plan says the same
        tome.positions[0] = _grid_positions(self._tome.spec, x)
    recompute = self.grad_checkpointing and torch.is_grad_enabled()
    for blk in self.blocks:
        if recompute:
            x = checkpoint(blk, x, tome=tome, use_reentrant=False)
        else:
            x = blk(x, tome=tome)
    x = self.norm(x)
    self._tome.last = tome  # for reading after the forward; no block reads it
    return x


def _forward_features(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False) -> Tensor:
    """The patched ``forward_features``: a fresh :class:`ForwardState` for this forward."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched model takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    return _features(self, x, ForwardState.empty(self._tome.spec.depth))


def _forward(self: nn.Module, x: Tensor, attn_mask: Tensor | None = None,
             is_causal: bool = False) -> Tensor:
    """The patched ``forward``: features and head from one :class:`ForwardState`, so that the
    size-weighted pool uses this forward's sizes whatever other forwards run meanwhile."""
    if attn_mask is not None or is_causal:
        raise ValueError("a ToMe-patched model takes no attn_mask / is_causal: merging "
                         "changes the token set the mask refers to")
    tome = ForwardState.empty(self._tome.spec.depth)
    x = _features(self, x, tome)
    if self.global_pool not in ("avg", "avgmax") or tome.sizes[-1] is None:
        return self.forward_head(x)  # the class's own head; its pool needs no sizes
    x = _sized_pool(self, x, tome.sizes[-1], self.global_pool)  # VisionTransformer.forward_head
    x = self.fc_norm(x)
    x = self.head_drop(x)
    return self.head(x)


def _sized_pool(self: nn.Module, x: Tensor, size: Tensor, pool_type: str) -> Tensor:
    """Average pooling weighted by token size (as ToMe does for MAE); avgmax's max as timm's."""
    if not self.pool_include_prefix:
        x, size = x[:, self.num_prefix_tokens:], size[:, self.num_prefix_tokens:]
    mean = (x * size).sum(1) / size.sum(1)
    return mean if pool_type == "avg" else 0.5 * (x.amax(1) + mean)


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
        **options: ``distance``, ``feature``, ``head_agg``, ``combine``, ``partition``,
            ``attn_impl`` (see :class:`~tome_lab.config.ToMeConfig`) and the chosen plug-ins'
            own options (e.g. ``gflops`` for ``schedule="flops"``, ``criterion`` for ``pruning``).

    Raises:
        ValueError: unknown names or bad values.
        TypeError: a model whose blocks hold something this patch does not understand.
    """
    knobs = {k: options.pop(k) for k in ("distance", "feature", "head_agg", "combine",
                                         "partition", "attn_impl") if k in options}
    cfg = ToMeConfig(r=tuple(r) if isinstance(r, list) else r, matching=matching,
                     schedule=schedule, prop_attn=prop_attn, trace_source=trace_source,
                     options=options, **knobs)
    return apply_config(model, cfg)


def attention_request(match_fn: Callable[..., Any], class_token: bool,
                      options: dict[str, Any]) -> frozenset[str]:
    """The attention statistics a matcher needs under ``options`` (see ``tome_lab.matching``)."""
    request = getattr(match_fn, "attention_request", None)
    want = (frozenset(request(class_token, **options)) if request is not None
            else capabilities(match_fn).attention)
    if "cls" in want and not class_token:
        raise ValueError("this matcher's options ask for the class token's attention row, "
                         "and the model has no class token")
    return want


def config_spec(spec: ViTSpec, cfg: ToMeConfig) -> ViTSpec:
    """``spec`` with what the matching costs under ``cfg`` (for the analytic FLOP count)."""
    if cfg.head_agg == "concat":
        width = spec.embed_dim if cfg.feature == "x" else spec.attn_dim
    else:
        width = spec.embed_dim if cfg.feature == "x" else spec.head_dim
    match_fn = MATCHING.get(cfg.matching)
    opts = cfg.matching_options()
    qk_width = getattr(ATTN_IMPL.get(cfg.attn_impl), "qk_width", None)  # a padding core's
    attn_width = qk_width(spec.head_dim) if qk_width is not None and cfg.prop_attn else 0
    return replace(spec, matching=cfg.matching, metric_dim=width, partition=cfg.partition,
                   attn_width=attn_width,
                   matching_options=tuple(sorted(opts.items())),
                   bound=capabilities(match_fn).bound,
                   stats=tuple(sorted(attention_request(match_fn, spec.class_token, opts))),
                   own_flops=getattr(match_fn, "flops", None))


def _check_schedule(spec: ViTSpec, cfg: ToMeConfig, rs: list[int]) -> None:
    """Refuses a configured r (a constant or an explicit list entry) that no block can remove
    under the matcher's bound, not even the first. A later block that runs short of tokens,
    or a computed schedule (linear, decreasing, flops) that asks too much, is clamped, as in
    the paper's code, and the analytic count follows the clamp."""
    most = max_r(spec.bound, spec.num_tokens, spec.num_prefix)
    configured = cfg.schedule in ("constant", "list") and cfg.matching != "none"
    if configured and max(rs, default=0) > most:
        raise ValueError(
            f"r={max(rs)} is more than matching {cfg.matching!r} can remove in any block: "
            f"{spec.num_tokens} tokens enter the first ({spec.num_prefix} protected) and its "
            f"bound ({spec.bound!r}) allows at most {most}")


def apply_config(model: nn.Module, cfg: ToMeConfig) -> nn.Module:
    """:func:`apply_tome` from a :class:`~tome_lab.config.ToMeConfig`."""
    spec = config_spec(vit_spec(model), cfg)
    rs = SCHEDULES.get(cfg.schedule)(cfg.r, spec, **cfg.schedule_options())
    match_fn = MATCHING.get(cfg.matching)
    caps = capabilities(match_fn)
    if cfg.matching == "none":  # the no-merge baseline plans no merges
        rs = [0] * spec.depth
    if len(rs) != spec.depth or any(v < 0 for v in rs):
        raise ValueError(f"schedule {cfg.schedule!r} gave {rs}; need {spec.depth} values >= 0")
    _check_schedule(spec, cfg, rs)
    if caps.positions and spec.grid is None:
        raise ValueError(f"matching {cfg.matching!r} reads token grid positions, and this "
                         f"model's patch embedding has no 2-D grid")
    state = ToMeState(config=cfg, r=rs, spec=spec)
    m_opts = cfg.matching_options()
    check = getattr(match_fn, "check_options", None)
    if check is not None:  # bad plug-in options fail at patch time, not in the first forward
        check(**m_opts)
    mask = ATTENTION.get(cfg.attention)
    feature = FEATURES.get(cfg.feature) if "metric" in caps.uses else None
    combine = COMBINE.get(cfg.combine)
    core = ATTN_IMPL.get(cfg.attn_impl)
    tome_block = _tome_block_class()
    model._tome = state
    for i, blk in enumerate(model.blocks):
        blk._tome_plan = _BlockPlan(
            index=i, r=rs[i], state=state, match=match_fn, match_options=m_opts, mask=mask,
            feature=feature, combine=combine, core=core, head_mean=cfg.head_agg == "mean",
            trace_source=cfg.trace_source, stats=frozenset(spec.stats),
            positions=caps.positions, creates=caps.reduction == "create")
        blk.__class__ = tome_block
    # partials of module-level functions, unlike bound methods, pickle
    model.forward = partial(_forward, model)
    model.forward_features = partial(_forward_features, model)
    model.pool = partial(_pool, model)
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undoes :func:`apply_tome`: the model computes exactly what timm's code computes."""
    _, block_cls, _ = _timm_classes()
    for blk in model.blocks:
        if type(blk) is _TOME_CLASSES.get("ToMeBlock"):
            blk.__class__ = block_cls
        blk.__dict__.pop("_tome_plan", None)
    for name in ("forward", "forward_features", "pool", "_tome"):
        model.__dict__.pop(name, None)
    return model


def tome_state(model: nn.Module) -> ToMeState | None:
    """The :class:`ToMeState` of a patched model (sizes, sources, tokens), or None."""
    return model.__dict__.get("_tome")


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`apply_tome` is in effect on ``model``."""
    return tome_state(model) is not None


__all__ = ["ForwardState", "ToMeState", "apply_config", "apply_tome", "attention_request",
           "config_spec", "is_patched", "remove_tome", "tome_state", "vit_spec"]
