"""timm's EVA family (tome_lab/families/eva.py): RoPE ViTs merged with tracked positions.

The float64 reference (tests/test_reference.py) runs each block from an unpatched copy through
:class:`EvaLayout`: q, k, v from the attention's own weights written out, and each unprotected
token's q and k rotated, pair by pair, at the token's reference position (timm's table row at a
grid point; at a fractional one, the angles computed here in float64 from the rope's bands with
``math.sin`` / ``math.cos``). Positions follow the reference's rich bipartite step by the mean
or keep rule. Tiny random models, float64, no network.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import timm
import torch
from test_reference import BlockView, Layout, reference_forward

import tome_lab
from tome_lab.families.eva import rope_embed
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.matching import capabilities
from tome_lab.registry import COMBINE, FEATURES, MATCHING, PARTITIONS

# (constructor, keyword overrides, image side); every grid 6 x 6 (4 x 6 for "wide")
MODELS = {
    # timm's RoPE-Axial ViT (Heo et al.): AttentionRope, 'xy' grid, LayerScale, class token
    "rope_vit": ("vit_small_patch16_rope_224", dict(depth=3, embed_dim=64, num_heads=4), 96),
    # EVA-02: EvaAttention with q / v biases, 'ij' grid rescaled to ref_feat_shape, SwiGLU,
    # average pooling with fc_norm
    "eva02": ("eva02_tiny_patch14_224", dict(depth=3, embed_dim=64, num_heads=4,
                                             num_classes=10, ref_feat_shape=(16, 16)), 84),
    # registers without a class token, rotate_half, qk-norm, scale-norm, a non-square grid
    "wide": ("eva02_tiny_patch14_224", dict(depth=3, embed_dim=64, num_heads=4, num_classes=10,
                                            class_token=False, num_reg_tokens=2,
                                            rope_rotate_half=True, qk_norm=True,
                                            scale_attn_inner=True, ref_feat_shape=None,
                                            init_values=0.5), (56, 84)),
}


def _model(key, dtype=torch.float64):
    name, kw, side = MODELS[key]
    size = side if isinstance(side, tuple) else (side, side)
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, img_size=size, **kw).to(dtype).eval()
    # random init leaves tokens at zeros, norms at ones, LayerScale tiny, biases zero:
    # give them visible values so no branch hides
    with torch.no_grad():
        for n, prm in m.named_parameters():
            if n.endswith(("cls_token", "reg_token", "pos_embed")):
                prm.normal_(0, 0.5)
            elif n.endswith(("gamma_1", "gamma_2")):
                prm.uniform_(0.5, 1.5)
            elif "norm" in n and n.endswith("weight"):
                prm.uniform_(0.5, 1.5)
            elif n.endswith("bias"):
                prm.normal_(0, 0.1)
    images = torch.randn(2, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return m, images


def _rot(x, half):
    """The rotation partner of each channel: interleaved pairs (2i, 2i+1) or halves."""
    if half:
        a, b = x.chunk(2, -1)
        return torch.cat([-b, a], -1)
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


class EvaLayout(Layout):
    """timm's Eva for the reference, rotary at each token's reference position."""

    positions = True

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.blocks)
        self.num_prefix = model.num_prefix_tokens
        self.class_token = model.cls_token is not None
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.table = model.rope.get_embed() if model.rope is not None else None
        self.fractional = 0  # rotations computed off the grid, for the tests to check

    def embed(self, img):
        m = self.model
        x, _ = m._pos_embed(m.patch_embed(img[None]))
        return m.norm_pre(x)[0]

    def norm1(self, blk, x):
        return blk.norm1(x)

    def _angles(self, row, col):
        """(sin, cos) of one fractional position, from the rope's settings, in float64."""
        rope, (rows, cols) = self.model.rope, self.grid
        chans, feat, ref = [row, col], [rows, cols], rope.ref_feat_shape
        if rope.grid_indexing == "xy":
            chans, feat = [col, row], [cols, rows]
            ref = None if ref is None else [ref[1], ref[0]]
        coords = [(c + rope.grid_offset) * (1.0 if ref is None else r_ / f)
                  for c, f, r_ in zip(chans, feat, ref or feat, strict=True)]
        angles = [c * float(b) for c in coords for b in rope.bands]
        sin = [math.sin(a) for a in angles]
        cos = [math.cos(a) for a in angles]
        if rope.rotate_half:
            sin, cos = sin + sin, cos + cos
        else:
            sin = [s for s in sin for _ in (0, 1)]
            cos = [c for c in cos for _ in (0, 1)]
        return torch.tensor(sin, dtype=torch.float64), torch.tensor(cos, dtype=torch.float64)

    def _rotary(self, position):
        rows, cols = self.grid
        d = self.table.shape[-1] // 2
        if float(position[0]).is_integer() and float(position[1]).is_integer():
            row = self.table[int(position[0]) * cols + int(position[1])]
            return row[:d], row[d:]
        self.fractional += 1
        return self._angles(*position)

    def qkv(self, blk, h, position):
        attn, n = blk.attn, h.shape[0]
        heads, d = attn.num_heads, attn.head_dim
        width = heads * d
        if attn.qkv is not None:
            w = attn.qkv.weight
            if getattr(attn, "q_bias", None) is not None:
                b = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
            else:
                b = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * width)
            out = h @ w.T + b
            parts = [out[:, i * width:(i + 1) * width] for i in range(3)]
        else:
            parts = [attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)]
        q, k, v = (t.reshape(n, heads, d).transpose(0, 1) for t in parts)  # (H, N, d)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if self.table is None:
            return q, k, v
        q, k = q.clone(), k.clone()
        for j in range(self.num_prefix, n):  # prefix tokens are never rotated
            sin, cos = self._rotary(position[j])
            for t in (q, k):
                t[:, j] = t[:, j] * cos + _rot(t[:, j], attn.rotate_half) * sin
        return q, k, v

    def out(self, blk, o, h):
        attn = blk.attn
        o = attn.norm(o)
        if attn.gate is not None:
            o = o * torch.sigmoid(attn.gate(h))
        o = attn.proj(o)
        return o * blk.gamma_1 if blk.gamma_1 is not None else o

    def mlp(self, blk, x):
        y = blk.mlp(blk.norm2(x))
        return y * blk.gamma_2 if blk.gamma_2 is not None else y

    def head(self, x, size):
        m, p = self.model, self.num_prefix
        x = m.norm(x)
        if m.global_pool == "avg":
            w = torch.tensor(size[p:], dtype=x.dtype)
            x = (x[p:] * w[:, None]).sum(0) / w.sum()
        elif m.global_pool == "token":
            x = x[0]
        return m.head(m.fc_norm(x))


def bipartite_step(view: BlockView):
    """ToMe's Alg. 1 on one image (alternate A / B, prefix protected, the r best edges,
    size-weighted average, the paper's order), with each output token's group, its destination
    listed first (the ``keep`` rule's position)."""
    tokens, size, p, n = view.tokens, view.size, view.num_prefix, len(view.tokens)
    r = min(view.r, (n - p) // 2)
    if r <= 0:
        return tokens, size, [[j] for j in range(n)]
    unit = [view.key[j] / view.key[j].norm() for j in range(n)]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    edges = []
    for pa in a_pos:
        if pa < p:
            continue
        best, partner = -math.inf, None
        for pb in b_pos:
            if pb >= p and float(unit[pa] @ unit[pb]) > best:
                best, partner = float(unit[pa] @ unit[pb]), pb
        edges.append((best, pa, partner))
    edges.sort(key=lambda e: -e[0])
    merged, kept = edges[:r], edges[r:]
    group = {pb: [pb] for pb in b_pos}
    for _, pa, pb in merged:
        group[pb].append(pa)
    kept_a = [pa for _, pa, _ in kept]
    if view.class_token:
        kept_a.sort()
    order = [[j] for j in range(p)] + [[pa] for pa in kept_a] + [group[pb] for pb in b_pos
                                                                  if pb >= p]
    out_tokens = [sum(tokens[g] * size[g] for g in grp) / sum(size[g] for g in grp)
                  for grp in order]
    return out_tokens, [sum(size[g] for g in grp) for grp in order], order


# ------------------------------------------------------------------ (a) the reference


def _reference_cases():
    """Each model at two r, proportional attention on and off, under both rules; three of
    them in the fast tier (every model, both rules, both attentions), the rest in the full."""
    fast = {("rope_vit", 4, True, "mean"), ("eva02", 4, False, "keep"), ("wide", 7, True, "mean")}
    for key in MODELS:
        for r, prop_attn in ((4, True), (4, False), (7, True), (7, False)):
            for rule in ("mean", "keep"):
                case = (key, r, prop_attn, rule)
                yield pytest.param(*case, marks=() if case in fast else pytest.mark.full)


@pytest.mark.parametrize("key,r,prop_attn,rule", list(_reference_cases()))
def test_equals_reference(key, r, prop_attn, rule):
    m, x = _model(key)
    layout = EvaLayout(m)
    want = reference_forward(layout, x, r, prop_attn, step=bipartite_step, rich=True,
                             position_rule=rule)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn,
                                  position_rule=rule)
    with torch.no_grad():
        got = patched(x)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens
    # the mean rule leaves grid points (the path computed off timm's table is exercised); the
    # keep rule never does
    assert (layout.fractional > 0) == (rule == "mean")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_rules_differ_and_positions_are_centroids():
    m, x = _model("rope_vit")
    outs = {}
    for rule in ("mean", "keep"):
        p = tome_lab.apply_tome(copy.deepcopy(m), r=6, position_rule=rule, trace_source=True)
        with torch.no_grad():
            outs[rule] = p(x)
        st = tome_lab.tome_state(p)
        grid = tome_lab.engine.grid_positions(st.spec, x)[:, 1:].to(x.dtype)  # (B, N0 - 1, 2)
        src = st.source[:, 1:, 1:]  # (B, N - 1, N0 - 1) the patches each token holds
        pos = st.positions[-1][:, 1:].to(x.dtype)
        if rule == "mean":
            torch.testing.assert_close(pos, src @ grid / st.size[:, 1:])
        else:  # a grid point the token holds
            assert (pos == pos.round()).all()
            held = (src @ grid).new_zeros(src.shape[:2], dtype=torch.bool)
            for j in range(pos.shape[1]):
                held[:, j] = ((grid == pos[:, j:j + 1]).all(-1) & (src[:, j] > 0)).any(-1)
            assert held.all()
    assert not torch.allclose(outs["mean"], outs["keep"])


@pytest.mark.parametrize("settings", [
    dict(grid_indexing="ij"), dict(grid_indexing="xy"),
    dict(grid_indexing="xy", ref_feat_shape=(16, 12)), dict(ref_feat_shape=(14, 14)),
    dict(rotate_half=True, grid_offset=0.5), dict(in_pixels=True, grid_indexing="xy"),
    dict(in_pixels=True, ref_feat_shape=(8, 8)),
    dict(grid_type="centered", normalize_coords="max")])
def test_rope_embed_is_timms_table_on_the_grid(settings):
    """The adapter's closed form at every grid point of a non-square grid equals timm's table,
    for each rope setting the formula handles. timm tabulates in float32, and pixel bands reach
    angles of ~350 rad (an ulp ~3e-5); a wrong coordinate or layout is off by O(1)."""
    from timm.layers import RotaryEmbeddingCat

    grid = (4, 6)
    rope = RotaryEmbeddingCat(dim=16, temperature=100.0, feat_shape=list(grid), **settings)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    pos = torch.stack([rows, cols], -1).reshape(-1, 2)
    got = rope_embed(rope, pos, grid, torch.float64)
    torch.testing.assert_close(got.float(), rope.get_embed(), rtol=0, atol=1e-4)


# ------------------------------------------------------------------ (b) (h) r = 0, remove


@pytest.mark.parametrize("key", [
    "rope_vit", "wide", pytest.param("eva02", marks=pytest.mark.full)])
def test_r0_is_timm_and_remove_restores(key):
    m, x = _model(key)
    with torch.no_grad():
        want = m(x)
        tome_lab.apply_tome(m, r=0)
        got = m(x)
        tome_lab.apply_tome(m, r=4, position_rule="keep")
        merged = m(x)
        tome_lab.remove_tome(m)
        back = m(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # bit for bit
    torch.testing.assert_close(back, want, rtol=0, atol=0)
    assert not torch.allclose(merged, want)
    assert tome_lab.tome_state(m) is None and "forward" not in m.__dict__
    assert type(m.blocks[0]).__name__ == "EvaBlock"


# ------------------------------------------------------------------ (c) (e) weights, saving


def test_state_dict_untouched():
    plain, _ = _model("eva02")
    patched = tome_lab.apply_tome(_model("eva02")[0], r=3)
    a, b = plain.state_dict(), patched.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    patched.load_state_dict(a, strict=True)


def _torch_roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("roundtrip", [
    pytest.param(copy.deepcopy, marks=pytest.mark.full),
    pytest.param(lambda m: pickle.loads(pickle.dumps(m)), marks=pytest.mark.full),
    _torch_roundtrip], ids=["deepcopy", "pickle", "torch_save"])
def test_roundtrips(roundtrip):
    m, x = _model("rope_vit")
    tome_lab.apply_tome(m, r=4, trace_source=True)
    with torch.no_grad():
        want = m(x)
        twin = roundtrip(m)
        got = twin(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert tome_lab.tome_state(twin).config == tome_lab.tome_state(m).config
    assert all(b._tome_plan.state is tome_lab.tome_state(twin) for b in twin._tome_blocks)


# ------------------------------------------------------------------ (d) compile


def _compiled_equals_eager(key, backend, **options):
    m, x = _model(key, torch.float32)
    tome_lab.apply_tome(m, r=4, **options)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend=backend)
    with torch.no_grad():
        want = m(x)
        tokens = list(tome_lab.tome_state(m).tokens)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert tome_lab.tome_state(m).tokens == tokens


@pytest.mark.parametrize("rule", ["mean", pytest.param("keep", marks=pytest.mark.full)])
def test_compile_fullgraph_eager(rule):
    _compiled_equals_eager("rope_vit", "eager", position_rule=rule)


@pytest.mark.full  # inductor compiles
@pytest.mark.parametrize("key", ["rope_vit", "eva02"])
def test_compile_fullgraph_inductor(key):
    _compiled_equals_eager(key, "inductor")


# ------------------------------------------------------------------ (f) FLOPs


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("key,options", [
    ("rope_vit", dict(r=4)), ("eva02", dict(r=[6, 2, 5], matching="pitome")),
    ("wide", dict(r=3, head_agg="concat"))])
def test_flops_equal_fvcore(key, options):
    m, _ = _model(key, torch.float32)
    tome_lab.apply_tome(m, **options)
    st = tome_lab.tome_state(m)
    side = MODELS[key][2]
    size = side if isinstance(side, tuple) else (side, side)
    got = tome_lab.count_flops(m, (3, *size))
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)


# ------------------------------------------------------------------ (g) the zoo


def _knobs():
    for reg, key in ((FEATURES, "feature"), (COMBINE, "combine"), (PARTITIONS, "partition")):
        for name in reg.names():
            yield {key: name}
    for d in ("cosine", "dot", "euclidean"):
        yield {"distance": d}
    yield {"head_agg": "concat"}


ZOO = [*({"matching": n} for n in MATCHING.names()), *_knobs()]


@pytest.mark.full  # every matcher and knob on the family
@pytest.mark.parametrize("rule", ["mean", "keep"])
@pytest.mark.parametrize("options", ZOO, ids=lambda o: "-".join(map(str, *o.items())))
def test_zoo(options, rule):
    """Every matcher and knob runs with rotary positions tracked (sizes, sources and positions
    consistent), or is refused at configuration: matchers that create tokens (a new token has
    no position to rotate at), and the keep rule with a matcher whose groups have no
    destination."""
    m, x = _model("rope_vit", torch.float32)
    caps = capabilities(MATCHING.get(options.get("matching", "bipartite")))
    spec = tome_lab.vit_spec(m)
    p, n0, rs = spec.num_prefix, spec.num_tokens, [6, 3, 8]
    if rule == "keep" and "keep" not in caps.uses:  # no destination to take the place of
        with pytest.raises(ValueError, match="position_rule='keep' needs a matcher"):
            tome_lab.apply_tome(m, r=rs, position_rule=rule, **options)
        return
    if caps.reduction == "create":
        with pytest.raises(ValueError, match="creates tokens"):
            tome_lab.apply_tome(m, r=rs, position_rule=rule, **options)
        return
    tome_lab.apply_tome(m, r=rs, trace_source=caps.sources, position_rule=rule, **options)
    with torch.no_grad():
        torch.manual_seed(0)
        y = m(x)
        torch.manual_seed(0)
        again = m(x)
    st = tome_lab.tome_state(m)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, again, rtol=0, atol=0)
    if options.get("matching") == "none":
        assert st.tokens == [n0] * 3
        return
    assert st.tokens == tokens_per_layer(st.spec, rs)
    pos = st.positions[-1]
    assert pos.shape[:2] == st.size.shape[:2]
    if not caps.sources:
        return
    src = st.source[:, p:, p:].float()
    grid = tome_lab.engine.grid_positions(st.spec, x)[:, p:]
    held = src.sum(-1, keepdim=True)
    real = held[..., 0] > 0  # padded rows (ats) hold nothing
    if rule == "mean" and caps.reduction == "merge":  # the centroid of the patches held
        want = src @ grid / held.clamp(min=1)
        torch.testing.assert_close(pos[:, p:][real], want[real], rtol=1e-5, atol=1e-5)
    else:  # a grid point inside the box of the patches the token holds
        lo = torch.where(src[..., None] > 0, grid[:, None], torch.inf).amin(2)
        hi = torch.where(src[..., None] > 0, grid[:, None], -torch.inf).amax(2)
        inside = (pos[:, p:] >= lo - 1e-5) & (pos[:, p:] <= hi + 1e-5)
        assert inside.all(-1)[real].all()


# ------------------------------------------------------------------ refusals


def _eva(**kw):
    from timm.models.eva import Eva

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4,
                use_rot_pos_emb=True, use_abs_pos_emb=False)
    args.update(kw)
    return Eva(**args).eval()


@pytest.mark.parametrize("kw,match", [
    (dict(global_pool="map"), "pools with attention"),
    (dict(use_post_norm=True), "pre-norm EvaBlock"),
    (dict(rope_type="mixed"), "rope_type='mixed'"),
    (dict(rope_type="dinov3"), "RotaryEmbeddingCat"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
    (dict(patch_drop_rate=0.5), "patch_drop_rate"),
    (dict(rope_shift_coords=0.5), "augments coordinates"),
    (dict(attn_type="rope", qkv_fused=False, num_kv_heads=1), "grouped-query"),
])
def test_refuses_layouts_it_does_not_understand(kw, match):
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(_eva(**kw), r=2)


def test_refuses_token_creating_matchers():
    with pytest.raises(ValueError, match="creates tokens"):
        tome_lab.apply_tome(_eva(), r=2, matching="dct")


def test_rope_free_eva_and_separate_qkv_run():
    """Without RoPE (absolute positions) and with q / k / v projections apart, r = 0 is exact."""
    for kw in (dict(use_rot_pos_emb=False, use_abs_pos_emb=True), dict(qkv_fused=False)):
        torch.manual_seed(0)
        m, x = _eva(**kw), torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            want = m(x)
            tome_lab.apply_tome(m, r=0)
            torch.testing.assert_close(m(x), want, rtol=0, atol=0)
            tome_lab.apply_tome(m, r=3)
            assert tome_lab.tome_state(m) is not None and m(x).shape == want.shape
