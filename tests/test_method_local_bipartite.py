"""Local (windowed) bipartite matching: a naive float64 reference, locality, the wide-window
limit (plain bipartite), FLOPs, compile, capabilities and options."""

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


def _local_step(window):
    """A rich reference step: ToMe's alternate split, each A token's partner the most similar
    B token within ``window`` (Chebyshev, in patches) of its position; A tokens without one
    rank after all others, by the distance to their nearest B token, and take that one."""

    def step(v):
        n, p = len(v.tokens), v.num_prefix
        r = min(v.r, (n - p) // 2)
        if r <= 0:
            return v.tokens, v.size, [[i] for i in range(n)]
        unit = [v.key[i] / v.key[i].norm().clamp_min(1e-6) for i in range(n)]
        a_pos = [i for i in range(0, n, 2) if i >= p]
        b_pos = [i for i in range(1, n, 2) if i >= p]

        def cheb(i, j):  # in whole units of 1e-5 patches, as the docstring says
            return round(1e5 * max(abs(v.position[i][0] - v.position[j][0]),
                                   abs(v.position[i][1] - v.position[j][1])))

        inside, outside = [], []
        for pa in a_pos:
            best, partner = -math.inf, None
            for pb in b_pos:
                s = float(unit[pa] @ unit[pb])
                if cheb(pa, pb) <= round(window * 1e5) and s > best:
                    best, partner = s, pb
            if partner is not None:
                inside.append((-best, pa, partner))
                continue
            near = min(cheb(pa, pb) for pb in b_pos)
            best, partner = -math.inf, None
            for pb in b_pos:
                s = float(unit[pa] @ unit[pb])
                if cheb(pa, pb) <= near and s > best:
                    best, partner = s, pb
            outside.append((near, -best, pa, partner))
        edges = [(pa, pb) for _, pa, pb in sorted(inside)]
        edges += [(pa, pb) for _, _, pa, pb in sorted(outside)]
        merged, kept = edges[:r], edges[r:]
        into = {pb: [pb] for pb in b_pos}
        for pa, pb in merged:
            into[pb].append(pa)
        kept_a = [pa for pa, _ in kept]
        if v.class_token:
            kept_a.sort()
        groups = [[i] for i in range(p)] + [[pa] for pa in kept_a] + [into[pb] for pb in b_pos]
        tokens = [sum(v.tokens[g] * v.size[g] for g in grp) / sum(v.size[g] for g in grp)
                  for grp in groups]
        size = [sum(v.size[g] for g in grp) for grp in groups]
        return tokens, size, groups

    return step


def _run(key, r, prop_attn=True, **options):
    m, images = _model(key)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn,
                                  matching="local_bipartite", **options)
    with torch.no_grad():
        got = patched(images)
    return m, images, got, tome_lab.tome_state(patched)


FULL = pytest.mark.full  # the reference runs token by token in Python: seconds per case


# both layouts and both r; one r per layout in the fast tier
@pytest.mark.parametrize("key,r", [pytest.param("deit_t", 4, marks=FULL), ("deit_t", 8),
                                   ("avg_no_cls", 4), pytest.param("avg_no_cls", 8, marks=FULL)])
def test_equals_reference(key, r):
    m, images, got, st = _run(key, r)
    want = reference_forward(m, images, r, True, step=_local_step(2), rich=True)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_equals_reference_where_the_window_runs_short():
    """avg_no_cls at r=16: blocks 2 and 3 have fewer A tokens with an in-window partner than
    r, so the nearest-partner fallback of the docstring decides some merges."""
    m, images, got, st = _run("avg_no_cls", 16, prop_attn=False, window=1)
    want = reference_forward(m, images, 16, False, step=_local_step(1), rich=True)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def _block_groups(st, i):
    """[B] lists of groups: which tokens entering block i each token leaving it holds."""
    after = st.sources[i + 1].double()
    before = st.sources[i]  # None before the first merge: each token its own patch
    before = torch.eye(after.shape[2]).expand(after.shape[0], -1, -1) if before is None else before
    before = before.double()
    member = (before @ after.transpose(1, 2)) > 0  # (B, N_i, N_i+1)
    return [[member[b, :, j].nonzero().flatten().tolist() for j in range(member.shape[2])]
            for b in range(member.shape[0])]


@pytest.mark.parametrize("key,r,window", [pytest.param("deit_t", 8, 2, marks=FULL),
                                          ("avg_no_cls", 8, 2), ("avg_no_cls", 4, 1)])
def test_every_merge_is_local(key, r, window):
    """From the traced sources and the positions: each group of merged tokens has a member
    (the destination) within ``window`` of every other member."""
    m, images = _model(key)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, matching="local_bipartite",
                                  window=window, trace_source=True)
    with torch.no_grad():
        patched(images)
    st = tome_lab.tome_state(patched)
    merges = 0
    for i in range(st.spec.depth):
        pos = st.positions[i].double()
        for b, groups in enumerate(_block_groups(st, i)):
            for grp in groups:
                if len(grp) == 1:
                    continue
                merges += len(grp) - 1
                d = (pos[b, grp][:, None] - pos[b, grp][None]).abs().amax(-1)  # (G, G)
                assert (d <= window + 1e-5).all(dim=1).any(), (i, b, grp)
    assert merges == 2 * (st.spec.num_tokens - st.tokens[-1])
    # and a window this small changes the result: it is not plain bipartite
    plain = tome_lab.apply_tome(copy.deepcopy(m), r=r)
    with torch.no_grad():
        assert not torch.allclose(patched(images), plain(images), atol=1e-6)


@pytest.mark.parametrize("key,order", [("deit_t", "published"), ("avg_no_cls", "published"),
                                       ("avg_no_cls", "sorted")])
def test_window_wider_than_the_grid_is_plain_bipartite_exactly(key, order):
    m, images = _model(key)
    side = max(m.patch_embed.grid_size)
    local = tome_lab.apply_tome(copy.deepcopy(m), r=8, matching="local_bipartite",
                                window=side, order=order, trace_source=True)
    plain = tome_lab.apply_tome(copy.deepcopy(m), r=8, order=order, trace_source=True)
    with torch.no_grad():
        assert torch.equal(local(images), plain(images))
    assert torch.equal(tome_lab.tome_state(local).source, tome_lab.tome_state(plain).source)


def test_capabilities():
    caps = capabilities(MATCHING.get("local_bipartite"))
    assert caps.positions and caps.sources and caps.unmerge and caps.fullgraph
    assert caps.reduction == "merge" and caps.bound == "half"
    assert caps.uses == {"metric", "combine", "keep"}
    assert MATCHING.canonical("local") == "local_bipartite"


@pytest.mark.parametrize("options,match", [
    (dict(window=0), "window > 0"), (dict(window=-1), "window > 0"),
    (dict(window="2"), "window > 0"), (dict(window=True), "window > 0"),
    (dict(window=float("inf")), "window > 0"), (dict(order="bogus"), "valid: published, sorted"),
    (dict(partition="random"), "does not use a partition"),
])
def test_bad_options_fail_at_configuration(options, match):
    with pytest.raises(ValueError, match=match):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="local_bipartite", **options)


def test_a_stem_without_grid_is_refused():
    m = tiny_vit(class_token=False, global_pool="avg")
    m.patch_embed.grid_size = None  # as a 1-D stem
    with pytest.raises(ValueError, match="grid"):
        tome_lab.apply_tome(m, r=2, matching="local_bipartite")


def test_analytic_cost_is_the_bipartite_similarity():
    m = tiny_vit("deit_tiny_patch16_224", depth=3, img_size=96)
    tome_lab.apply_tome(m, r=5, matching="local_bipartite")
    st = tome_lab.tome_state(m)
    n, want = st.spec.num_tokens, 0
    for _ in range(3):
        want += ((n + 1) // 2) * (n // 2) * st.spec.head_dim
        n -= 5
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, matching_cost=False)
    assert got * 1e9 == pytest.approx(want, rel=1e-12)
