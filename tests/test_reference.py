"""apply_tome end to end against a naive float64 ToMe ViT written from the paper's equations.

The reference below uses timm's modules only for what merging does not touch (patch and
position embedding, LayerNorms, the qkv / projection / MLP linears, LayerScale, the heads);
everything ToMe changes is written out per image with plain loops over tokens: the attention
softmax(q k^T / sqrt(d) + log s), keys averaged over heads, cosine similarity, the alternate
A/B split including prefix tokens, the r best edges, the size-weighted merge after the
attention residual and before the MLP, and size-weighted average pooling.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

import tome_lab


def _merge(tokens, size, key, r, num_prefix, class_token):
    """One bipartite soft matching step on one image (Bolya et al., Alg. 1), with loops.

    Args:
        tokens: list of [C] tokens. size: list of floats. key: [N, d] head-averaged keys.
        r: tokens to merge. num_prefix: protected tokens. class_token: whether token 0 is one.

    Returns:
        (tokens, size) after merging r tokens.
    """
    n = len(tokens)
    r = min(r, (n - num_prefix) // 2)
    if r <= 0:
        return tokens, size
    unit = [key[i] / key[i].norm() for i in range(n)]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    edges = []  # (score, position in A's sequence, partner position in the sequence)
    for pa in a_pos:
        if pa < num_prefix:  # a protected token is never a source
            continue
        best, partner = -math.inf, None
        for pb in b_pos:
            if pb < num_prefix:  # ... nor a destination
                continue
            s = float(unit[pa] @ unit[pb])
            if s > best:
                best, partner = s, pb
        edges.append((best, pa, partner))
    edges.sort(key=lambda e: -e[0])
    merged, kept = edges[:r], edges[r:]
    dst_sum = {pb: tokens[pb] * size[pb] for pb in b_pos}
    dst_size = {pb: size[pb] for pb in b_pos}
    for _, pa, pb in merged:
        dst_sum[pb] = dst_sum[pb] + tokens[pa] * size[pa]
        dst_size[pb] += size[pa]
    # the paper's code restores sequence order of the kept A tokens only with a class token
    kept_a = [pa for _, pa, _ in kept]
    if class_token:
        kept_a.sort()
    order = list(range(num_prefix)) + kept_a + [pb for pb in b_pos if pb >= num_prefix]
    new_tokens, new_size = [], []
    for pos in order:
        if pos in dst_sum:
            new_tokens.append(dst_sum[pos] / dst_size[pos])
            new_size.append(dst_size[pos])
        else:
            new_tokens.append(tokens[pos])
            new_size.append(size[pos])
    return new_tokens, new_size


def _attention(layout, blk, h, size, prop_attn, seen=None, position=None):
    """A block's attention, proportional attention written out per head; h is [N, C]. The
    layout gives the per-head q, k, v ([H, N, d], after any q/k norm or rotary embedding) and
    the output projection. ``seen`` (a dict), when given, receives q, k, v and probabilities."""
    q, k, v = layout.qkv(blk, h, position)  # (H, N, d)
    heads, d = q.shape[0], q.shape[-1]
    scale = layout.scale(blk, d)
    log_size = torch.tensor(size, dtype=h.dtype).log()
    outs = []
    for hd in range(heads):  # softmax(q k^T * scale + log s), one head at a time
        logits = q[hd] @ k[hd].T * scale + (log_size[None, :] if prop_attn else 0.0)
        w = (logits - logits.amax(-1, keepdim=True)).exp()
        w = w / w.sum(-1, keepdim=True)
        outs.append(w @ v[hd])
        if seen is not None:
            seen.setdefault("probs", []).append(w)
    if seen is not None:
        seen.update(q=q, k=k, v=v, probs=torch.stack(seen["probs"]))  # probs (H, N, N)
    out = torch.cat(outs, dim=-1)  # (N, H * d)
    return layout.out(blk, out, h), k.mean(0)  # (N, C), (N, d) keys averaged over heads


class Layout:
    """What the reference needs of a model family, per image and in float64: the tokens
    entering the first block, each block's pieces, and the model's output from its last
    tokens and their sizes. A family's test subclasses it (``TimmLayout`` is timm's ViT).

    Attributes: ``blocks`` (the block modules), ``num_prefix``, ``class_token``, ``grid``
    ((rows, cols) of the patch grid), ``positions`` (whether blocks read token positions)."""

    positions = False

    def embed(self, img):
        """[N0, C] tokens entering the first block for one [3, H, W] image."""
        raise NotImplementedError

    def norm1(self, blk, x):
        """[N, C] the attention branch's input."""
        raise NotImplementedError

    def qkv(self, blk, h, position):
        """(q, k, v), each [H, N, d], from the branch input ``h``; ``position`` lists each
        token's (row, col) ((-1, -1) for the prefix) for a family whose blocks read it."""
        raise NotImplementedError

    def scale(self, blk, d):
        """The logits' scale (1 / sqrt(d) unless the family says otherwise)."""
        return 1.0 / math.sqrt(d)

    def out(self, blk, o, h):
        """[N, C] the attention branch's output (projection, LayerScale) from the heads'
        concatenated output ``o`` ([N, H * d]) and the branch input ``h``."""
        raise NotImplementedError

    def mlp(self, blk, x):
        """[N, C] the MLP branch (norm, MLP, LayerScale), added to ``x`` by the reference."""
        raise NotImplementedError

    def head(self, x, size):
        """The model's output for one image from its last [N, C] tokens and their sizes."""
        raise NotImplementedError


class TimmLayout(Layout):
    """timm's VisionTransformer."""

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.blocks)
        self.num_prefix = model.num_prefix_tokens
        self.class_token = model.cls_token is not None
        self.grid = _grid_of(model)

    def embed(self, img):
        m = self.model
        return m.norm_pre(m._pos_embed(m.patch_embed(img[None])))[0]

    def norm1(self, blk, x):
        return blk.norm1(x)

    def qkv(self, blk, h, position):
        attn = blk.attn
        n = h.shape[0]
        qkv = attn.qkv(h).reshape(n, 3, attn.num_heads, attn.head_dim)
        q = attn.q_norm(qkv[:, 0].transpose(0, 1))  # (H, N, d)
        k = attn.k_norm(qkv[:, 1].transpose(0, 1))
        return q, k, qkv[:, 2].transpose(0, 1)

    def out(self, blk, o, h):
        attn = blk.attn
        o = attn.norm(o)
        if attn.gate is not None:
            o = o * torch.sigmoid(attn.gate(h))
        return blk.ls1(attn.proj(o))

    def mlp(self, blk, x):
        return blk.ls2(blk.mlp(blk.norm2(x)))

    def head(self, x, size):
        m, p = self.model, self.num_prefix
        x = m.norm(x)
        if m.global_pool == "avg":
            w = torch.tensor(size[p:], dtype=x.dtype)
            pooled = (x[p:] * w[:, None]).sum(0) / w.sum()
            return m.head(m.fc_norm(pooled))
        return m.forward_head(x[None])[0]


def _truncate(tokens, size, key, r, num_prefix, class_token):
    """The ``truncate`` matcher's step: the last r tokens are dropped, whatever they hold."""
    r = min(r, (len(tokens) - num_prefix) // 2)
    return tokens[:len(tokens) - r], size[:len(tokens) - r]


class BlockView:
    """What a rich reference step sees of one block of one image (plain attributes):
    ``tokens`` (list of [C], after the attention residual), ``size`` (list of floats),
    ``key`` ([N, d] keys averaged over heads), ``q``, ``k``, ``v`` ([H, N, d]), ``probs``
    ([H, N, N] attention probabilities, log size included when proportional), ``r`` (the
    r asked of the block, before any clamp), ``block``, ``depth``, ``num_prefix``,
    ``class_token``, ``grid`` ((rows, cols)) and ``position`` (list of (row, col) floats,
    (-1, -1) for the prefix, the size-weighted mean of each token's patches).

    A rich step returns ``(tokens, size, groups)``: ``groups[j]`` lists the input positions
    whose tokens output token j holds (None for a step that creates tokens, after which
    positions are no longer tracked)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _grid_of(model):
    rows, cols = model.patch_embed.grid_size
    return int(rows), int(cols)


@torch.no_grad()
def reference_forward(model, images, r, prop_attn=True, step=_merge, rich=False,
                      position_rule="mean"):
    """Outputs of a ToMe model, one image at a time, from an unpatched float64 model: a timm
    ViT or a :class:`Layout` of another family. ``step`` reduces the tokens of a block
    (default: bipartite soft matching). With ``rich``, ``step`` takes a :class:`BlockView`
    and returns ``(tokens, size, groups)``; ``r`` may then be a per-block list. Positions
    follow each group by ``position_rule``: ``mean`` (size-weighted) or ``keep`` (the
    position of the group's first member, which a rich step lists first: the destination)."""
    layout = model if isinstance(model, Layout) else TimmLayout(model)
    p, class_token = layout.num_prefix, layout.class_token
    depth = len(layout.blocks)
    rs = list(r) if isinstance(r, (list, tuple)) else [r] * depth
    out = []
    for img in images:
        x = layout.embed(img)
        tokens, size = list(x), [1.0] * x.shape[0]
        rows, cols = layout.grid
        position = [(-1.0, -1.0)] * p + [(float(i // cols), float(i % cols))
                                         for i in range(rows * cols)]
        for i, blk in enumerate(layout.blocks):
            h = layout.norm1(blk, torch.stack(tokens))
            seen = {} if rich else None
            y, key = _attention(layout, blk, h, size, prop_attn, seen, position)
            x = torch.stack(tokens) + y  # merge after the attention residual
            if rich:
                view = BlockView(tokens=list(x), size=list(size), key=key, r=rs[i], block=i,
                                 depth=depth, num_prefix=p, class_token=class_token,
                                 grid=(rows, cols), position=position, **seen)
                tokens, new_size, groups = step(view)
                if groups is None or position is None:
                    position = None
                elif position_rule == "keep":
                    position = [position[grp[0]] for grp in groups]
                else:
                    position = [tuple(sum(size[g] * position[g][c] for g in grp)
                                      / sum(size[g] for g in grp) for c in (0, 1))
                                for grp in groups]
                size = new_size
            else:
                if layout.positions:
                    raise ValueError("a layout whose blocks read positions needs a rich step")
                tokens, size = step(list(x), list(size), key, r, p, class_token)
            x = torch.stack(tokens)
            x = x + layout.mlp(blk, x)  # ... and before the MLP
            tokens = list(x)
        out.append(layout.head(torch.stack(tokens), size))
    return torch.stack(out)


# (name, overrides, image side): random-initialised, shrunk where the full model is slow
MODELS = {
    "deit_t": ("deit_tiny_patch16_224", dict(depth=6), 224),
    "deit_s_distilled": ("deit_small_distilled_patch16_224", dict(depth=4), 128),
    "avg_no_cls": ("vit_medium_patch16_gap_256",
                   dict(embed_dim=96, num_heads=3, depth=4), 128),
    "registers": ("vit_base_patch16_reg4_gap_256", dict(embed_dim=96, num_heads=3, depth=4), 128),
    "layerscale": ("deit3_small_patch16_224", dict(depth=4), 128),
    "cls_registers": ("vit_small_patch14_reg4_dinov2", dict(depth=4), 98),
    "scale_norm": ("deit_tiny_patch16_224", dict(depth=4, scale_attn_norm=True,
                                                 scale_mlp_norm=True), 128),
    "gated": ("deit_tiny_patch16_224", dict(depth=4), 128),  # gates added in _model
    "qk_norm": ("deit_tiny_patch16_224", dict(depth=4, qk_norm=True), 128),
    # deep enough for a first, a middle and a last stage (zero_tprune's iters="paper")
    "deit_t7": ("deit_tiny_patch16_224", dict(depth=7), 96),
}


def _model(key):
    name, kw, side = MODELS[key]
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, img_size=side, **kw)
    if key == "gated":  # timm's Attention(gated=True) layout; its Block has no switch for it
        for blk in m.blocks:
            blk.attn.gate = torch.nn.Linear(blk.attn.qkv.in_features, blk.attn.attn_dim)
    m = m.double().eval()
    # random init leaves tokens and norms at timm's zeros / ones and LayerScale at 1e-6, which
    # would hide the attention branch from the comparison: give them all visible values
    with torch.no_grad():
        for name_, prm in m.named_parameters():
            if name_.endswith(("cls_token", "reg_token", "dist_token", "pos_embed")):
                prm.normal_(0, 0.5)
            elif name_.endswith("gamma"):
                prm.uniform_(0.5, 1.5)
            elif "norm" in name_ and name_.endswith("weight"):
                prm.uniform_(0.5, 1.5)
            elif name_.endswith("bias"):
                prm.normal_(0, 0.1)
    images = torch.randn(2, 3, side, side, dtype=torch.float64)
    return m, images


def _compare(key, r, prop_attn, **options):
    m, images = _model(key)
    want = reference_forward(m, images, r, prop_attn)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn, **options)
    with torch.no_grad():
        got = patched(images)
    return got, want, tome_lab.tome_state(patched)


def compare_rich(key, r, step, prop_attn=True, **options):
    """A plug-in against its rich-step float64 reference on model ``key``: (patched output,
    reference output, the patched model's state). ``step`` is the method's reference block
    step (``reference_forward(..., rich=True)``); ``options`` go to ``apply_tome``."""
    m, images = _model(key)
    want = reference_forward(m, images, r, prop_attn, step=step, rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn, **options)
    with torch.no_grad():
        got = patched(images)
    return got, want, tome_lab.tome_state(patched)


def _cases(keys, settings, fast):
    """Every key with every setting: the ``fast`` settings in the fast tier, the others in the
    full one (the reference runs one token at a time in Python)."""
    return [pytest.param(key, *setting, marks=() if setting in fast else pytest.mark.full)
            for key in keys for setting in settings]


# each key in the fast tier at (r=8, proportional) and (r=4, plain attention): both r and both
# attentions on every layout; the other two pairs in the full tier
@pytest.mark.parametrize("key,r,prop_attn", _cases(
    ["deit_t", "deit_s_distilled", "avg_no_cls", "registers", "layerscale"],
    [(r, p) for r in (4, 8) for p in (True, False)], fast=[(8, True), (4, False)]))
def test_apply_tome_equals_reference(key, r, prop_attn):
    got, want, st = _compare(key, r, prop_attn)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("key", ["cls_registers", "scale_norm", "gated", "qk_norm"])
def test_other_supported_layouts_equal_reference(key):
    """Class token + registers (the DINOv2-reg layout), scale-norm, gated attention, qk-norm."""
    got, want, st = _compare(key, 6, True)
    assert st.tokens[-1] < st.spec.num_tokens
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("key", ["avg_no_cls", "registers"])
def test_sorted_order_differs_without_class_token(key):
    """Without a class token, the published order and order='sorted' merge different sets."""
    got, want, st = _compare(key, 8, True, order="sorted")
    assert not torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    m, images = _model(key)
    pub = tome_lab.apply_tome(copy.deepcopy(m), r=8, trace_source=True)
    srt = tome_lab.apply_tome(copy.deepcopy(m), r=8, trace_source=True, order="sorted")
    with torch.no_grad():
        pub(images), srt(images)
    # the final groups of patches differ as sets, not only in order
    groups = [{tuple(row.nonzero().flatten().tolist()) for row in tome_lab.tome_state(x).source[0]}
              for x in (pub, srt)]
    assert groups[0] != groups[1]


def test_sorted_order_equals_published_with_class_token():
    got, want, _ = _compare("deit_t", 8, True, order="sorted")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_bad_order_value_error():
    m, _ = _model("deit_t")
    with pytest.raises(ValueError, match="valid: published, sorted"):
        tome_lab.apply_tome(m, r=4, order="bogus")


@pytest.mark.parametrize("key,prop_attn", _cases(
    ["deit_t", "deit_s_distilled", "avg_no_cls", "registers"], [(True,), (False,)],
    fast=[(True,)]))
def test_truncate_equals_reference(key, prop_attn):
    """The cost-floor matcher drops the last r tokens after the attention residual."""
    m, images = _model(key)
    want = reference_forward(m, images, 6, prop_attn, step=_truncate)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=6, prop_attn=prop_attn,
                                  matching="truncate")
    with torch.no_grad():
        got = patched(images)
    assert tome_lab.tome_state(patched).tokens[-1] < tome_lab.tome_state(patched).spec.num_tokens
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    # and it is not the bipartite merge by another name
    assert not torch.allclose(got, reference_forward(m, images, 6, prop_attn), atol=1e-6)
