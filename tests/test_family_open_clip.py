"""open_clip's image tower (tome_lab/families/open_clip.py): nn.MultiheadAttention kept fused.

The float64 reference (tests/test_reference.py) runs each block of an unpatched copy through
:class:`OpenClipLayout`: q, k and v written out from the attention's packed ``in_proj_weight``
and ``in_proj_bias``, its ``out_proj``, LayerScale, the MLP, and the pooled output (class token
or the size-weighted mean of the patch tokens, ``ln_post`` before or after pooling, ``proj``).
Tiny random towers, float64, no network.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import need_extra
from test_reference import Layout, reference_forward

import tome_lab
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.matching import capabilities
from tome_lab.registry import COMBINE, FEATURES, MATCHING, PARTITIONS

# (VisionTransformer keywords); every tower 6 x 6 patches + the class token
MODELS = {
    "tok": dict(),
    "avg_ls": dict(pool_type="avg", ls_init_value=0.5),  # size-weighted mean, LayerScale
    "avg_final_ln": dict(pool_type="avg", final_ln_after_pool=True, no_ln_pre=True),
    "tok_final_ln": dict(final_ln_after_pool=True, ls_init_value=0.5),
}


def _model(key, dtype=torch.float64, **extra):
    need_extra("open_clip", "openclip")
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=48, patch_size=8, width=64, layers=3, heads=4,
                          mlp_ratio=2.0, output_dim=24, **{**MODELS[key], **extra})
    m = m.to(dtype).eval()
    with torch.no_grad():  # visible values for what init leaves at zeros / ones / 0.5
        for n, prm in m.named_parameters():
            if n.endswith(("class_embedding", "positional_embedding")):
                prm.normal_(0, 0.5)
            elif n.endswith("gamma"):
                prm.uniform_(0.5, 1.5)
            elif n.startswith("ln") or ".ln_" in n:
                prm.uniform_(0.5, 1.5) if n.endswith("weight") else prm.normal_(0, 0.1)
            elif n.endswith("bias"):
                prm.normal_(0, 0.1)
    x = torch.randn(2, 3, 48, 48, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return m, x


class OpenClipLayout(Layout):
    """open_clip's VisionTransformer for the reference."""

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.transformer.resblocks)
        self.num_prefix, self.class_token = 1, True
        self.grid = tuple(int(g) for g in model.grid_size)

    def embed(self, img):
        return self.model._embeds(img[None])[0]

    def norm1(self, blk, x):
        return blk.ln_1(x)

    def qkv(self, blk, h, position):
        attn, n = blk.attn, h.shape[0]
        c, heads = attn.embed_dim, attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q, k, v = ((h @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c])
                   .reshape(n, heads, c // heads).transpose(0, 1) for i in range(3))
        return q, k, v

    def out(self, blk, o, h):
        return blk.ls_1(blk.attn.out_proj(o))

    def mlp(self, blk, x):
        return blk.ls_2(blk.mlp(blk.ln_2(x)))

    def head(self, x, size):
        m = self.model
        if not m.final_ln_after_pool:
            x = m.ln_post(x)
        if m.pool_type == "avg":
            w = torch.tensor(size[1:], dtype=x.dtype)
            pooled = (x[1:] * w[:, None]).sum(0) / w.sum()
        else:
            pooled = x[0]
        if m.final_ln_after_pool:
            pooled = m.ln_post(pooled)
        return pooled @ m.proj


def _reference_cases():
    fast = {("tok", 4, True), ("avg_ls", 7, False), ("avg_final_ln", 4, True),
            ("tok_final_ln", 7, True)}
    for key in MODELS:
        for r, prop_attn in ((4, True), (4, False), (7, True), (7, False)):
            case = (key, r, prop_attn)
            yield pytest.param(*case, marks=() if case in fast else pytest.mark.full)


@pytest.mark.parametrize("key,r,prop_attn", list(_reference_cases()))
def test_equals_reference(key, r, prop_attn):
    m, x = _model(key)
    want = reference_forward(OpenClipLayout(m), x, r, prop_attn)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn)
    with torch.no_grad():
        got = patched(x)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("key", ["tok", "avg_ls"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_r0_is_open_clip_and_remove_restores(key, batch_first):
    """r = 0 computes what open_clip computes (its MultiheadAttention may take PyTorch's fast
    path, so float64 rounding apart), with the transformer batch-first or not; remove_tome
    restores it bit for bit."""
    m, x = _model(key)
    if not batch_first:  # open_clip's sequence-first layout: the stack transposes to [N, B, C]
        m.transformer.batch_first = False
        for blk in m.transformer.resblocks:
            blk.attn.batch_first = False
    with torch.no_grad():
        want = m(x)
        tome_lab.apply_tome(m, r=0)
        got = m(x)
        tome_lab.apply_tome(m, r=4)
        merged = m(x)
        tome_lab.remove_tome(m)
        back = m(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(back, want, rtol=0, atol=0)
    assert not torch.allclose(merged, want)
    assert tome_lab.tome_state(m) is None and "forward" not in m.__dict__
    assert type(m.transformer.resblocks[0]).__name__ == "ResidualAttentionBlock"


def test_output_tokens_are_the_merged_ones():
    m, x = _model("avg_ls", output_tokens=True)
    tome_lab.apply_tome(m, r=4)
    with torch.no_grad():
        pooled, tokens = m(x)
    st = tome_lab.tome_state(m)
    assert pooled.shape == (2, 24) and tokens.shape == (2, st.tokens[-1] - 1, 64)


def test_state_dict_untouched():
    plain, _ = _model("avg_ls")
    patched = tome_lab.apply_tome(_model("avg_ls")[0], r=3)
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
    m, x = _model("avg_ls")
    tome_lab.apply_tome(m, r=4, trace_source=True)
    with torch.no_grad():
        want = m(x)
        twin = roundtrip(m)
        got = twin(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert tome_lab.tome_state(twin).config == tome_lab.tome_state(m).config
    assert all(b._tome_plan.state is tome_lab.tome_state(twin) for b in twin._tome_blocks)


def _compiled_equals_eager(key, backend):
    m, x = _model(key, torch.float32)
    tome_lab.apply_tome(m, r=4)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend=backend)
    with torch.no_grad():
        want = m(x)
        tokens = list(tome_lab.tome_state(m).tokens)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert tome_lab.tome_state(m).tokens == tokens


def test_compile_fullgraph_eager():
    _compiled_equals_eager("avg_ls", "eager")


@pytest.mark.full  # inductor compiles
@pytest.mark.parametrize("key", ["tok", "avg_final_ln"])
def test_compile_fullgraph_inductor(key):
    _compiled_equals_eager(key, "inductor")


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("key,options", [
    ("tok", dict(r=4)), ("avg_ls", dict(r=[6, 2, 5], matching="pitome")),
    ("avg_final_ln", dict(r=3, head_agg="concat", attn_impl="bias_channel"))])
def test_flops_equal_fvcore(key, options):
    m, _ = _model(key, torch.float32)
    tome_lab.apply_tome(m, **options)
    st = tome_lab.tome_state(m)
    got = tome_lab.count_flops(m, (3, 48, 48))
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)


def _knobs():
    for reg, key in ((FEATURES, "feature"), (COMBINE, "combine"), (PARTITIONS, "partition")):
        for name in reg.names():
            yield {key: name}
    for d in ("cosine", "dot", "euclidean"):
        yield {"distance": d}
    yield {"head_agg": "concat"}


ZOO = [*({"matching": n} for n in MATCHING.names()), *_knobs()]


@pytest.mark.full  # every matcher and knob on the family
@pytest.mark.parametrize("options", ZOO, ids=lambda o: "-".join(map(str, *o.items())))
def test_zoo(options):
    """Every matcher and knob runs on the tower (class token, size-weighted average pool):
    sizes and sources consistent as in tests/test_zoo.py."""
    m, x = _model("avg_ls", torch.float32)
    caps = capabilities(MATCHING.get(options.get("matching", "bipartite")))
    spec = tome_lab.vit_spec(m)
    n0, rs = spec.num_tokens, [6, 3, 8]
    tome_lab.apply_tome(m, r=rs, trace_source=caps.sources, **options)
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
    torch.testing.assert_close(st.size[:, :1], torch.ones(2, 1, 1))  # the class token alone
    if caps.reduction in ("merge", "create"):
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)))
    if caps.sources and caps.reduction == "merge":
        torch.testing.assert_close(st.source.sum(-1, keepdim=True), st.size)
        assert (st.source.sum(1) == 1).all()


@pytest.mark.parametrize("kw,match", [
    (dict(attentional_pool=True), "attentional pooling"),
    (dict(pool_type="none"), "returns every token"),
    (dict(qk_norm=True), "ResidualAttentionBlock only"),
])
def test_refuses_layouts_it_does_not_understand(kw, match):
    need_extra("open_clip", "openclip")
    from open_clip.transformer import VisionTransformer

    m = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2,
                          mlp_ratio=2.0, output_dim=16, **kw)
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(m, r=2)


def test_refuses_cross_attention_block():
    m, _ = _model("tok")
    m.transformer.resblocks[1].ln_1_kv = torch.nn.LayerNorm(64)
    with pytest.raises(TypeError, match="ln_1_kv"):
        tome_lab.apply_tome(m, r=2)


def test_clip_model_visual_patches():
    """A whole CLIP model's image tower (``model.visual``) is the family's model."""
    open_clip = need_extra("open_clip", "openclip")
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32,
                                                        layers=2, head_width=16),
                          text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2,
                                        layers=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = clip.encode_image(x)
        tome_lab.apply_tome(clip.visual, r=0)
        torch.testing.assert_close(clip.encode_image(x), want, rtol=1e-5, atol=1e-6)
        tome_lab.apply_tome(clip.visual, r=3)
        assert clip.encode_image(x).shape == want.shape
    assert tome_lab.tome_state(clip.visual).family == "openclip"
