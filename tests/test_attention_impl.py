"""Attention cores (``ToMeConfig.attn_impl``, issue 26): float mask, bias channel, FlexAttention.

Each core against the naive float64 reference of test_reference (per head, per image) end to
end, in float64 and in float32, on a class-token and a no-class-token layout; each core alone
against softmax(q k^T * scale + log s) v in float32 and bfloat16; r=0 identical to timm; one
graph under ``torch.compile(fullgraph=True)``; the analytic FLOP count of the bias channel's
padded products equal to fvcore's; configuration errors. Tolerances, stated once here:

- float64 end to end: rtol 1e-7, atol 1e-9 (as test_reference);
- float32 end to end: rtol 1e-5, atol 1e-5 (measured: 2e-7 on logits of magnitude ~1);
- bfloat16 core alone: |out - float64 reference| <= 0.02 for q, k, v ~ N(0, 1) and sizes 1-40
  (measured: 0.006-0.012, of which 0.0055 is rounding q, k, v to bfloat16 at all);
- bfloat16 autocast end to end: <= 0.02 from the float32 logits on DeiT-T (measured 0.0037;
  timm's own unpatched model differs by 0.0033), and <= 0.03 from the float mask's bfloat16
  logits on both layouts (measured <= 0.016: bfloat16 may break near-ties of the matching
  differently from one core to another).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.attention.impl.auto import choose
from tome_lab.attention.impl.bias_channel import width
from tome_lab.config import ExperimentConfig, ToMeConfig, config_hash, to_dict
from tome_lab.registry import ATTN_IMPL

IMPLS = ["mask", "bias_channel", "flex", "auto"]
LAYOUTS = ["deit_t", "avg_no_cls"]  # class token; no class token, average pooling

# FlexAttention called eagerly warns once that it runs unfused: expected in these tests
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@functools.cache
def _reference(key: str):
    """(float64 model, images, reference logits at r=8 with proportional attention)."""
    m, images = _model(key)
    return m, images, reference_forward(m, images, 8, True)


def _patched(m, impl, r=8, **kw):
    p = tome_lab.apply_tome(copy.deepcopy(m), r=r, attn_impl=impl, **kw)
    assert all(blk._tome_plan.core is ATTN_IMPL.get(impl) for blk in p.blocks)
    return p


@pytest.mark.parametrize("key", LAYOUTS)
@pytest.mark.parametrize("impl", IMPLS)
def test_core_equals_reference_end_to_end(key, impl):
    m, images, want = _reference(key)
    p64 = _patched(m, impl)
    p32 = _patched(copy.deepcopy(m).float(), impl)  # .float() converts in place
    with torch.no_grad():
        got64 = p64(images)
        got32 = p32(images.float())
    assert tome_lab.tome_state(p32).tokens[-1] < tome_lab.tome_state(p32).spec.num_tokens
    torch.testing.assert_close(got64, want, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)


def _naive(q, k, v, log_size, scale):
    logits = (q.double() @ k.double().transpose(-2, -1)) * scale + log_size.double()
    return logits.softmax(-1) @ v.double()  # (B, H, N, d)


def _inputs(d, dtype=torch.float32, B=2, H=3, N=50):
    g = torch.Generator().manual_seed(d)
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    size = torch.randint(1, 40, (B, N), generator=g).float()  # a different size per image
    return q.to(dtype), k.to(dtype), v.to(dtype), size.log().reshape(B, 1, 1, N)


@pytest.mark.parametrize("d", [64, 48, 63])  # 64 -> 72, 48 -> 56, 63 -> 64 channels
@pytest.mark.parametrize("impl", IMPLS)
def test_core_alone_float32_and_bfloat16(impl, d):
    core, scale = ATTN_IMPL.get(impl), d ** -0.5
    q, k, v, log_size = _inputs(d)
    want = _naive(q, k, v, log_size, scale)
    torch.testing.assert_close(core(q, k, v, log_size, scale).double(), want,
                               rtol=1e-5, atol=1e-5)
    qb, kb, vb, _ = _inputs(d, torch.bfloat16)
    got = core(qb, kb, vb, log_size, scale)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert (got.double() - want).abs().max() <= 0.02


@pytest.mark.parametrize("impl", IMPLS)
def test_no_sizes_is_plain_sdpa(impl):
    """With no sizes every core is timm's own call, bit for bit."""
    q, k, v, _ = _inputs(64)
    assert torch.equal(ATTN_IMPL.get(impl)(q, k, v, None, 0.125),
                       F.scaled_dot_product_attention(q, k, v))


def test_bias_channel_width():
    assert [width(d) for d in (32, 48, 63, 64, 80, 128)] == [40, 56, 64, 72, 88, 136]


@pytest.mark.parametrize("impl", IMPLS)
def test_r0_identical_to_timm(impl):
    m, images = _model("deit_t")
    m = m.float()
    with torch.no_grad():
        want = m(images.float())
        got = _patched(m, impl, r=0)(images.float())
    assert torch.equal(got, want)


@pytest.mark.parametrize("key", LAYOUTS)
def test_bfloat16_autocast_tolerance(key):
    m, images = _model(key)
    m, images = m.float(), images.float()
    out = {}
    for impl in IMPLS:
        p = _patched(m, impl)
        with torch.no_grad():
            f32 = p(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out[impl] = p(images).float()
        if key == "deit_t":
            assert (out[impl] - f32).abs().max() <= 0.02, impl
    for impl in IMPLS:
        assert (out[impl] - out["mask"]).abs().max() <= 0.03, impl


@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_fullgraph_equals_eager(impl):
    m = tome_lab.apply_tome(tiny_vit(), r=3, attn_impl=impl)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        want = m(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.full  # inductor compiles, tens of seconds each on a CPU
@pytest.mark.parametrize("impl", IMPLS)
def test_inductor_compiled_equals_eager(impl):
    m = tome_lab.apply_tome(tiny_vit(depth=2), r=3, attn_impl=impl)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


def test_auto_rule():
    assert choose("cpu", torch.float32) == "mask"
    assert choose("cpu", torch.bfloat16) == "mask"
    assert choose("cuda", torch.float32) == "mask"
    assert choose("cuda", torch.bfloat16) == "bias_channel"
    assert choose("cuda", torch.float16) == "bias_channel"


def test_bad_attn_impl_value_error():
    with pytest.raises(ValueError, match=r"unknown attn_impl 'flx'\. Did you mean 'flex'\? "
                                         r"Valid: auto, bias_channel, flex, mask"):
        ToMeConfig(attn_impl="flx")
    with pytest.raises(ValueError, match="cannot go with prop_attn=False"):
        tome_lab.apply_tome(tiny_vit(), r=2, prop_attn=False, attn_impl="bias_channel")
    assert ToMeConfig(attn_impl="bias").attn_impl == "bias_channel"  # alias


def test_flex_refuses_dropout():
    q, k, v, log_size = _inputs(64)
    with pytest.raises(ValueError, match="no attention dropout"):
        ATTN_IMPL.get("flex")(q, k, v, log_size, 0.125, dropout_p=0.1)


def test_hash_leaves_out_the_default_attn_impl():
    """Result folders are named by config hash: the fields added after results were recorded
    (attn_impl, position_rule) change none at their defaults, and do when set."""
    cfg = ExperimentConfig()
    data = to_dict(cfg)
    del data["tome"]["attn_impl"], data["tome"]["position_rule"]
    old = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config_hash(cfg) == old
    assert config_hash(ExperimentConfig(tome=ToMeConfig(attn_impl="mask"))) != old
    assert config_hash(ExperimentConfig(tome=ToMeConfig(position_rule="keep"))) != old


def test_bias_channel_flops_analytic_equals_fvcore():
    """fvcore counts the padded q'k'^T and attn v' products (72 wide for 64-wide heads, here
    16 -> 24) of the blocks after the first merge; the analytic count does the same."""
    pytest.importorskip("fvcore")
    for impl in ("mask", "bias_channel"):
        m = tome_lab.apply_tome(tiny_vit(), r=3, attn_impl=impl)
        st = tome_lab.tome_state(m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fv = tome_lab.count_flops(m, (3, 64, 64))
        assert fv == pytest.approx(tome_lab.analytic_gflops(st.spec, st.r), rel=1e-12), impl
    assert st.spec.attn_width == width(st.spec.head_dim)
