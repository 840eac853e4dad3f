"""PiToMe (Tran et al., NeurIPS 2024) against a float64 reference written with loops from the
method's equations: per block, the cosine graph of the unprotected tokens' head-averaged keys,
energies E_i = mean_j ELU(s_ij - m) with m = 0.9 (1 - block / depth), the 2r highest-energy
tokens split alternately by energy into A and B, every A token merged into its most similar B
token by a size-weighted mean, the others protected."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_vit
from test_method_mlerp import combine_step, wavg_of
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, MatchContext, capabilities
from tome_lab.merge import merge_wavg

# a distillation token (two prefix tokens) and four registers without a class token
PREFIX_LAYOUTS = ["deit_tiny_distilled_patch16_224", "vit_base_patch16_reg4_gap_256"]


def pitome_groups(view, margin=0.9, alpha=1.0):
    """PiToMe's groups on one image (prefix first, protected by descending energy, then B by
    descending energy, each with the A tokens merged into it)."""
    n, p = len(view.tokens), view.num_prefix
    r = min(view.r, (n - p) // 2)
    if r <= 0:
        return [[i] for i in range(n)]
    m = margin * (1 - view.block / view.depth)
    idx = list(range(p, n))
    unit = {i: view.key[i] / view.key[i].norm() for i in idx}

    def f(s):  # ELU below the margin
        return s - m if s - m > 0 else alpha * (math.exp(s - m) - 1)

    energy = {i: sum(f(float(unit[i] @ unit[j])) for j in idx) / len(idx) for i in idx}
    ranked = sorted(idx, key=lambda i: -energy[i])  # stable: ties keep sequence order
    cand, protected = ranked[:2 * r], ranked[2 * r:]
    a_set, b_set = cand[0::2], cand[1::2]
    into = {j: [j] for j in b_set}
    for i in a_set:
        best, partner = -math.inf, None
        for j in b_set:
            s = float(unit[i] @ unit[j])
            if s > best:
                best, partner = s, j
        into[partner].append(i)
    return [[i] for i in range(p)] + [[i] for i in protected] + [into[j] for j in b_set]


# the reference runs one token at a time in Python: deit_t (197 tokens) takes over 3 s
@pytest.mark.parametrize("key,r", [("avg_no_cls", 8),
                                   pytest.param("avg_no_cls", 4, marks=pytest.mark.full),
                                   pytest.param("deit_t", 4, marks=pytest.mark.full),
                                   pytest.param("deit_t", 8, marks=pytest.mark.full)])
def test_pitome_equals_reference(key, r):
    m, images = _model(key)
    want = reference_forward(m, images, r, True, step=combine_step(pitome_groups, wavg_of),
                             rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, matching="pitome")
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    with torch.no_grad():  # and it is not bipartite matching by another name
        tome = tome_lab.apply_tome(copy.deepcopy(m), r=r)(images)
    assert not torch.allclose(got, tome, rtol=1e-4, atol=1e-6)


def test_pitome_protects_isolated_tokens_and_merges_the_cluster():
    """Six near-duplicates and two isolated tokens, r=2: the isolated ones are never merged."""
    torch.manual_seed(0)
    base = torch.randn(1, 1, 8, dtype=torch.float64)
    cluster = base + 0.01 * torch.randn(1, 6, 8, dtype=torch.float64)
    iso = torch.randn(1, 2, 8, dtype=torch.float64) * torch.tensor([1.0, -1.0])[None, :, None]
    metric = torch.cat([torch.randn(1, 1, 8, dtype=torch.float64), cluster[:, :3], iso,
                        cluster[:, 3:]], dim=1)  # the class token, then 8 tokens
    x = torch.randn(1, 9, 4, dtype=torch.float64)
    ctx = MatchContext(metric=metric, num_prefix=1, x=x, class_token=True, block=0, depth=1)
    merge, _ = MATCHING.get("pitome")(ctx, 2)
    groups = merge(torch.eye(9, dtype=torch.float64)[None], mode="amax")[0]
    merged = {tuple(row.nonzero().flatten().tolist()) for row in groups if row.sum() > 1}
    assert len(merged) == 2 and all(set(g) <= {1, 2, 3, 6, 7, 8} for g in merged)
    out, size = merge_wavg(merge, x)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token is untouched and first
    assert size.sum() == 9


def test_pitome_margin_falls_with_depth_as_the_paper_says():
    from tome_lab.matching.pitome import block_margin

    assert [round(block_margin(0.9, i, 12), 10) for i in (0, 6, 11)] == [0.9, 0.45, 0.075]


def test_pitome_options_are_checked_at_configuration():
    m = tiny_vit()
    for bad, match in ((dict(margin=1.5), "margin must lie in \\[-1, 1\\].* got 1.5"),
                       (dict(margin="0.9"), "margin must be a finite number, got '0.9'"),
                       (dict(alpha=0.0), "alpha must be > 0.* got 0.0"),
                       (dict(alpha=math.nan), "alpha must be a finite number"),
                       (dict(margn=0.5), "option 'margn' is not taken by matching 'pitome'")):
        with pytest.raises(ValueError, match=match):
            tome_lab.apply_tome(m, r=2, matching="pitome", **bad)
    with pytest.raises(ValueError, match="partition='halves' cannot go with matching='pitome'"):
        tome_lab.apply_tome(m, r=2, matching="pitome", partition="halves")
    tome_lab.apply_tome(m, r=2, matching="pitome", margin=0.5, alpha=2.0, combine="mlerp")


def test_pitome_capabilities():
    caps = capabilities(MATCHING.get("pitome"))
    assert caps.uses == {"metric", "combine", "keep"} and caps.reduction == "merge"
    assert caps.bound == "half" and caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.attention and not caps.sizes


def test_pitome_unmerge_copies_each_group_back():
    torch.manual_seed(2)
    x = torch.randn(2, 11, 5)
    ctx = MatchContext(metric=torch.randn(2, 11, 4), num_prefix=1, x=x, class_token=True,
                       block=1, depth=4)
    merge, unmerge = MATCHING.get("pitome")(ctx, 4)
    groups = merge(torch.eye(11)[None].expand(2, -1, -1), mode="amax")  # (B, 7, 11)
    y = torch.randn(2, 7, 5)
    torch.testing.assert_close(unmerge(y), groups.transpose(1, 2) @ y)


def test_pitome_counts_its_similarity_graph():
    """Its own products: one [M, M] similarity of the M unprotected tokens per merging block."""
    m = tiny_vit(depth=3, img_size=96)  # 37 tokens, one class token
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=5, matching="pitome"))
    own = sum((n - 1) * (n - 1) * 16 for n in (37, 32, 27))
    cost = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert round(cost * 1e9) == own
