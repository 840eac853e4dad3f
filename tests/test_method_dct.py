"""DCT token reduction (Fourier Transformer): a naive float64 reference, the transform pair,
sizes, refusals, FLOPs, compile and options."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import scipy.fft
import torch
from conftest import tiny_vit
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MatchContext, capabilities
from tome_lab.registry import MATCHING


@functools.cache  # every image and block of a layout asks the same sizes
def _dct_rows(n, rows):
    """Orthonormal DCT-II, entry by entry from its definition: X_k = c_k sum_j x_j
    cos(pi (2j + 1) k / 2n), c_0 = sqrt(1/n), c_k = sqrt(2/n)."""
    out = torch.zeros(rows, n, dtype=torch.float64)
    for k in range(rows):
        c = math.sqrt((1.0 if k == 0 else 2.0) / n)
        for j in range(n):
            out[k, j] = c * math.cos(math.pi * (2 * j + 1) * k / (2 * n))
    return out


def _dct_step(v):
    """A rich reference step: the unprotected tokens u [M, C] become
    IDCT_{M - r}(first M - r coefficients of DCT_M(u)), each of size (sum of sizes) / (M - r)."""
    n, p = len(v.tokens), v.num_prefix
    m = n - p
    r = min(v.r, m - 1)
    if r <= 0:
        return v.tokens, v.size, [[i] for i in range(n)]
    k = m - r
    u = torch.stack(v.tokens[p:])  # (M, C)
    coef = _dct_rows(m, k) @ u  # (K, C) the low frequencies
    new = _dct_rows(k, k).T @ coef  # (K, C): the K-point inverse of an orthonormal DCT
    s = sum(v.size[p:]) / k
    return v.tokens[:p] + list(new), v.size[:p] + [s] * k, None


def test_reference_matrices_are_scipys_orthonormal_dct():
    x = torch.randn(11, 3, dtype=torch.float64)
    want = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=0)
    torch.testing.assert_close(_dct_rows(11, 11) @ x, torch.from_numpy(want))
    back = scipy.fft.idct(want[:5], type=2, norm="ortho", axis=0)
    torch.testing.assert_close(_dct_rows(5, 5).T @ torch.from_numpy(want[:5]),
                               torch.from_numpy(back))


FULL = pytest.mark.full  # the reference runs in Python per image: seconds per case


@pytest.mark.parametrize("key,r,prop_attn", [
    ("deit_t", 8, True), pytest.param("deit_t", 30, False, marks=FULL),
    ("avg_no_cls", 20, True), pytest.param("avg_no_cls", 6, False, marks=FULL)])
def test_equals_reference(key, r, prop_attn):
    m, images = _model(key)
    want = reference_forward(m, images, r, prop_attn, step=_dct_step, rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn, matching="dct")
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was reduced
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def _ctx(p=1, n=21, c=5, dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(2, n, c, dtype=dtype)
    return MatchContext(metric=None, num_prefix=p, x=x, class_token=p > 0), x


@pytest.mark.parametrize("p", [0, 1, 5])
def test_prefix_untouched_sizes_sum_and_unmerge_inverts_the_low_band(p):
    ctx, x = _ctx(p)
    r = 7
    merge, unmerge = MATCHING.get("dct")(ctx, r)
    size = torch.rand(2, 21, 1, dtype=torch.float64) + 1
    y, s = merge.wavg(x, size)
    assert y.shape == (2, 21 - r, 5) and s.shape == (2, 21 - r, 1)
    assert torch.equal(y[:, :p], x[:, :p]) and torch.equal(s[:, :p], size[:, :p])
    torch.testing.assert_close(s.sum(1), size.sum(1))
    assert torch.allclose(s[:, p:], s[:, p:p + 1].expand_as(s[:, p:]))  # all equal
    # a sequence in the span of the first N' cosines survives merge then unmerge exactly
    k, m = 21 - p - r, 21 - p
    low = torch.cat([x[:, :p], torch.linalg.pinv(_dct_rows(m, m))[:, :k] @ x[:, p:p + k]], 1)
    torch.testing.assert_close(unmerge(merge(low)), low)
    assert unmerge(y).shape == x.shape


def test_scaling_the_paper_and_preserve_mean():
    """The paper's orthonormal pair multiplies a constant sequence by sqrt(M / N');
    preserve_mean keeps it."""
    ctx, _ = _ctx(1)
    const = torch.ones(2, 21, 5, dtype=torch.float64) * 3
    paper, _ = MATCHING.get("dct")(ctx, 10)
    kept, _ = MATCHING.get("dct")(ctx, 10, preserve_mean=True)
    torch.testing.assert_close(paper(const)[:, 1:], const[:, 11:] * math.sqrt(20 / 10))
    torch.testing.assert_close(kept(const)[:, 1:], const[:, 11:])
    with pytest.raises(ValueError, match="no destination"):
        paper(const, mode="keep")


def test_capabilities_and_refusals():
    caps = capabilities(MATCHING.get("dct"))
    assert caps.reduction == "create" and caps.bound == "all_but_one"
    assert not caps.sources and caps.unmerge and caps.fullgraph and not caps.uses
    with pytest.raises(ValueError, match="trace_source"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="dct", trace_source=True)
    with pytest.raises(ValueError, match="does not use a combine"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="dct", combine="mean")
    # all_but_one: more than half of the unprotected tokens in one block
    m = tome_lab.apply_tome(tiny_vit(), r=[15, 0, 0], matching="dct")
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    assert tome_lab.tome_state(m).tokens == [2, 2, 2]
    with pytest.raises(ValueError, match="at most 15"):
        tome_lab.apply_tome(tiny_vit(), r=16, matching="dct")


@pytest.mark.parametrize("value", [1, "yes", None])
def test_bad_options_fail_at_configuration(value):
    with pytest.raises(ValueError, match="preserve_mean must be True or False"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="dct", preserve_mean=value)


def test_analytic_cost_is_the_two_transforms():
    m = tiny_vit("deit_tiny_patch16_224", depth=3, img_size=96)
    tome_lab.apply_tome(m, r=5, matching="dct")
    st = tome_lab.tome_state(m)
    n, want = st.spec.num_tokens, 0
    for _ in range(3):
        mm = n - 1
        want += ((mm - 5) * mm + (mm - 5) ** 2) * st.spec.embed_dim
        n -= 5
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, matching_cost=False)
    assert got * 1e9 == pytest.approx(want, rel=1e-12)
