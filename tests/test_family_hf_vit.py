"""Hugging Face ViTModel / ViTForImageClassification under ToMe (tome_lab/families/hf_vit.py):
end to end against the float64 reference, r=0 parity, remove, state_dict, compile, save and
load, exact FLOPs, the zoo. Tiny random configurations, no network."""

from __future__ import annotations

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

SIDE = 32  # 8 px patches: a 4 x 4 grid, 17 tokens with the class token


def _model(kind="model", pooler=True, **kw):
    need_extra("transformers", "hf")
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    cfg = ViTConfig(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=3,
                    num_attention_heads=4, intermediate_size=64, num_labels=5, **kw)
    torch.manual_seed(0)
    if kind == "model":
        return visible(ViTModel(cfg, add_pooling_layer=pooler))
    return visible(ViTForImageClassification(cfg))


def _out(o):
    """One tensor per image: the pooled output (or logits) and the merged tokens."""
    if hasattr(o, "logits"):
        return o.logits
    parts = [o.last_hidden_state.flatten(1)]
    if o.pooler_output is not None:
        parts.insert(0, o.pooler_output)
    return torch.cat(parts, 1)


class HFViTLayout(Layout):
    """ViTModel / ViTForImageClassification, written out per image."""

    num_prefix, class_token = 1, True

    def __init__(self, model):
        self.model = model
        self.base = model.vit if hasattr(model, "classifier") else model
        self.blocks = list(self.base.layers)
        self.grid = (SIDE // 8, SIDE // 8)

    def embed(self, img):
        return self.base.embeddings(img[None])[0]

    def norm1(self, blk, x):
        return blk.layernorm_before(x)

    def qkv(self, blk, h, position):
        a = blk.attention
        n = h.shape[0]
        return tuple(p(h).reshape(n, a.num_attention_heads, -1).transpose(0, 1)
                     for p in (a.q_proj, a.k_proj, a.v_proj))

    def out(self, blk, o, h):
        return blk.attention.o_proj(o)

    def mlp(self, blk, x):
        return blk.mlp(blk.layernorm_after(x))

    def head(self, x, size):
        seq = self.base.layernorm(x)
        if self.model is not self.base:
            return self.model.classifier(seq[0])
        pooled = torch.tanh(self.base.pooler.dense(seq[0]))
        return torch.cat([pooled, seq.flatten()])


@pytest.mark.parametrize("r,prop_attn", [(4, True), (2, False),
                                         pytest.param(4, False, marks=pytest.mark.full),
                                         pytest.param(2, True, marks=pytest.mark.full)])
@pytest.mark.parametrize("kind", ["model", "classifier"])
def test_equals_reference(kind, r, prop_attn):
    check_reference(_model(kind), HFViTLayout, images(SIDE), _out, r, prop_attn)


@pytest.mark.parametrize("kind,pooler", [("model", True), ("model", False),
                                         ("classifier", False)])
def test_r0_identical_and_remove_restores(kind, pooler):
    check_r0_and_remove(_model(kind, pooler), images(SIDE), _out)


def test_output_types_and_merged_tokens():
    from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

    m = tome_lab.apply_tome(_model(), r=4)
    with torch.no_grad():
        o = m(images(SIDE))
        t = m(pixel_values=images(SIDE), return_dict=False)
    assert type(o) is BaseModelOutputWithPooling and o.last_hidden_state.shape == (2, 5, 32)
    assert isinstance(t, tuple) and torch.equal(t[0], o.last_hidden_state)
    c = tome_lab.apply_tome(_model("classifier"), r=4)
    labels = torch.tensor([1, 3])
    o = c(images(SIDE), labels=labels)
    assert type(o) is ImageClassifierOutput and o.logits.shape == (2, 5)
    o.loss.backward()  # the library's loss on the merged model's logits
    assert c.classifier.weight.grad is not None


def test_state_dict_untouched():
    check_state_dict(_model)


def test_compile_fullgraph_eager_backend():
    check_compile(_model("classifier"), images(SIDE), _out)


@pytest.mark.full  # an inductor compile
def test_compile_fullgraph_inductor():
    check_compile(_model(), images(SIDE), _out, backend="inductor")


@ROUNDTRIPS
def test_save_and_load(roundtrip):
    check_roundtrip(_model("classifier"), images(SIDE), _out, roundtrip)


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("kind,key", [("model", "pooler_output"), ("classifier", "logits")])
@pytest.mark.parametrize("r", [0, 4])
def test_flops_exact(kind, key, r):
    check_flops(_model(kind), SIDE, key, r)


@pytest.mark.full  # the family x zoo matrix
@pytest.mark.parametrize("options", ZOO, ids=zoo_id)
def test_zoo(options):
    check_zoo(_model(), images(SIDE), _out, options)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.config.__setattr__("_attn_implementation", "flash_attention_2"),
     "attn_implementation"),
    (lambda m: m.layers[1].add_module("extra", torch.nn.Identity()), "does not understand"),
    (lambda m: m.layers[0].attention.add_module("q_norm", torch.nn.Identity()), "q/k/v"),
    (lambda m: m.config.__setattr__("output_hidden_states", True), "output_hidden_states"),
])
def test_unknown_layouts_type_error(change, match):
    m = _model()
    change(m)
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(m, r=2)


def test_subclass_overriding_forward_type_error():
    from transformers import ViTModel

    class Mine(ViTModel):
        def forward(self, pixel_values=None, **kw):
            return super().forward(pixel_values, **kw)

    m = _model()
    m.__class__ = Mine
    with pytest.raises(TypeError, match="ViTModel"):
        tome_lab.apply_tome(m, r=2)


@pytest.mark.parametrize("kw", [dict(output_attentions=True), dict(interpolate_pos_encoding=True),
                                dict(head_mask=torch.ones(3)),
                                dict(bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))])
def test_unsupported_call_arguments_refused(kw):
    m = tome_lab.apply_tome(_model(), r=2)
    with pytest.raises(ValueError, match="ToMe-patched ViTModel takes no"):
        m(images(SIDE), **kw)
    with pytest.raises(ValueError, match="takes 32x32 images"):
        m(images(48))


def test_unknown_model_type_error():
    check_unknown_type()
