"""Hugging Face DINOv2 (with and without registers, model and image classifier) under ToMe
(tome_lab/families/hf_dinov2.py): end to end against the float64 reference, r=0 parity, remove,
state_dict, compile, save and load, exact FLOPs, the zoo. Tiny random configurations."""

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

SIDE = 32  # 8 px patches: a 4 x 4 grid
REGS = 2


def _model(kind="model", registers=False, **kw):
    need_extra("transformers", "hf")
    import transformers as t

    if registers:
        cfg = t.Dinov2WithRegistersConfig(num_register_tokens=REGS, **_cfg(**kw))
        cls = (t.Dinov2WithRegistersModel if kind == "model"
               else t.Dinov2WithRegistersForImageClassification)
    else:
        cfg = t.Dinov2Config(**_cfg(**kw))
        cls = t.Dinov2Model if kind == "model" else t.Dinov2ForImageClassification
    torch.manual_seed(0)
    return visible(cls(cfg))


def _cfg(**kw):
    return dict(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=3,
                num_attention_heads=4, mlp_ratio=2, num_labels=5, **kw)


def _out(o):
    if hasattr(o, "logits"):
        return o.logits
    return torch.cat([o.pooler_output, o.last_hidden_state.flatten(1)], 1)


class HFDinov2Layout(Layout):
    """Dinov2Model / Dinov2WithRegistersModel and their classifiers, written out per image:
    LayerScale on both branches, a size-weighted patch mean in the classifier."""

    class_token = True

    def __init__(self, model):
        self.model = model
        self.base = getattr(model, "dinov2", getattr(model, "dinov2_with_registers", model))
        self.blocks = list(self.base.encoder.layer)
        self.num_prefix = 1 + getattr(self.base.config, "num_register_tokens", 0)
        self.grid = (SIDE // 8, SIDE // 8)

    def embed(self, img):
        return self.base.embeddings(img[None])[0]

    def norm1(self, blk, x):
        return blk.norm1(x)

    def qkv(self, blk, h, position):
        a = blk.attention
        n = h.shape[0]
        return tuple(p(h).reshape(n, a.num_attention_heads, -1).transpose(0, 1)
                     for p in (a.q_proj, a.k_proj, a.v_proj))

    def out(self, blk, o, h):
        return blk.attention.o_proj(o) * blk.layer_scale1.lambda1

    def mlp(self, blk, x):
        return blk.mlp(blk.norm2(x)) * blk.layer_scale2.lambda1

    def head(self, x, size):
        seq = self.base.layernorm(x)
        if self.model is self.base:
            return torch.cat([seq[0], seq.flatten()])
        p = self.num_prefix
        w = torch.tensor(size[p:], dtype=seq.dtype)
        mean = (seq[p:] * w[:, None]).sum(0) / w.sum()
        return self.model.classifier(torch.cat([seq[0], mean]))


KINDS = [("model", False), ("classifier", False), ("model", True), ("classifier", True)]
KIND_IDS = ["model", "classifier", "reg-model", "reg-classifier"]


@pytest.mark.parametrize("r,prop_attn", [(4, True), (2, False),
                                         pytest.param(4, False, marks=pytest.mark.full),
                                         pytest.param(2, True, marks=pytest.mark.full)])
@pytest.mark.parametrize("kind,registers", KINDS, ids=KIND_IDS)
def test_equals_reference(kind, registers, r, prop_attn):
    check_reference(_model(kind, registers), HFDinov2Layout, images(SIDE), _out, r, prop_attn)


def test_swiglu_equals_reference():
    check_reference(_model("classifier", True, use_swiglu_ffn=True), HFDinov2Layout,
                    images(SIDE), _out, 4, True)


@pytest.mark.parametrize("kind,registers", KINDS, ids=KIND_IDS)
def test_r0_identical_and_remove_restores(kind, registers):
    check_r0_and_remove(_model(kind, registers), images(SIDE), _out)


def test_registers_are_protected():
    m = tome_lab.apply_tome(_model(registers=True), r=4, trace_source=True)
    with torch.no_grad():
        o = m(images(SIDE))
    st = tome_lab.tome_state(m)
    p = 1 + REGS
    assert st.spec.num_prefix == p and st.tokens == [15, 11, 7]
    torch.testing.assert_close(st.source[:, :p], torch.eye(19)[:p].expand(2, -1, -1).double())
    assert o.last_hidden_state.shape == (2, 7, 32)


def test_state_dict_untouched():
    check_state_dict(lambda: _model("classifier", True))


def test_compile_fullgraph_eager_backend():
    check_compile(_model("classifier", True), images(SIDE), _out)


@pytest.mark.full  # an inductor compile
def test_compile_fullgraph_inductor():
    check_compile(_model("classifier", True), images(SIDE), _out, backend="inductor")


@ROUNDTRIPS
def test_save_and_load(roundtrip):
    check_roundtrip(_model("classifier", True), images(SIDE), _out, roundtrip)


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("kind,registers", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("r", [0, 4])
def test_flops_exact(kind, registers, r):
    check_flops(_model(kind, registers), SIDE, "logits" if kind != "model" else "pooler_output", r)


@pytest.mark.full  # the family x zoo matrix
@pytest.mark.parametrize("options", ZOO, ids=zoo_id)
@pytest.mark.parametrize("registers", [False, True], ids=["plain", "registers"])
def test_zoo(options, registers):
    check_zoo(_model(registers=registers), images(SIDE), _out, options)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.config.__setattr__("_attn_implementation", "flex_attention"),
     "attn_implementation"),
    (lambda m: m.encoder.layer[2].add_module("extra", torch.nn.Identity()), "does not understand"),
    (lambda m: m.encoder.layer[0].attention.add_module("k_norm", torch.nn.Identity()), "q/k/v"),
])
def test_unknown_layouts_type_error(change, match):
    m = _model(registers=True)
    change(m)
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(m, r=2)


@pytest.mark.parametrize("kw", [dict(bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool)),
                                dict(output_hidden_states=True)])
def test_unsupported_call_arguments_refused(kw):
    m = tome_lab.apply_tome(_model(), r=2)
    with pytest.raises(ValueError, match="takes no"):
        m(images(SIDE), **kw)


def test_unknown_model_type_error():
    check_unknown_type()
