"""Hugging Face SiglipVisionModel under ToMe (tome_lab/families/hf_siglip.py): no class token,
and a size-aware attention-pooling head (the probe's logits get each key's log size). End to
end against the float64 reference (whose head does the same, written out), the head's
exactness (r=0; duplicates), r=0 parity, remove, state_dict, compile, save and load, exact
FLOPs, the zoo (class-token matchers refused). Tiny random configurations, no network."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import need_extra
from hf_family_checks import (
    ROUNDTRIPS,
    ZOO,
    check_compile,
    check_flops,
    check_r0_and_remove,
    check_reference,
    check_roundtrip,
    check_state_dict,
    check_unknown_type,
    check_zoo,
    images,
    visible,
    zoo_id,
)
from test_reference import Layout

import tome_lab

SIDE = 32  # 8 px patches: a 4 x 4 grid, 16 tokens, none protected


def _model(head=True, **kw):
    need_extra("transformers", "hf")
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=3,
                             num_attention_heads=4, intermediate_size=64, vision_use_head=head,
                             **kw)
    torch.manual_seed(0)
    return visible(SiglipVisionModel(cfg))


def _out(o):
    parts = [o.last_hidden_state.flatten(1)]
    if o.pooler_output is not None:
        parts.insert(0, o.pooler_output)
    return torch.cat(parts, 1)


class HFSiglipLayout(Layout):
    """SiglipVisionModel written out per image; its pooling head's probe attention adds each
    token's log size to the logits, one head at a time."""

    num_prefix, class_token = 0, False

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.encoder.layers)
        self.grid = (SIDE // 8, SIDE // 8)

    def embed(self, img):
        return self.model.embeddings(img[None])[0]

    def norm1(self, blk, x):
        return blk.layer_norm1(x)

    def qkv(self, blk, h, position):
        a = blk.self_attn
        n = h.shape[0]
        return tuple(p(h).reshape(n, a.num_heads, -1).transpose(0, 1)
                     for p in (a.q_proj, a.k_proj, a.v_proj))

    def out(self, blk, o, h):
        return blk.self_attn.out_proj(o)

    def mlp(self, blk, x):
        h = blk.mlp.fc1(blk.layer_norm2(x))
        inner = math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)
        return blk.mlp.fc2(0.5 * h * (1 + torch.tanh(inner)))  # gelu_pytorch_tanh

    def head(self, x, size):
        m = self.model
        seq = m.post_layernorm(x)
        if not m.use_head:
            return seq.flatten()
        mha, heads = m.head.attention, m.head.attention.num_heads
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        q = m.head.probe[0, 0] @ wq.T + bq  # (C,)
        k, v = seq @ wk.T + bk, seq @ wv.T + bv  # (N, C)
        d = q.shape[0] // heads
        log_size = torch.tensor(size, dtype=seq.dtype).log()
        outs = []
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            logits = k[:, sl] @ q[sl] / math.sqrt(d) + log_size  # (N,)
            w = (logits - logits.max()).exp()
            outs.append((w / w.sum()) @ v[:, sl])
        pooled = mha.out_proj(torch.cat(outs))
        pooled = pooled + m.head.mlp(m.head.layernorm(pooled))
        return torch.cat([pooled, seq.flatten()])


@pytest.mark.parametrize("r,prop_attn", [(4, True), (2, False),
                                         pytest.param(4, False, marks=pytest.mark.full),
                                         pytest.param(2, True, marks=pytest.mark.full)])
@pytest.mark.parametrize("head", [True, False], ids=["head", "no_head"])
def test_equals_reference(head, r, prop_attn):
    check_reference(_model(head), HFSiglipLayout, images(SIDE), _out, r, prop_attn)


def test_sized_head_is_the_library_head_at_unit_sizes():
    from tome_lab.families.hf_siglip import sized_head

    head = _model().head
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        want = head(x)
        torch.testing.assert_close(sized_head(head, x, None), want, rtol=1e-12, atol=1e-12)
        ones = torch.ones(3, 7, 1, dtype=torch.float64)
        torch.testing.assert_close(sized_head(head, x, ones), want, rtol=1e-12, atol=1e-12)


def test_sized_head_equals_the_head_over_unmerged_duplicates():
    """A token of size s pools as its s identical copies would: proportional attention."""
    from tome_lab.families.hf_siglip import sized_head

    head = _model().head
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    counts = torch.tensor([3, 1, 2, 1, 4])
    dup = x.repeat_interleave(counts, dim=1)  # (2, 11, C): the unmerged duplicates
    size = counts.to(torch.float64).expand(2, -1)[..., None]
    with torch.no_grad():
        torch.testing.assert_close(sized_head(head, x, size), head(dup), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(head(x), head(dup))  # the plain head would differ


def test_r0_identical_and_remove_restores():
    check_r0_and_remove(_model(), images(SIDE), _out)


def test_no_prefix_every_token_may_merge():
    m = tome_lab.apply_tome(_model(), r=4)
    with torch.no_grad():
        o = m(images(SIDE))
    st = tome_lab.tome_state(m)
    assert st.spec.num_prefix == 0 and not st.spec.class_token and st.tokens == [12, 8, 4]
    assert o.last_hidden_state.shape == (2, 4, 32) and o.pooler_output.shape == (2, 32)


def test_state_dict_untouched():
    check_state_dict(_model)


def test_compile_fullgraph_eager_backend():
    check_compile(_model(), images(SIDE), _out)


@pytest.mark.full  # an inductor compile
def test_compile_fullgraph_inductor():
    check_compile(_model(), images(SIDE), _out, backend="inductor")


@ROUNDTRIPS
def test_save_and_load(roundtrip):
    check_roundtrip(_model(), images(SIDE), _out, roundtrip)


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("head", [True, False], ids=["head", "no_head"])
@pytest.mark.parametrize("r", [0, 4])
def test_flops_exact(head, r):
    m = _model(head)
    # fvcore has no handle for aten::_convolution_mode (a string padding: SigLIP's "valid") and
    # would leave the patch embedding out; an integer padding of 0 is the same convolution
    m.embeddings.patch_embedding.padding = (0, 0)
    check_flops(m, SIDE, "pooler_output" if head else "last_hidden_state", r)


@pytest.mark.full  # the family x zoo matrix
@pytest.mark.parametrize("options", ZOO, ids=zoo_id)
def test_zoo(options):
    check_zoo(_model(), images(SIDE), _out, options)


def test_class_token_matchers_use_their_no_class_token_statistic():
    """EViT reads the class token's attention row where there is one; here it reads the
    attention each token receives (a matcher with no such fallback is refused, test_zoo)."""
    m = tome_lab.apply_tome(_model(), r=2, matching="evit")
    assert tome_lab.tome_state(m).spec.stats == ("received",)
    with torch.no_grad():
        assert torch.isfinite(_out(m(images(SIDE)))).all()


@pytest.mark.parametrize("change,match", [
    (lambda m: m.config.__setattr__("_attn_implementation", "flash_attention_2"),
     "attn_implementation"),
    (lambda m: m.head.add_module("extra", torch.nn.Identity()), "pooling head"),
    (lambda m: m.head.__setattr__("attention", torch.nn.MultiheadAttention(32, 4)),
     "batch-first"),
    (lambda m: m.encoder.layers[0].self_attn.__setattr__("is_causal", True), "causal"),
])
def test_unknown_layouts_type_error(change, match):
    m = _model()
    change(m)
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(m, r=2)


def test_image_classifier_refused():
    need_extra("transformers", "hf")
    from transformers import SiglipConfig, SiglipForImageClassification

    cfg = SiglipConfig(vision_config=dict(image_size=SIDE, patch_size=8, hidden_size=32,
                                          num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64), num_labels=3)
    with pytest.raises(TypeError, match="ToMe patches"):
        tome_lab.apply_tome(SiglipForImageClassification(cfg), r=2)


def test_unknown_model_type_error():
    check_unknown_type()


def test_reference_head_is_size_aware():
    """The reference's hand-written head is not the plain head: merging changes its output
    beyond what the merged tokens alone would (guards the reference itself)."""
    m = _model()
    lay = HFSiglipLayout(copy.deepcopy(m))
    x = torch.randn(5, 32, dtype=torch.float64)
    with torch.no_grad():
        a = lay.head(x, [1.0] * 5)[:32]
        b = lay.head(x, [3.0, 1.0, 1.0, 1.0, 1.0])[:32]
        torch.testing.assert_close(a, m.head(m.post_layernorm(x)[None])[0])
    assert not torch.allclose(a, b)
