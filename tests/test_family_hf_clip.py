"""Hugging Face CLIPVisionModel under ToMe (tome_lab/families/hf_clip.py): end to end against the
float64 reference, r=0 parity, remove, state_dict, compile, save and load, exact FLOPs, the zoo.
Tiny random configurations, no network."""

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


def _model(**kw):
    need_extra("transformers", "hf")
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=3,
                           num_attention_heads=4, intermediate_size=64, **kw)
    torch.manual_seed(0)
    return visible(CLIPVisionModel(cfg))


def _out(o):
    return torch.cat([o.pooler_output, o.last_hidden_state.flatten(1)], 1)


class HFCLIPLayout(Layout):
    """CLIPVisionModel written out per image: pre-norm before the blocks, quick_gelu MLP,
    post-norm on the class token only."""

    num_prefix, class_token = 1, True

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.encoder.layers)
        self.grid = (SIDE // 8, SIDE // 8)

    def embed(self, img):
        return self.model.pre_layrnorm(self.model.embeddings(img[None]))[0]

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
        return blk.mlp.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu

    def head(self, x, size):
        return torch.cat([self.model.post_layernorm(x[0]), x.flatten()])


@pytest.mark.parametrize("r,prop_attn", [(4, True), (2, False),
                                         pytest.param(4, False, marks=pytest.mark.full),
                                         pytest.param(2, True, marks=pytest.mark.full)])
def test_equals_reference(r, prop_attn):
    check_reference(_model(), HFCLIPLayout, images(SIDE), _out, r, prop_attn)


def test_r0_identical_and_remove_restores():
    check_r0_and_remove(_model(), images(SIDE), _out)


def test_eager_attention_r0_identical():
    """The eager implementation (softmax in float32) against the engine's SDPA core: equal to
    float32 precision in a float32 model."""
    m = _model(attn_implementation="eager").float()
    x = images(SIDE).float()
    with torch.no_grad():
        want = _out(m(x))
        got = _out(tome_lab.apply_tome(m, r=0)(x))
    torch.testing.assert_close(got, want)


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
@pytest.mark.parametrize("r", [0, 4])
def test_flops_exact(r):
    check_flops(_model(), SIDE, "pooler_output", r)


@pytest.mark.full  # the family x zoo matrix
@pytest.mark.parametrize("options", ZOO, ids=zoo_id)
def test_zoo(options):
    check_zoo(_model(), images(SIDE), _out, options)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.config.__setattr__("_attn_implementation", "flash_attention_2"),
     "attn_implementation"),
    (lambda m: m.encoder.layers[1].add_module("ls", torch.nn.Identity()), "does not understand"),
    (lambda m: m.encoder.layers[0].self_attn.__setattr__("scale", 1.0), "1/sqrt"),
    (lambda m: m.embeddings.__setattr__("__class__", type("E", (torch.nn.Module,), {})),
     "embeddings"),
])
def test_unknown_layouts_type_error(change, match):
    m = _model()
    change(m)
    with pytest.raises(TypeError, match=match):
        tome_lab.apply_tome(m, r=2)


def test_unsupported_call_arguments_refused():
    m = tome_lab.apply_tome(_model(), r=2)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        m(images(SIDE), interpolate_pos_encoding=True)


def test_unknown_model_type_error():
    check_unknown_type()
