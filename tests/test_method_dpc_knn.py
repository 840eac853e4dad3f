"""DPC-KNN (TCFormer's clustering, as in Haurum et al., ICCVW 2023) against a naive float64
density-peaks clustering, FLOPs, compile, capabilities and options.

The reference runs one image at a time with Python loops over tokens: d_ij = ||x_i - x_j|| /
sqrt(C), the local density exp(-mean d^2 over the k nearest tokens, itself included), the
distance to the nearest denser token (the largest distance for the densest), the K largest
products of the two as centres, and every token at its nearest centre.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_vit
from test_reference import compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import capabilities
from tome_lab.registry import MATCHING


def _dpc_step(k=5, keep=False):
    """One block of DPC-KNN on one image; ``keep``: each cluster is its centre's token."""

    def step(view):
        n, p = len(view.tokens), view.num_prefix
        r = min(view.r, n - p - 1)
        x, idx = view.tokens, list(range(p, n))
        root_c = math.sqrt(x[0].shape[0])
        d = {(i, i): 0.0 for i in idx}
        for i in idx:
            for j in idx:
                if i < j:
                    d[i, j] = d[j, i] = float((x[i] - x[j]).norm()) / root_c
        rho = {}
        for i in idx:
            near = sorted(d[i, j] for j in idx)[:k]  # itself (0) included
            rho[i] = math.exp(-sum(v * v for v in near) / len(near))
        d_max = max(d.values())
        delta = {}
        for i in idx:
            denser = [j for j in idx if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
            delta[i] = min(d[i, j] for j in denser) if denser else d_max
        n_centres = len(idx) - r
        centres = sorted(idx, key=lambda i: (-rho[i] * delta[i], i))[:n_centres]
        slot_of = {c: q for q, c in enumerate(centres)}
        cl = {i: slot_of[i] if i in slot_of else
              min(range(n_centres), key=lambda q: (d[i, centres[q]], q)) for i in idx}
        order = sorted(range(n_centres), key=lambda q: centres[q])
        groups = [[i] for i in range(p)] + [[i for i in idx if cl[i] == q] for q in order]
        size = [sum(view.size[g] for g in grp) for grp in groups]
        if keep:
            tokens = [x[i] for i in range(p)] + [x[centres[q]] for q in order]
        else:
            tokens = [sum(x[g] * view.size[g] for g in grp) / s
                      for grp, s in zip(groups, size, strict=True)]
        return tokens, size, groups

    return step


def _compare(key, r, k=None, combine="wavg"):
    opts = {} if k is None else {"k": k}
    step = _dpc_step(5 if k is None else k, keep=combine == "keep")
    return compare_rich(key, r, step, matching="dpc_knn", combine=combine, **opts)


# deit_t (class token) at r = 8 and 16, avg_no_cls (no class token) at r = 8 and 20 (20 removes
# more than half of its third block's tokens, and its last block has fewer than k tokens);
# one of each layout fast
@pytest.mark.parametrize("key,r", [
    ("deit_t", 8), pytest.param("deit_t", 16, marks=pytest.mark.full),
    pytest.param("avg_no_cls", 8, marks=pytest.mark.full), ("avg_no_cls", 20)])
def test_dpc_knn_equals_reference(key, r):
    got, want, st = _compare(key, r)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("k", [1, 12])
def test_k_option_equals_reference(k):
    got, want, _ = _compare("avg_no_cls", 20, k=k)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert not torch.allclose(got, _compare("avg_no_cls", 20)[0], atol=1e-6)  # k is used


def test_keep_gives_the_centre_tokens():
    got, want, _ = _compare("avg_no_cls", 20, combine="keep")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_capabilities():
    caps = capabilities(MATCHING.get("dpc_knn"))
    assert caps.uses == frozenset({"combine", "keep"})  # clusters tokens, not the metric
    assert (caps.reduction, caps.bound, caps.sources, caps.unmerge) == ("merge", "all_but_one",
                                                                        True, True)
    assert not caps.sizes and not caps.stochastic and caps.fullgraph and not caps.attention
    with pytest.raises(ValueError, match="distance"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="dpc_knn", distance="dot")
    assert MATCHING.canonical("dpc-knn") == MATCHING.canonical("dpcknn") == "dpc_knn"


@pytest.mark.parametrize("bad", [0, -2, 2.0, "5", False])
def test_bad_k_is_refused_at_patch_time(bad):
    with pytest.raises(ValueError, match=r"int k >= 1.*got"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="dpc_knn", k=bad)


def test_analytic_flops_count_the_gram_matrix():
    m = tiny_vit(depth=3, img_size=96)  # 36 patches + class token, width 64
    tome_lab.apply_tome(m, r=[20, 5, 3], matching="dpc_knn", k=3)
    st = tome_lab.tome_state(m)
    own = sum(mm * mm * 64 for mm in (36, 16, 11))  # unprotected tokens entering each block
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert got == pytest.approx(own / 1e9, rel=1e-12)
