"""The MLERP combine rule (Kim et al., WACV 2024) against a float64 reference written per group:
y = a / |a| * max_i |x_i| with a the size-weighted mean of the group's members.

The groups come from each matcher's own ``merge`` (its source trace), so the rule is checked
with every merging matcher; end to end, a naive bipartite soft matching written with loops
(``bipartite_groups``, shared with the ToFu tests) gives the groups.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_vit
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.combine import COMBINE
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, MatchContext

# a distillation token (two prefix tokens) and four registers without a class token
PREFIX_LAYOUTS = ["deit_tiny_distilled_patch16_224", "vit_base_patch16_reg4_gap_256"]


def bipartite_groups(view):
    """ToMe's bipartite soft matching on one image, with loops (Bolya et al., Alg. 1): the
    alternate split including the prefix, cosine similarity of the head-averaged keys, the r
    best A -> B edges; output order prefix, kept A (sequence order with a class token, else
    best score first, as the paper's code), then B. Returns the groups of input positions."""
    n, p = len(view.tokens), view.num_prefix
    r = min(view.r, (n - p) // 2)
    if r <= 0:
        return [[i] for i in range(n)]
    unit = [view.key[i] / view.key[i].norm() for i in range(n)]
    b_pos = [j for j in range(1, n, 2) if j >= p]
    edges = []
    for i in range(0, n, 2):
        if i < p:
            continue
        best, partner = -math.inf, None
        for j in b_pos:
            s = float(unit[i] @ unit[j])
            if s > best:
                best, partner = s, j
        edges.append((best, i, partner))
    edges.sort(key=lambda e: -e[0])
    kept = [i for _, i, _ in edges[r:]]
    if view.class_token:
        kept.sort()
    into = {j: [j] for j in b_pos}
    for _, i, j in edges[:r]:
        into[j].append(i)
    return [[i] for i in range(p)] + [[i] for i in kept] + [into[j] for j in b_pos]


def wavg_of(tokens, size, group):
    """The size-weighted mean of a group's tokens."""
    total = sum(size[g] for g in group)
    return sum(tokens[g] * size[g] for g in group) / total


def mlerp_of(tokens, size, group):
    """MLERP of one group: the weighted mean's direction with the largest member norm."""
    avg = wavg_of(tokens, size, group)
    return avg / avg.norm() * max(float(tokens[g].norm()) for g in group)


def combine_step(group_fn, token_fn):
    """A rich reference step: groups from ``group_fn(view)``, each fused by ``token_fn``."""
    def step(view):
        groups = group_fn(view)
        tokens = [token_fn(view.tokens, view.size, g) for g in groups]
        return tokens, [sum(view.size[g] for g in grp) for grp in groups], groups
    return step


# ---- the rule alone, with every merging matcher's groups -------------------------------------

MERGERS = [("bipartite", {}), ("greedy", {}), ("kmeans", {}), ("random", {}),
           ("kth_bipartite", {}), ("random_bipartite", {}), ("bipartite", {"order": "sorted"})]


@pytest.mark.parametrize("name,options", MERGERS)
def test_mlerp_equals_a_per_group_float64_reference_for_every_merging_matcher(name, options):
    torch.manual_seed(1)
    b, n, c, r = 2, 13, 6, 5
    x = torch.randn(b, n, c, dtype=torch.float64)
    size = torch.randint(1, 5, (b, n, 1)).double()
    ctx = MatchContext(metric=torch.randn(b, n, 4, dtype=torch.float64), num_prefix=1, size=size,
                       x=x, class_token=True, block=1, depth=4)
    merge, _ = MATCHING.get(name)(ctx, r, **options)
    got, got_size = COMBINE.get("mlerp")(merge, x, size)
    groups = merge(torch.eye(n, dtype=torch.float64).expand(b, n, n), mode="amax")  # (B, N-r, N)
    assert got.shape == (b, n - r, c)
    for i in range(b):
        tokens, sizes = list(x[i]), size[i, :, 0].tolist()
        for j, row in enumerate(groups[i]):
            group = row.nonzero().flatten().tolist()
            want = mlerp_of(tokens, sizes, group)
            torch.testing.assert_close(got[i, j], want, rtol=1e-12, atol=1e-12)
            assert got_size[i, j, 0] == sum(sizes[g] for g in group)  # sizes add up
        assert any(len(row.nonzero()) > 1 for row in groups[i])  # something merged
    # the class token is untouched (one rounding of x / |x| * |x|) and stays first
    torch.testing.assert_close(got[:, 0], x[:, 0], rtol=1e-15, atol=0)


def test_mlerp_keeps_the_largest_norm_and_the_direction_of_the_weighted_mean():
    """Two tokens at right angles with sizes 3 and 1: wavg shrinks the norm, MLERP does not."""
    x = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    size = torch.tensor([[[1.0], [3.0], [1.0]]], dtype=torch.float64)
    ctx = MatchContext(metric=torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.1]]]), num_prefix=1,
                       size=size, x=x, class_token=True, depth=1)
    merge, _ = MATCHING.get("bipartite")(ctx, 1)
    got, s = COMBINE.get("mlerp")(merge, x, size)
    avg = torch.tensor([9.0, 1.0], dtype=torch.float64) / 4  # (3 * [3, 0] + 1 * [0, 1]) / 4
    torch.testing.assert_close(got[0, 1], avg / avg.norm() * 3.0)
    assert s[0, 1, 0] == 4.0
    wavg, _ = COMBINE.get("wavg")(merge, x, size)
    assert wavg[0, 1].norm() < 3.0 and got[0, 1].norm() == pytest.approx(3.0, rel=1e-15)


def test_mlerp_leaves_a_zero_mean_at_zero_and_pruned_tokens_unchanged():
    x = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [2.0, 2.0]]])  # 0 and 1 cancel
    ctx = MatchContext(metric=torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]), num_prefix=0,
                       x=x, depth=1)
    merge, _ = MATCHING.get("bipartite")(ctx, 1)
    got, _ = COMBINE.get("mlerp")(merge, x, None)
    assert torch.isfinite(got).all() and (got == 0).all(dim=-1).any()
    ctx = MatchContext(metric=None, num_prefix=0, x=x, depth=1)
    merge, _ = MATCHING.get("truncate")(ctx, 1)
    got, _ = COMBINE.get("mlerp")(merge, x, None)
    torch.testing.assert_close(got, x[:, :2])


# ---- end to end through a model ---------------------------------------------------------------

# the reference runs one token at a time in Python: deit_t (197 tokens) takes over 3 s
@pytest.mark.parametrize("key,r", [("avg_no_cls", 4),
                                   pytest.param("avg_no_cls", 8, marks=pytest.mark.full),
                                   pytest.param("deit_t", 4, marks=pytest.mark.full),
                                   pytest.param("deit_t", 8, marks=pytest.mark.full)])
def test_bipartite_with_mlerp_equals_reference(key, r):
    m, images = _model(key)
    want = reference_forward(m, images, r, True, step=combine_step(bipartite_groups, mlerp_of),
                             rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, combine="mlerp")
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    # ... and MLERP is not wavg by another name (test_reference holds wavg to its reference)
    with torch.no_grad():
        wavg = tome_lab.apply_tome(copy.deepcopy(m), r=r)(images)
    assert not torch.allclose(got, wavg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", PREFIX_LAYOUTS)
def test_mlerp_protects_the_prefix_and_sizes_sum_to_the_input_count(name):
    m = tiny_vit(name, depth=3)
    tome_lab.apply_tome(m, r=4, combine="mlerp", matching="kmeans", trace_source=True)
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    st = tome_lab.tome_state(m)
    p = st.spec.num_prefix
    eye = torch.eye(st.spec.num_tokens)[:p]
    assert torch.equal(st.source[:, :p], eye.expand(2, -1, -1))  # each prefix token alone
    assert (st.size.sum(dim=1) == st.spec.num_tokens).all()


def test_mlerp_compiles_in_one_graph_and_equals_eager():
    from test_compile import _compiled_equals_eager

    m = tome_lab.apply_tome(tiny_vit(), r=3, combine="mlerp")
    _compiled_equals_eager(m, torch.randn(2, 3, 64, 64))


def test_mlerp_adds_no_products_to_the_count():
    """The norms and the rescale are element-wise: the analytic count is bipartite's."""
    m = tiny_vit(depth=3, img_size=96)
    a = tome_lab.tome_state(tome_lab.apply_tome(m, r=5, combine="mlerp"))
    b = tome_lab.tome_state(tome_lab.apply_tome(m, r=5))
    assert analytic_gflops(a.spec, a.r) == analytic_gflops(b.spec, b.r)


def schedule_hits_target(options, target, fvcore=False):
    """``schedule="flops"`` on DeiT-T (224 px) lands within 1% of ``target`` GFLOPs: the
    analytic count, and with ``fvcore`` the traced one too (which equals it)."""
    import timm

    m = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    tome_lab.apply_tome(m, schedule="flops", gflops=target, **options)
    st = tome_lab.tome_state(m)
    want = analytic_gflops(st.spec, st.r)
    assert want == pytest.approx(target, rel=0.01)
    if fvcore:
        got = tome_lab.count_flops(m)
        assert got == pytest.approx(want, rel=1e-9)
        assert got == pytest.approx(target, rel=0.01)
