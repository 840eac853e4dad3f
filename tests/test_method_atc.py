"""ATC (Haurum et al., ECCV 2024) against a naive float64 agglomerative clustering, FLOPs,
compile, capabilities and options.

The reference clusters one image at a time with dictionaries of cluster-pair distances, each
recomputed from its definition over member pairs (single: the closest pair, complete: the
farthest, average: the mean over all pairs) on the cosine distance 1 - cos of the head-averaged
keys, until N - p - r clusters remain; it shares no code with the plug-in's batched
Lance-Williams updates.
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
from tome_lab.matching.atc import LINKAGES
from tome_lab.registry import MATCHING

LINK = {"single": min, "complete": max, "average": lambda ds: sum(ds) / len(ds)}


def _apply_groups(view, groups):
    """Size-weighted mean tokens and summed sizes of ``groups`` (lists of input positions)."""
    tokens = [sum(view.tokens[g] * view.size[g] for g in grp) / sum(view.size[g] for g in grp)
              for grp in groups]
    return tokens, [sum(view.size[g] for g in grp) for grp in groups], groups


def _atc_step(linkage):
    """One block of ATC on one image, written from the definition of agglomerative clustering."""
    link = LINK[linkage]

    def step(view):
        n, p = len(view.tokens), view.num_prefix
        r = min(view.r, n - p - 1)  # a clustering keeps at least one cluster
        unit = [view.key[i] / view.key[i].norm() for i in range(n)]
        d = {}
        for a in range(p, n):
            for b in range(a + 1, n):
                d[a, b] = d[b, a] = 1.0 - float(unit[a] @ unit[b])
        clusters = {a: [a] for a in range(p, n)}  # keyed by the lowest member
        dist = {(a, b): d[a, b] for a in clusters for b in clusters if a < b}
        for _ in range(max(r, 0)):
            # the closest pair; on a tie, the lowest (first cluster, second cluster)
            (a, b), _ = min(dist.items(), key=lambda kv: (kv[1], kv[0]))
            clusters[a] = clusters[a] + clusters.pop(b)
            for c in clusters:
                dist.pop((min(b, c), max(b, c)), None)
            for c in clusters:
                if c != a:
                    pair = (min(a, c), max(a, c))
                    dist[pair] = link([d[x, y] for x in clusters[a] for y in clusters[c]])
        groups = [[i] for i in range(p)] + [sorted(clusters[a]) for a in sorted(clusters)]
        return _apply_groups(view, groups)

    return step


def _compare(key, r, linkage, prop_attn=True):
    opts = {} if linkage == "complete" else {"linkage": linkage}
    return compare_rich(key, r, _atc_step(linkage), prop_attn, matching="atc", **opts)


# deit_t (class token, 196 patches) at r = 8 and 16; avg_no_cls (no class token, 64 patches)
# at r = 8 and 20 (20 removes more than half of the tokens in its third block): every linkage
# fast on avg_no_cls, the default fast on deit_t, the rest in the full tier
CASES = [pytest.param(key, r, link, marks=() if fast else pytest.mark.full,
                      id=f"{key}-r{r}-{link}")
         for key, rs in (("deit_t", (8, 16)), ("avg_no_cls", (8, 20)))
         for r in rs for link in LINKAGES
         for fast in [key == "avg_no_cls" and r == 20 or key == "deit_t" and r == 8
                      and link == "complete"]]


@pytest.mark.parametrize("key,r,linkage", CASES)
def test_atc_equals_reference(key, r, linkage):
    got, want, st = _compare(key, r, linkage)
    assert st.tokens[-1] < st.spec.num_tokens  # something was merged
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_atc_plain_attention_equals_reference():
    got, want, _ = _compare("avg_no_cls", 8, "average", prop_attn=False)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_linkages_give_different_clusterings():
    """The linkage option is used: single and complete linkage cluster differently."""
    m, images = _model("avg_no_cls")
    outs = []
    for link in ("single", "complete"):
        patched = tome_lab.apply_tome(copy.deepcopy(m), r=20, matching="atc", linkage=link)
        with torch.no_grad():
            outs.append(patched(images))
    assert not torch.allclose(*outs, atol=1e-6)


def test_capabilities():
    caps = capabilities(MATCHING.get("atc"))
    assert caps.uses == frozenset({"metric", "combine"})  # no destination token to keep
    assert (caps.reduction, caps.bound, caps.sources, caps.unmerge) == ("merge", "all_but_one",
                                                                        True, True)
    assert not caps.sizes and not caps.stochastic and caps.fullgraph and not caps.attention
    with pytest.raises(ValueError, match="keep"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="atc", combine="keep")


def test_bad_linkage_is_refused_at_patch_time():
    with pytest.raises(ValueError, match=r"'ward'.*valid: single, complete, average"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="atc", linkage="ward")
    with pytest.raises(ValueError, match="option 'linkages'"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="atc", linkages="single")


def test_analytic_flops_count_the_similarity():
    m = tiny_vit(depth=3, img_size=96)  # 36 patches + class token
    tome_lab.apply_tome(m, r=[20, 5, 3], matching="atc", feature="x", head_agg="concat")
    st = tome_lab.tome_state(m)
    ms = [36, 16, 11]  # unprotected tokens entering each block
    own = sum(mm * mm * st.spec.embed_dim for mm in ms)
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert got == pytest.approx(own / 1e9, rel=1e-12)
