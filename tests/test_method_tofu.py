"""ToFu (Kim et al., WACV 2024) against a float64 reference written with loops: ToMe's bipartite
soft matching in every block, each group fused by keeping its destination before the switch
block and by MLERP (the size-weighted mean's direction, the largest member norm) from it on."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_vit
from test_method_mlerp import bipartite_groups, mlerp_of
from test_reference import _model, reference_forward

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, capabilities

# a distillation token (two prefix tokens) and four registers without a class token
PREFIX_LAYOUTS = ["deit_tiny_distilled_patch16_224", "vit_base_patch16_reg4_gap_256"]


def tofu_step(switch=None):
    """The rich reference step; ``switch`` None is depth // 2 + 1."""
    def step(view):
        first = view.depth // 2 + 1 if switch is None else switch
        groups = bipartite_groups(view)
        if view.block < first:  # pruning-style: the destination (a group's first) stays
            tokens = [view.tokens[g[0]] for g in groups]
        else:
            tokens = [mlerp_of(view.tokens, view.size, g) for g in groups]
        return tokens, [sum(view.size[g] for g in grp) for grp in groups], groups
    return step


# the reference runs one token at a time in Python: deit_t (197 tokens) takes over 3 s
@pytest.mark.parametrize("key,r,switch", [
    ("avg_no_cls", 8, 1), pytest.param("avg_no_cls", 4, None, marks=pytest.mark.full),
    pytest.param("deit_t", 4, None, marks=pytest.mark.full),
    pytest.param("deit_t", 8, 2, marks=pytest.mark.full)])
def test_tofu_equals_reference(key, r, switch):
    m, images = _model(key)
    want = reference_forward(m, images, r, True, step=tofu_step(switch), rich=True)
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, matching="tofu",
                                  **({} if switch is None else {"switch": switch}))
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    # both phases matter: neither all-keep nor all-MLERP computes the same
    for other in (0, len(m.blocks)):
        with torch.no_grad():
            alt = tome_lab.apply_tome(copy.deepcopy(m), r=r, matching="tofu", switch=other)(images)
        assert not torch.allclose(got, alt, rtol=1e-4, atol=1e-6)


def test_tofu_switch_default_is_after_the_middle_block():
    from tome_lab.matching.tofu import switch_block

    assert switch_block(12) == 7 and switch_block(6) == 4 and switch_block(12, 3) == 3


def test_tofu_refuses_another_combine_and_a_bad_switch():
    m = tiny_vit()
    with pytest.raises(ValueError, match="combine='mean' cannot go with matching='tofu'"):
        tome_lab.apply_tome(m, r=2, matching="tofu", combine="mean")
    with pytest.raises(ValueError, match="combine='keep' cannot go"):
        tome_lab.apply_tome(m, r=2, matching="tofu", combine="keep")
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=f"tofu switch must be None .* got {bad!r}"):
            tome_lab.apply_tome(m, r=2, matching="tofu", switch=bad)
    with pytest.raises(ValueError, match="option 'swich' is not taken by matching 'tofu'"):
        tome_lab.apply_tome(m, r=2, matching="tofu", swich=1)


def test_tofu_capabilities():
    caps = capabilities(MATCHING.get("token_fusion"))
    assert caps.uses == {"metric", "partition"} and caps.reduction == "merge"
    assert caps.bound == "half" and caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.attention and not caps.sizes


def test_tofu_counts_bipartite_products():
    """Its own products are bipartite's one [Na, Nb] similarity per merging block."""
    m = tiny_vit(depth=3, img_size=96)  # 37 tokens: every block merges
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=5, matching="tofu"))
    own = sum(((n + 1) // 2) * (n // 2) * 16 for n in (37, 32, 27))
    cost = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert round(cost * 1e9) == own
    b = tome_lab.tome_state(tome_lab.apply_tome(m, r=5))
    assert analytic_gflops(st.spec, st.r) == analytic_gflops(b.spec, b.r)
