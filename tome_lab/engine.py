"""The family-agnostic engine: plans, per-forward state and the merge step of one block.

A model family (timm's ``VisionTransformer`` in :mod:`tome_lab.patch`, the others in
:mod:`tome_lab.families`) is one adapter, a :class:`Family`, that says where the blocks are,
reads the model's numbers into a :class:`~tome_lab.flops.ViTSpec` (prefix tokens, pooling,
FLOP terms), and installs block and model forwards written with its own submodules. Those
forwards call back into this module for everything token merging does:

- :func:`new_forward` / :func:`finish_forward`: a fresh :class:`ForwardState` per forward;
- ``plan.core(q, k, v, mask, scale, dropout)``: the attention core with proportional
  attention's bias (``ToMeConfig.attn_impl``), the block's mask being ``tome.masks[i]``;
- :func:`reduce`: between the attention residual and the MLP, the matcher's merge of the
  block's r tokens (similarity feature, attention statistics, combine, sizes, sources,
  positions);
- :func:`sized_mean`: the size-weighted average pool.

A :class:`Relaxation` (set as ``ToMeState.relax``) replaces the merge step of every block with
a differentiable one that keeps the sequence length (the learned rates of
:mod:`tome_lab.search.diffrate`), through the same forwards of every family.

Matching, schedules, combine rules and FLOP counts never see which family runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tome_lab.config import ToMeConfig
from tome_lab.flops import ViTSpec
from tome_lab.matching import AttentionStats, MatchContext, capabilities
from tome_lab.merge import clamp_r, max_r, merge_source
from tome_lab.registry import (
    ATTENTION,
    ATTN_IMPL,
    COMBINE,
    FAMILIES,
    FEATURES,
    MATCHING,
    SCHEDULES,
)


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
        positions: depth + 1 slots of [B, N_i, 2] grid positions (when the matcher or the
            family reads them).
        tokens: tokens leaving each block.
        relax: the :class:`Relaxation` that replaces the merge step in this forward (None:
            the plan's matcher merges).
        aux: what the relaxation keeps between blocks (its own keys).
    """

    sizes: list[Tensor | None]
    masks: list[Tensor | None]
    sources: list[Tensor | None]
    positions: list[Tensor | None]
    tokens: list[int]
    relax: Relaxation | None = None
    aux: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, depth: int, relax: Relaxation | None = None) -> ForwardState:
        """Slots for a model of ``depth`` blocks, nothing computed yet."""
        return cls([None] * (depth + 1), [None] * (depth + 1), [None] * (depth + 1),
                   [None] * (depth + 1), [0] * depth, relax)


class Relaxation:
    """A differentiable stand-in for every block's merge step, for learning reduction rates.

    With ``ToMeState.relax`` set, :func:`reduce` hands each block to :meth:`reduce` instead of
    the plan's matcher. The relaxation keeps the sequence length (tokens fade instead of
    leaving) and writes the block's exit slots itself: sizes (fractional ones allowed), the
    attention mask the next block adds to its logits (proportional attention's log size, so
    that a faded token is masked softly), sources and positions. Because it runs inside each
    family's own block forward, it needs no knowledge of any model library.
    """

    def reduce(self, plan: BlockPlan, tome: ForwardState, x_in: Tensor, x: Tensor, q: Tensor,
               k: Tensor, v: Tensor) -> Tensor:
        """[B, N, C] the block's tokens after the relaxed reduction (N unchanged); the
        arguments are :func:`reduce`'s."""
        raise NotImplementedError


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
        family: the name of the model family's adapter (``tome_lab.registry.FAMILIES``).
        last: the :class:`ForwardState` of the last finished forward.
        relax: a :class:`Relaxation` every forward runs instead of the matcher (None: the
            matcher merges); set by a learner, never by a configuration.
    """

    config: ToMeConfig
    r: list[int]
    spec: ViTSpec
    family: str = "timm"
    last: ForwardState | None = None
    relax: Relaxation | None = None

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
class BlockPlan:
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
    positions: bool = False  # the matcher or the family reads grid positions
    creates: bool = False  # the matcher creates tokens (no sources, no positions after it)
    position_rule: str = "mean"  # how a merged token's position follows (``Family.positions``)


class Family:
    """The interface between the engine and one model family (one adapter file each).

    An adapter knows its library's classes and nothing else does. It is registered in
    ``tome_lab.registry.FAMILIES`` under a short name and found by :func:`family_of`, which
    asks each registered adapter whether it :meth:`accepts` the model.

    Attributes:
        positions: whether the family's blocks read token positions (rotary embeddings);
            the engine then tracks them for every matcher, merged by ``position_rule``.
    """

    name: ClassVar[str] = ""
    describe: ClassVar[str] = ""  # the models it patches, for the error on any other model
    positions: ClassVar[bool] = False

    def accepts(self, model: nn.Module) -> bool:
        """Whether ``model`` is of this family (False when its library is not installed)."""
        raise NotImplementedError

    def spec(self, model: nn.Module) -> ViTSpec:
        """The model's numbers (depth, tokens, prefix, class token, grid, FLOP terms) with the
        default matcher's costs; raises ``TypeError`` for a layout the adapter does not
        understand."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The transformer blocks, in order; each gets its :class:`BlockPlan` as
        ``_tome_plan`` before :meth:`install`."""
        raise NotImplementedError

    def install(self, model: nn.Module, cfg: ToMeConfig) -> None:
        """Puts the patched forwards in place (blocks and model); called again to reconfigure.
        Raise ``ValueError`` for a configuration the family cannot run."""
        raise NotImplementedError

    def remove(self, model: nn.Module) -> None:
        """Undoes :meth:`install`: the model computes what its library computes."""
        raise NotImplementedError

    def relax_refusal(self, model: nn.Module) -> str | None:
        """Why a :class:`Relaxation` cannot stand in for merging on ``model``, or None: a
        relaxation keeps faded tokens in the sequence, so an output that reads every token
        without their sizes (a max pool) would still see them."""
        return None


def family_of(model: nn.Module) -> Family:
    """The adapter of ``model``'s family; ``TypeError`` naming the supported ones otherwise."""
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        if fam.accepts(model):
            return fam
    raise TypeError(
        f"ToMe patches {', '.join(FAMILIES.get(n).describe for n in FAMILIES.names())}; "
        f"got {type(model).__name__}")


# ------------------------------------------------------------------ inside a forward


def new_forward(model: nn.Module) -> ForwardState:
    """A fresh :class:`ForwardState` for one forward of a patched model."""
    return ForwardState.empty(model._tome.spec.depth, model._tome.relax)


def finish_forward(model: nn.Module, tome: ForwardState) -> None:
    """Records a finished forward's state for reading afterwards (no block reads it)."""
    model._tome.last = tome


def grid_positions(spec: ViTSpec, x: Tensor) -> Tensor:
    """[B, N0, 2] (row, column) of each patch token on the grid, (-1, -1) for the prefix."""
    rows, cols = spec.grid
    r = torch.arange(rows, device=x.device, dtype=torch.float32)
    c = torch.arange(cols, device=x.device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(rows * cols, 2)
    prefix = grid.new_full((spec.num_prefix, 2), -1.0)
    return torch.cat([prefix, grid]).expand(x.shape[0], -1, -1)


def start_positions(model: nn.Module, tome: ForwardState, x: Tensor) -> None:
    """Fills the first position slot when the plan tracks positions (every block's plan says
    the same); ``x`` is the [B, N0, C] input of the first block."""
    first = model._tome_blocks[0]._tome_plan
    if first.positions:
        tome.positions[0] = grid_positions(model._tome.spec, x)


def attention_stats(q: Tensor, k: Tensor, mask: Tensor | None, want: frozenset[str]
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


def block_metric(plan: BlockPlan, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The matcher's similarity feature: (B, N, d) averaged or (B, N, H*d) concatenated."""
    feat = plan.feature(x, q, k, v)  # (B, H, N, d)
    return feat.mean(1) if plan.head_mean else feat.transpose(1, 2).flatten(2)


def _mean_position(merge: Callable[..., Tensor], position: Tensor, size: Tensor | None
                   ) -> Tensor:
    """[B, N - r, 2] the size-weighted mean of the positions each output token holds (the
    ``mean`` rule): plain sums through ``merge``, not the matcher's own fusion (``merge.wavg``:
    EViT's and MCTF's attention weights, ToFu's norm-rescaled MLERP), which would move a
    position off its patches. A padded row of size 0 (ATS) gets 0 rather than 0 / 0."""
    if size is None:
        size = position.new_ones(position.shape[0], position.shape[1], 1)
    dtype = torch.promote_types(position.dtype, size.dtype)
    w = size.to(dtype)
    total = merge(position.to(dtype) * w, mode="sum")
    weight = merge(w, mode="sum")
    return total / weight.clamp(min=torch.finfo(dtype).tiny)


def reduce(plan: BlockPlan, tome: ForwardState, x_in: Tensor, x: Tensor, q: Tensor,
           k: Tensor, v: Tensor) -> Tensor:
    """The block's merge, between its attention residual and its MLP.

    Args:
        plan: the block's plan (``block._tome_plan``).
        tome: this forward's state; slot ``plan.index`` is read, slot ``plan.index + 1``
            written (sizes, mask, sources, positions) and the tokens leaving counted.
        x_in: [B, N, C] the block's input (for ``feature="x"``).
        x: [B, N, C] the tokens after the attention residual.
        q: [B, H, N, d] the block's per-head queries (after any q norm and rotary embedding
            the family applies).
        k: [B, H, N, d] its keys, likewise.
        v: [B, H, N, d] its values.

    Returns:
        [B, N - r', C] the merged tokens (r' the clamped r); under a :class:`Relaxation`,
        its [B, N, C] tokens.
    """
    if tome.relax is not None:
        return tome.relax.reduce(plan, tome, x_in, x, q, k, v)
    st, i = plan.state, plan.index
    spec = st.spec
    size, mask = tome.sizes[i], tome.masks[i]
    r = clamp_r(plan.r, x.shape[1], spec.num_prefix, spec.bound)
    source, position = tome.sources[i], tome.positions[i]
    if r > 0:  # a block that merges nothing computes no feature, similarity, mask or gather
        metric = None
        if plan.feature is not None:
            metric = block_metric(plan, x_in, q, k, v)
        stats = attention_stats(q, k, mask, plan.stats) if plan.stats else None
        ctx = MatchContext(metric=metric, num_prefix=spec.num_prefix,
                           distance=st.config.distance, size=size, x=x, q=q, k=k, v=v,
                           class_token=spec.class_token, partition=st.config.partition,
                           block=i, depth=spec.depth, position=position, attn=stats,
                           grid=spec.grid)
        merge, _ = plan.match(ctx, r, **plan.match_options)
        if plan.trace_source:
            source = merge_source(merge, x, source)
        if plan.positions:
            if plan.creates:
                position = None
            elif plan.position_rule == "keep":
                position = merge(position, mode="keep")
            else:
                position = _mean_position(merge, position, size)
        x, size = plan.combine(merge, x, size)
        mask = plan.mask(size)
        del ctx, metric, merge, stats
    tome.sizes[i + 1], tome.masks[i + 1], tome.sources[i + 1] = size, mask, source
    tome.positions[i + 1] = position
    tome.tokens[i] = int(x.shape[1])
    return x


def sized_mean(x: Tensor, size: Tensor | None, skip: int = 0) -> Tensor:
    """[B, C] average of ``x`` ([B, N, C]) over tokens from ``skip`` on, weighted by token
    size ([B, N, 1]; None: all ones), as ToMe pools a merged model (its MAE models)."""
    x = x[:, skip:]
    if size is None:
        return x.mean(1)
    size = size[:, skip:]
    return (x * size).sum(1) / size.sum(1)


# ------------------------------------------------------------------ patching


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
    stats = attention_request(match_fn, spec.class_token, opts)
    per_block = getattr(match_fn, "block_attention_request", None)
    block_stats: tuple[tuple[str, ...], ...] = ()
    if per_block is not None:
        asks = [frozenset(per_block(spec.class_token, i, spec.depth, **opts))
                for i in range(spec.depth)]
        if any(not a <= stats for a in asks):
            raise ValueError(f"matching {cfg.matching!r} asks a block for attention statistics "
                             f"beyond its attention_request {sorted(stats)}: {asks}")
        if any(a != stats for a in asks):
            block_stats = tuple(tuple(sorted(a)) for a in asks)
    return replace(spec, matching=cfg.matching, metric_dim=width, partition=cfg.partition,
                   attn_width=attn_width,
                   matching_options=tuple(sorted(opts.items())),
                   bound=capabilities(match_fn).bound,
                   stats=tuple(sorted(stats)), block_stats=block_stats,
                   own_flops=getattr(match_fn, "flops", None))


def vit_spec(model: nn.Module) -> ViTSpec:
    """The numbers that token counts and FLOPs depend on, read by the model's family adapter,
    with the costs of the default configuration's matcher (``bipartite``; :func:`config_spec`
    gives another configuration's)."""
    return config_spec(family_of(model).spec(model), ToMeConfig())


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
    fam = family_of(model)
    spec = config_spec(fam.spec(model), cfg)
    rs = SCHEDULES.get(cfg.schedule)(cfg.r, spec, **cfg.schedule_options())
    match_fn = MATCHING.get(cfg.matching)
    caps = capabilities(match_fn)
    if cfg.matching == "none":  # the no-merge baseline plans no merges
        rs = [0] * spec.depth
    if len(rs) != spec.depth or any(v < 0 for v in rs):
        raise ValueError(f"schedule {cfg.schedule!r} gave {rs}; need {spec.depth} values >= 0")
    _check_schedule(spec, cfg, rs)
    positions = caps.positions or fam.positions
    if cfg.position_rule != "mean" and not positions:
        raise ValueError(
            f"position_rule={cfg.position_rule!r} has nothing to place: neither matching "
            f"{cfg.matching!r} nor {type(model).__name__}'s blocks read token positions")
    if positions and spec.grid is None:
        raise ValueError(f"matching {cfg.matching!r} reads token grid positions, and this "
                         f"model's patch embedding has no 2-D grid")
    if fam.positions and caps.reduction == "create":
        raise ValueError(
            f"matching {cfg.matching!r} creates tokens, which have no position, and "
            f"{type(model).__name__}'s blocks read token positions (rotary embeddings)")
    state = ToMeState(config=cfg, r=rs, spec=spec, family=fam.name)
    m_opts = cfg.matching_options()
    check = getattr(match_fn, "check_options", None)
    if check is not None:  # bad plug-in options fail at patch time, not in the first forward
        check(**m_opts)
    mask = ATTENTION.get(cfg.attention)
    feature = FEATURES.get(cfg.feature) if "metric" in caps.uses else None
    combine = COMBINE.get(cfg.combine)
    core = ATTN_IMPL.get(cfg.attn_impl)
    blocks = list(fam.blocks(model))
    for i, blk in enumerate(blocks):
        blk._tome_plan = BlockPlan(
            index=i, r=rs[i], state=state, match=match_fn, match_options=m_opts, mask=mask,
            feature=feature, combine=combine, core=core, head_mean=cfg.head_agg == "mean",
            trace_source=cfg.trace_source,
            stats=frozenset(spec.block_stats[i] if spec.block_stats else spec.stats),
            positions=positions, creates=caps.reduction == "create",
            position_rule=cfg.position_rule)
    fam.install(model, cfg)
    model._tome = state
    model._tome_blocks = blocks
    return model


def apply_tome(model: nn.Module, r: int | list[int] = 16, matching: str = "bipartite",
               schedule: str = "constant", prop_attn: bool = True, trace_source: bool = False,
               **options: Any) -> nn.Module:
    """Patches a model of a supported family in place to merge tokens; returns it.

    The family is found from the model's type (``tome_lab.registry.FAMILIES``: timm's
    ``VisionTransformer`` and EVA, Hugging Face ViT / DINOv2 / CLIP / SigLIP vision models,
    open_clip's image tower; docs/engine.md lists each layout). Calling it again
    reconfigures; :func:`remove_tome` restores the original.

    Args:
        model: a model of a supported family.
        r: tokens merged per block, or an explicit list with one entry per block.
        matching: a matching plug-in name (see ``tome_lab.registry.MATCHING``).
        schedule: a schedule plug-in name (``constant``, ``list``, ``linear``,
            ``decreasing``, ``increasing``, ``flops``, ...).
        prop_attn: proportional attention (True) or plain attention.
        trace_source: record which input patches each output token holds.
        **options: ``distance``, ``feature``, ``head_agg``, ``combine``, ``partition``,
            ``attn_impl``, ``position_rule`` (see :class:`~tome_lab.config.ToMeConfig`) and
            the chosen plug-ins' own options (e.g. ``gflops`` for ``schedule="flops"``,
            ``criterion`` for ``pruning``).

    Raises:
        ValueError: unknown names or bad values.
        TypeError: a model of no supported family, or whose blocks hold something its
            adapter does not understand.
    """
    knobs = {k: options.pop(k) for k in ("distance", "feature", "head_agg", "combine",
                                         "partition", "attn_impl", "position_rule")
             if k in options}
    cfg = ToMeConfig(r=tuple(r) if isinstance(r, list) else r, matching=matching,
                     schedule=schedule, prop_attn=prop_attn, trace_source=trace_source,
                     options=options, **knobs)
    return apply_config(model, cfg)


def remove_tome(model: nn.Module) -> nn.Module:
    """Undoes :func:`apply_tome`: the model computes exactly what its library's code does."""
    if not is_patched(model):
        return model
    fam = FAMILIES.get(model._tome.family)
    fam.remove(model)
    for blk in model.__dict__.get("_tome_blocks", ()):
        blk.__dict__.pop("_tome_plan", None)
    for name in ("_tome", "_tome_blocks"):
        model.__dict__.pop(name, None)
    return model


def tome_state(model: nn.Module) -> ToMeState | None:
    """The :class:`ToMeState` of a patched model (sizes, sources, tokens), or None."""
    return model.__dict__.get("_tome")


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`apply_tome` is in effect on ``model``."""
    return tome_state(model) is not None


__all__ = ["BlockPlan", "Family", "ForwardState", "Relaxation", "ToMeState", "apply_config",
           "apply_tome", "attention_request", "attention_stats", "block_metric", "config_spec",
           "family_of", "finish_forward", "grid_positions", "is_patched", "new_forward",
           "reduce", "remove_tome", "sized_mean", "start_positions", "tome_state", "vit_spec"]
