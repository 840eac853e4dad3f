"""K-Medoids (Haurum et al., ICCVW 2023) against a naive float64 k-medoids, FLOPs, compile,
capabilities and options.

The reference runs one image at a time with Python loops over tokens: Euclidean distances
||x_i - x_j|| between the tokens, the attention each token receives (the block's attention
probabilities averaged over heads and queries), the K most attended tokens as the first
medoids, then ``iters`` rounds of nearest-medoid assignment and, per cluster, the member of
least sum_j w_j ||x_i - x_j|| over its members as the new medoid.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_vit
from test_reference import _model, compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import capabilities
from tome_lab.registry import MATCHING


def _kmedoids_step(iters=3, keep=False):
    """One block of K-Medoids on one image; ``keep``: each cluster is its medoid's token."""

    def step(view):
        n, p = len(view.tokens), view.num_prefix
        r = min(view.r, n - p - 1)
        x, idx = view.tokens, list(range(p, n))
        d = {(i, i): 0.0 for i in idx}
        for i in idx:
            for j in idx:
                if i < j:
                    d[i, j] = d[j, i] = float((x[i] - x[j]).norm())
        received = view.probs.mean(dim=(0, 1))  # (N,) over heads and queries
        w = {i: float(received[i]) for i in idx}
        k = len(idx) - r
        med = sorted(idx, key=lambda i: (-w[i], i))[:k]  # the most attended tokens

        def assign():
            slot_of = {c: q for q, c in enumerate(med)}
            return {i: slot_of[i] if i in slot_of else
                    min(range(k), key=lambda q: (d[i, med[q]], q)) for i in idx}

        for _ in range(iters):
            cl = assign()
            members = {q: [i for i in idx if cl[i] == q] for q in range(k)}
            for q in range(k):
                med[q] = min(members[q],
                             key=lambda i: (sum(w[j] * d[i, j] for j in members[q]), i))
        cl = assign()
        order = sorted(range(k), key=lambda q: med[q])  # clusters by their medoid's position
        groups = [[i] for i in range(p)] + [[i for i in idx if cl[i] == q] for q in order]
        size = [sum(view.size[g] for g in grp) for grp in groups]
        if keep:
            tokens = [x[i] for i in range(p)] + [x[med[q]] for q in order]
        else:
            tokens = [sum(x[g] * view.size[g] for g in grp) / s
                      for grp, s in zip(groups, size, strict=True)]
        return tokens, size, groups

    return step


def _compare(key, r, iters=None, combine="wavg"):
    opts = {} if iters is None else {"iters": iters}
    step = _kmedoids_step(3 if iters is None else iters, keep=combine == "keep")
    return compare_rich(key, r, step, matching="kmedoids", combine=combine, **opts)


# deit_t (class token) at r = 8 and 16, avg_no_cls (no class token) at r = 8 and 20 (20 removes
# more than half of its third block's tokens); one of each layout fast
@pytest.mark.parametrize("key,r", [
    ("deit_t", 8), pytest.param("deit_t", 16, marks=pytest.mark.full),
    pytest.param("avg_no_cls", 8, marks=pytest.mark.full), ("avg_no_cls", 20)])
def test_kmedoids_equals_reference(key, r):
    got, want, st = _compare(key, r)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("iters", [0, 1])
def test_iters_option_equals_reference(iters):
    """At r = 40 the second block's clusters are large enough for the update to move medoids
    (at small r the most attended tokens stay the weighted medoids of their clusters)."""
    got, want, _ = _compare("avg_no_cls", 40, iters=iters)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_iters_moves_medoids_at_high_reduction():
    m, images = _model("avg_no_cls")
    outs = []
    for iters in (0, 1):
        patched = tome_lab.apply_tome(copy.deepcopy(m), r=40, matching="kmedoids", iters=iters)
        with torch.no_grad():
            outs.append(patched(images))
    assert not torch.allclose(*outs, atol=1e-6)


def test_keep_gives_the_medoid_tokens():
    """combine='keep' outputs each cluster's medoid unaveraged, as the study's K-Medoids."""
    got, want, st = _compare("avg_no_cls", 20, combine="keep")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert st.tokens[-1] < st.spec.num_tokens


def test_capabilities():
    caps = capabilities(MATCHING.get("kmedoids"))
    assert caps.uses == frozenset({"combine", "keep"})  # clusters tokens, not the metric
    assert caps.attention == frozenset({"received"})
    assert (caps.reduction, caps.bound, caps.sources, caps.unmerge) == ("merge", "all_but_one",
                                                                        True, True)
    assert not caps.sizes and not caps.stochastic and caps.fullgraph
    with pytest.raises(ValueError, match="feature"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="kmedoids", feature="q")


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_bad_iters_is_refused_at_patch_time(bad):
    with pytest.raises(ValueError, match=r"int iters >= 0.*got"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="kmedoids", iters=bad)


def test_analytic_flops_count_the_gram_matrix_and_the_attention_statistics():
    m = tiny_vit(depth=3, img_size=96)  # 36 patches + class token
    tome_lab.apply_tome(m, r=[20, 5, 3], matching="kmedoids", iters=5)
    st = tome_lab.tome_state(m)
    ns = [37, 17, 12]  # tokens entering each block
    own = sum((n - 1) ** 2 * 64 + n * n * 64 for n in ns)  # Gram + q k^T of the statistics
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert got == pytest.approx(own / 1e9, rel=1e-12)
