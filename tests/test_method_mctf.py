"""MCTF (training-free): a naive float64 reference from the paper's equations, groups and
sizes, refusals, FLOPs, compile and options."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_vit
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import capabilities
from tome_lab.registry import MATCHING


def _mctf_step(tau_sim=1.0, tau_info=20.0, tau_size=40.0, bidirectional=True):
    """A rich reference step, one image: edge weight
    ((cos + 1) / 2)^(1/tau_sim) (a~_i a~_j)^(1/tau_info) (s~_i s~_j)^(1/tau_size), with
    a~ = (1/a) / max(1/a) of the attention received (mean over heads and queries) and s~ the
    same of the sizes; r // 2 A tokens merge into B, then the rest of r B tokens into the
    unmerged A tokens; each group is the average weighted by attention received x size."""

    def step(v):
        n, p = len(v.tokens), v.num_prefix
        r = min(v.r, (n - p) // 2)
        if r <= 0:
            return v.tokens, v.size, [[i] for i in range(n)]
        received = [float(v.probs[:, :, j].mean()) for j in range(n)]  # over heads, queries
        inv_a = [1 / a for a in received]
        inv_a = [a / max(inv_a) for a in inv_a]
        inv_s = [1 / s for s in v.size]
        inv_s = [s / max(inv_s) for s in inv_s]
        norm = [float(t.norm()) for t in v.tokens]

        def weight(i, j):
            cos = float(v.tokens[i] @ v.tokens[j]) / (norm[i] * norm[j])
            return (((cos + 1) / 2) ** (1 / tau_sim) * (inv_a[i] * inv_a[j]) ** (1 / tau_info)
                    * (inv_s[i] * inv_s[j]) ** (1 / tau_size))

        r1, r2 = (r // 2, r - r // 2) if bidirectional else (r, 0)
        a_pos = [i for i in range(0, n, 2) if i >= p]
        b_pos = [j for j in range(1, n, 2) if j >= p]
        edges = sorted((-max(weight(i, j) for j in b_pos), i) for i in a_pos)
        src1 = {i: max(b_pos, key=lambda j, i=i: weight(i, j)) for _, i in edges[:r1]}
        kept_a = [i for _, i in edges[r1:]]
        if p:  # with a prefix the unmerged A tokens go back to sequence order
            kept_a.sort()
        edges2 = sorted((-max(weight(i, j) for i in kept_a), j) for j in b_pos)
        src2 = {j: max(kept_a, key=lambda i, j=j: weight(i, j)) for _, j in edges2[:r2]}
        kept_b = [j for _, j in edges2[r2:]] if bidirectional else b_pos
        members = {t: [t] for t in range(n)}
        for i, j in src1.items():
            members[j] += members[i]
        for j, i in src2.items():
            members[i] += members[j]
        groups = [members[t] for t in list(range(p)) + kept_a + kept_b]
        tokens, size = [], []
        for grp in groups:
            w = [received[g] * v.size[g] for g in grp]
            tokens.append(sum(received[g] * v.size[g] * v.tokens[g] for g in grp) / sum(w))
            size.append(sum(v.size[g] for g in grp))
        return tokens, size, groups

    return step


FULL = pytest.mark.full  # the reference runs in Python per image: seconds per case


@pytest.mark.parametrize("key,r,prop_attn", [
    ("deit_t", 8, True), pytest.param("deit_t", 5, False, marks=FULL),
    ("avg_no_cls", 7, True), pytest.param("avg_no_cls", 12, False, marks=FULL)])
def test_equals_reference(key, r, prop_attn):
    m, images = _model(key)
    want = reference_forward(m, images, r, prop_attn, step=_mctf_step(), rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn, matching="mctf")
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("options", [dict(bidirectional=False), dict(tau_info=0, tau_size=5)])
def test_options_equal_reference(options):
    m, images = _model("avg_no_cls")
    want = reference_forward(m, images, 6, True, step=_mctf_step(
        tau_sim=1.0, tau_info=options.get("tau_info", 20) or math.inf,
        tau_size=options.get("tau_size", 40), bidirectional=options.get("bidirectional", True)),
        rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=6, matching="mctf", **options)
    with torch.no_grad():
        torch.testing.assert_close(patched(images), want, rtol=1e-7, atol=1e-9)


def test_size_pooling_is_tomes_weighted_average_and_differs():
    m, images = _model("avg_no_cls")
    att = tome_lab.apply_tome(copy.deepcopy(m), r=6, matching="mctf")
    siz = tome_lab.apply_tome(copy.deepcopy(m), r=6, matching="mctf", pooling="size")
    mean = tome_lab.apply_tome(copy.deepcopy(m), r=6, matching="mctf", combine="mean")
    with torch.no_grad():
        a, s, u = att(images), siz(images), mean(images)
    assert not torch.allclose(a, s, atol=1e-6) and not torch.allclose(s, u, atol=1e-6)


def test_capabilities():
    caps = capabilities(MATCHING.get("mctf"))
    assert caps.attention == {"received"} and caps.sizes and caps.sources and caps.unmerge
    assert caps.uses == {"combine", "keep"} and caps.reduction == "merge"
    assert caps.bound == "half" and caps.fullgraph and not caps.positions


@pytest.mark.parametrize("options,match", [
    (dict(one_step_ahead=True), "not implemented"), (dict(tau_info=-1), "tau_info must be"),
    (dict(tau_sim="1"), "tau_sim must be"), (dict(tau_size=float("nan")), "tau_size must be"),
    (dict(bidirectional=1), "bidirectional must be"),
    (dict(pooling="max"), "valid: attention, size"),
    (dict(feature="x"), "does not use a metric"), (dict(tau_simm=1), "tau_sim"),
])
def test_bad_options_fail_at_configuration(options, match):
    with pytest.raises(ValueError, match=match):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="mctf", **options)


def test_analytic_cost_is_the_similarity_and_the_attention():
    m = tiny_vit("deit_tiny_patch16_224", depth=3, img_size=96)
    tome_lab.apply_tome(m, r=5, matching="mctf")
    st = tome_lab.tome_state(m)
    n, want = st.spec.num_tokens, 0
    for _ in range(3):
        want += ((n + 1) // 2) * (n // 2) * st.spec.embed_dim + n * n * st.spec.attn_dim
        n -= 5
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, matching_cost=False)
    assert got * 1e9 == pytest.approx(want, rel=1e-12)
