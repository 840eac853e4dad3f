"""What the Hugging Face transformers adapters share: one pre-norm block, its attention, the
model forward and the FLOP terms, written with the library's own submodules.

Each family file (``hf_vit``, ``hf_dinov2``, ``hf_clip``, ``hf_siglip``) subclasses
:class:`HFFamily` with the names of its block's submodules (:class:`Names`), its classes, how
its tokens enter the first block and how its output is made from the last ones. The patched
model never calls a block's or an attention module's own ``forward``: the model's ``forward``
(an instance attribute, a ``functools.partial`` of :func:`_forward`, so the model pickles)
runs each block as :func:`block_forward`: the block's norm, its q / k / v projections, the
engine's attention core (``plan.core``: ``F.scaled_dot_product_attention``, with proportional
attention's log size as its bias), the output projection, LayerScale and dropout as the
library has them, the engine's merge (:func:`tome_lab.engine.reduce`) after the attention
residual, then the MLP branch. The library classes are checked at patch time (exact types of
model, embeddings, blocks and attention; their children; the attention implementation; the
scale) and anything else raises ``TypeError``.

Layouts checked against transformers 5.x (``ViTModel``, ``Dinov2Model``,
``Dinov2WithRegistersModel``, ``CLIPVisionModel``, ``SiglipVisionModel`` and their image
classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

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
    start_positions,
)
from tome_lab.flops import ViTSpec, token_flops

# attention implementations whose math the engine's core reproduces (softmax(q k^T / sqrt(d)) v);
# flash / flex / paged kernels are other code paths a patched model would silently replace
ATTN_IMPLS = ("eager", "sdpa")
# per-call arguments a patched forward refuses unless left at their default (None / False):
# they ask for per-layer tensors over a token set that merging changes, or a different input
_REFUSED_ARGS = ("output_attentions", "output_hidden_states", "interpolate_pos_encoding",
                 "bool_masked_pos", "attention_mask", "head_mask")


@dataclass(frozen=True)
class Names:
    """The attribute names of one family's block and attention module.

    Attributes:
        norm1: the attention branch's norm. attn: the attention module. out: its output
        projection. norm2: the MLP branch's norm. mlp: the MLP. ls1 / ls2: LayerScale after
        each branch (None: none). drop1 / drop2: residual dropout or drop-path after each
        branch (None: none). scale: the attention's scale attribute. dropout: its
        attention-dropout probability attribute. heads: its head-count attribute.
    """

    norm1: str
    attn: str
    out: str
    norm2: str
    mlp: str
    ls1: str | None = None
    ls2: str | None = None
    drop1: str | None = None
    drop2: str | None = None
    scale: str = "scaling"
    dropout: str = "attention_dropout"
    heads: str = "num_attention_heads"

    def block_children(self) -> set[str]:
        return {n for n in (self.norm1, self.attn, self.norm2, self.mlp, self.ls1, self.ls2,
                            self.drop1, self.drop2) if n is not None}


ATTN_CHILDREN = ("q_proj", "k_proj", "v_proj")


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


# ------------------------------------------------------------------ inside a forward


def attention(names: Names, attn: nn.Module, h: Tensor, mask: Tensor | None,
              core: Any) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The library's attention on ``h`` ([B, N, C]) with the engine's ``core`` and the
    block's proportional bias ``mask`` ([B, 1, 1, N] or None); returns ([B, N, C], per-head
    (q, k, v) each [B, H, N, d])."""
    B, N, _ = h.shape
    heads = getattr(attn, names.heads)
    q = attn.q_proj(h).view(B, N, heads, -1).transpose(1, 2)  # (B, H, N, d)
    k = attn.k_proj(h).view(B, N, heads, -1).transpose(1, 2)
    v = attn.v_proj(h).view(B, N, heads, -1).transpose(1, 2)
    p = getattr(attn, names.dropout) if attn.training else 0.0
    o = core(q, k, v, mask, getattr(attn, names.scale), p)  # (B, H, N, d)
    o = o.transpose(1, 2).reshape(B, N, -1)
    return getattr(attn, names.out)(o), (q, k, v)


def _apply(blk: nn.Module, name: str | None, x: Tensor) -> Tensor:
    return x if name is None else getattr(blk, name)(x)


def block_forward(names: Names, blk: nn.Module, x: Tensor, tome: ForwardState) -> Tensor:
    """One pre-norm block with the engine's merge between the attention residual and the MLP
    (``x``: [B, N, C] in, [B, N - r, C] out)."""
    plan: BlockPlan = blk._tome_plan
    y, (q, k, v) = attention(names, getattr(blk, names.attn), getattr(blk, names.norm1)(x),
                             tome.masks[plan.index], plan.core)
    y = _apply(blk, names.drop1, _apply(blk, names.ls1, y))
    x_in, x = x, x + y
    del y
    x = reduce(plan, tome, x_in, x, q, k, v)
    del q, k, v, x_in  # the attention buffers go before the MLP allocates its hidden layer
    h = getattr(blk, names.mlp)(getattr(blk, names.norm2)(x))
    return x + _apply(blk, names.drop2, _apply(blk, names.ls2, h))


def run_blocks(fam: HFFamily, model: nn.Module, x: Tensor, tome: ForwardState) -> Tensor:
    """The blocks of ``model`` on the tokens ``x`` entering the first one."""
    start_positions(model, tome, x)
    for blk in model._tome_blocks:
        if getattr(blk, "gradient_checkpointing", False) and blk.training \
                and torch.is_grad_enabled():
            x = checkpoint(block_forward, fam.names, blk, x, tome, use_reentrant=False)
        else:
            x = block_forward(fam.names, blk, x, tome)
    return x


def check_call(model: nn.Module, pixel_values: Tensor | None, kwargs: dict[str, Any]) -> Tensor:
    """Refuses per-call arguments a patched model cannot honour; returns ``pixel_values``."""
    for name, value in kwargs.items():
        if name not in _REFUSED_ARGS:
            raise TypeError(f"a ToMe-patched {type(model).__name__} takes no argument {name!r}")
        if value is not None and value is not False:
            raise ValueError(
                f"a ToMe-patched {type(model).__name__} takes no {name}={value!r}: merging "
                f"changes the token set (and count) that it refers to; remove_tome first")
    if pixel_values is None:
        raise ValueError("pixel_values is required")
    rows, cols = model._tome.spec.grid
    size = model._tome_image_size
    if tuple(pixel_values.shape[-2:]) != size:
        raise ValueError(f"a ToMe-patched {type(model).__name__} takes {size[0]}x{size[1]} "
                         f"images (its {rows}x{cols} patch grid), got "
                         f"{tuple(pixel_values.shape[-2:])}")
    return pixel_values


def _forward(fam: HFFamily, model: nn.Module, pixel_values: Tensor | None = None,
             labels: Tensor | None = None, return_dict: bool | None = None,
             **kwargs: Any) -> Any:
    """The patched ``forward``: the library's embeddings, the blocks with merging, then the
    family's own output (its ModelOutput type), from one :class:`ForwardState`."""
    pixel_values = check_call(model, pixel_values, kwargs)
    tome = new_forward(model)
    base = fam.base(model)
    x = fam.embed(base, pixel_values.to(fam.input_dtype(base)))
    x = run_blocks(fam, model, x, tome)
    out = fam.output(model, base, x, tome.sizes[-1], labels)
    finish_forward(model, tome)
    if return_dict is False:
        return out.to_tuple()
    return out


# ------------------------------------------------------------------ the adapter


class HFFamily(Family):
    """A Hugging Face vision transformer family: pre-norm blocks of q / k / v / output
    projections, behind the hooks below."""

    names: ClassVar[Names]

    # -------- what each family says
    def classes(self) -> dict[str, tuple[type, ...]]:
        """``model`` (the accepted model classes), ``embed``, ``block``, ``attn`` (their
        exact classes)."""
        raise NotImplementedError

    def base(self, model: nn.Module) -> nn.Module:
        """The vision model (embeddings, encoder) inside ``model`` (itself if no wrapper)."""
        raise NotImplementedError

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        raise NotImplementedError

    def embed(self, base: nn.Module, pixel_values: Tensor) -> Tensor:
        """[B, N0, C] tokens entering the first block."""
        raise NotImplementedError

    def output(self, model: nn.Module, base: nn.Module, x: Tensor, size: Tensor | None,
               labels: Tensor | None) -> Any:
        """The library's output type from the last block's [B, N, C] tokens and sizes."""
        raise NotImplementedError

    def prefix(self, base: nn.Module) -> tuple[int, bool]:
        """(protected prefix tokens, whether token 0 is a class token)."""
        raise NotImplementedError

    def patch_conv(self, base: nn.Module) -> nn.Conv2d:
        raise NotImplementedError

    def check_more(self, model: nn.Module, base: nn.Module) -> None:
        """Family-specific checks (pooling heads, ...)."""

    def head_flops(self, model: nn.Module, base: nn.Module) -> tuple[int, int, int]:
        """(per-token FLOPs before the blocks, per-token FLOPs after them, fixed FLOPs of the
        pooling and heads)."""
        raise NotImplementedError

    def input_dtype(self, base: nn.Module) -> torch.dtype:
        return self.patch_conv(base).weight.dtype

    # -------- the engine's interface
    def accepts(self, model: nn.Module) -> bool:
        if not transformers_available():
            return False
        return isinstance(model, self.classes()["model"])

    def check(self, model: nn.Module) -> None:
        """Raises ``TypeError`` for anything this adapter does not understand."""
        cls = self.classes()
        name = type(model).__name__
        if type(model) not in cls["model"]:
            raise TypeError(f"{self.describe} only; got {name}")
        base = self.base(model)
        config = base.config
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ATTN_IMPLS:
            raise TypeError(
                f"{name} uses attn_implementation={impl!r}; ToMe reproduces "
                f"{' / '.join(ATTN_IMPLS)} attention only (its core is SDPA with proportional "
                f"attention's bias): load the model with attn_implementation='sdpa'")
        for flag in ("output_attentions", "output_hidden_states"):
            if getattr(config, flag, False):
                raise TypeError(f"{name}'s config sets {flag}=True; a ToMe-patched model "
                                f"returns no per-layer tensors (merging changes their tokens)")
        if type(base.embeddings) not in cls["embed"]:
            raise TypeError(f"{name}'s embeddings are a {type(base.embeddings).__name__}; "
                            f"ToMe knows {' / '.join(c.__name__ for c in cls['embed'])}")
        want = self.names.block_children()
        for i, blk in enumerate(self.layers(base)):
            if type(blk) not in cls["block"]:
                raise TypeError(f"block {i} of {name} is a {type(blk).__name__}; ToMe patches "
                                f"{' / '.join(c.__name__ for c in cls['block'])} only")
            kids = {n for n, _ in blk.named_children()}
            if kids - want:
                raise TypeError(f"block {i} of {name} holds submodules ToMe does not "
                                f"understand: {sorted(kids - want)}")
            attn = getattr(blk, self.names.attn)
            if type(attn) not in cls["attn"]:
                raise TypeError(f"block {i} attention of {name} is a {type(attn).__name__}; "
                                f"ToMe knows {' / '.join(c.__name__ for c in cls['attn'])}")
            kids = {n for n, _ in attn.named_children()}
            if kids != {*ATTN_CHILDREN, self.names.out}:
                raise TypeError(f"block {i} attention of {name} holds submodules "
                                f"{sorted(kids)}; ToMe knows q/k/v/{self.names.out} only")
            head_dim = attn.q_proj.out_features // getattr(attn, self.names.heads)
            if getattr(attn, self.names.scale) != head_dim ** -0.5 or getattr(
                    attn, "is_causal", False):
                raise TypeError(f"block {i} attention of {name} is causal or scales its logits "
                                f"by other than 1/sqrt(head_dim); ToMe's core does not")
        self.check_more(model, base)

    def spec(self, model: nn.Module) -> ViTSpec:
        self.check(model)
        base = self.base(model)
        config = base.config
        (h, w), (ph, pw) = pair(config.image_size), pair(config.patch_size)
        rows, cols = h // ph, w // pw
        num_prefix, class_token = self.prefix(base)
        num_tokens = rows * cols + num_prefix
        blk = self.layers(base)[0]
        attn = getattr(blk, self.names.attn)
        heads = getattr(attn, self.names.heads)
        attn_dim = attn.q_proj.out_features
        pre, final, fixed = self.head_flops(model, base)
        conv = self.patch_conv(base)
        return ViTSpec(
            depth=len(self.layers(base)),
            num_tokens=num_tokens,
            num_prefix=num_prefix,
            class_token=class_token,
            attn_dim=attn_dim,
            head_dim=attn_dim // heads,
            embed_dim=config.hidden_size,
            attn_token_flops=token_flops(getattr(blk, self.names.norm1)) + token_flops(attn),
            mlp_token_flops=(token_flops(getattr(blk, self.names.norm2))
                             + token_flops(getattr(blk, self.names.mlp))),
            final_token_flops=final,
            # fvcore counts a convolution's weight per output position, not its bias
            fixed_flops=rows * cols * conv.weight.numel() + pre * num_tokens + fixed,
            grid=(rows, cols),
        )

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(self.layers(self.base(model)))

    def install(self, model: nn.Module, cfg: ToMeConfig) -> None:
        config = self.base(model).config
        model.__dict__["_tome_image_size"] = pair(config.image_size)
        # a partial of a module-level function (not a bound method) pickles
        model.forward = partial(_forward, self, model)

    def remove(self, model: nn.Module) -> None:
        for name in ("forward", "_tome_image_size"):
            model.__dict__.pop(name, None)


def sized_attention_pool(mha: nn.MultiheadAttention, probe: Tensor, x: Tensor,
                         size: Tensor | None) -> Tensor:
    """``nn.MultiheadAttention(probe, x, x)`` (batch first, packed in-projection) with the
    keys' log size added to the logits: proportional attention, which equals attending over
    the unmerged duplicates of each token. ``probe`` [B, Q, C], ``x`` [B, N, C], ``size``
    [B, N, 1] or None (all ones); returns [B, Q, C]."""
    B, N, C = x.shape
    heads = mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = F.linear(probe, wq, bq).view(B, -1, heads, C // heads).transpose(1, 2)  # (B, H, Q, d)
    k = F.linear(x, wk, bk).view(B, N, heads, C // heads).transpose(1, 2)  # (B, H, N, d)
    v = F.linear(x, wv, bv).view(B, N, heads, C // heads).transpose(1, 2)
    bias = None if size is None else size.log().to(q.dtype).reshape(B, 1, 1, N)
    p = mha.dropout if mha.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, Q, d)
    return mha.out_proj(o.transpose(1, 2).reshape(B, -1, C))


def check_mha(mha: nn.Module, where: str) -> None:
    """The ``nn.MultiheadAttention`` layouts :func:`sized_attention_pool` reproduces."""
    ok = (type(mha) is nn.MultiheadAttention and mha.batch_first and mha._qkv_same_embed_dim
          and mha.in_proj_bias is not None and mha.bias_k is None and mha.bias_v is None
          and not mha.add_zero_attn and isinstance(mha.out_proj, nn.Linear))
    if not ok:
        raise TypeError(f"{where} is not a batch-first nn.MultiheadAttention with a packed, "
                        f"biased in-projection and no bias_k / bias_v / zero attention; ToMe's "
                        f"size-aware pooling does not reproduce it")


__all__ = ["ATTN_IMPLS", "HFFamily", "Names", "attention", "block_forward", "check_mha",
           "pair", "sized_attention_pool", "token_flops", "transformers_available"]
