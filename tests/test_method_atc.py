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
import timm
import torch
from conftest import tiny_vit
from test_reference import _model, reference_forward

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
    m, images = _model(key)
    want = reference_forward(m, images, r, prop_attn, step=_atc_step(linkage), rich=True)
    opts = {} if linkage == "complete" else {"linkage": linkage}
    patched = tome_lab.apply_tome(copy.deepcopy(m), r=r, prop_attn=prop_attn, matching="atc",
                                  **opts)
    with torch.no_grad():
        got = patched(images)
    return got, want, tome_lab.tome_state(patched)


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


def test_atc_removes_more_than_half_in_one_block():
    """The bound is all_but_one: 16 patches go down to 3 clusters in the first block, where a
    bipartite matcher would stop at 8."""
    m = tiny_vit("vit_medium_patch16_gap_256")  # 16 patches, no prefix
    tome_lab.apply_tome(m, r=[13, 1, 1], matching="atc", trace_source=True)
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    st = tome_lab.tome_state(m)
    assert st.tokens == [3, 2, 1]
    torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), 16.0))
    assert capabilities(MATCHING.get("atc")).bound == "all_but_one"
    with pytest.raises(ValueError, match="bound"):  # 16 tokens cannot lose 16
        tome_lab.apply_tome(tiny_vit("vit_medium_patch16_gap_256"), r=16, matching="atc")


@pytest.mark.parametrize("name,kw", [("deit_tiny_distilled_patch16_224", {}),
                                     ("vit_base_patch16_reg4_gap_256", dict(reg_tokens=4))])
def test_prefix_untouched_and_sizes_sum_to_the_input(name, kw):
    m = tiny_vit(name, **kw)
    p, n0 = m.num_prefix_tokens, tome_lab.vit_spec(m).num_tokens
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want_prefix = m.forward_features(x)[:, :p]
    tome_lab.apply_tome(m, r=[10, 3, 1], matching="atc", trace_source=True)
    with torch.no_grad():
        feats = m.forward_features(x)
    st = tome_lab.tome_state(m)
    torch.testing.assert_close(st.source[:, :p], torch.eye(n0)[:p].expand(2, -1, -1))
    torch.testing.assert_close(st.size[:, :p], torch.ones(2, p, 1))
    torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)))
    assert (st.source.sum(1) == 1).all()  # every patch in exactly one token
    assert feats.shape[1] == n0 - 14
    assert not torch.allclose(feats[:, :p], want_prefix)  # they attend to merged tokens ...
    tome_lab.apply_tome(m, r=0, matching="atc")
    with torch.no_grad():  # ... and r = 0 leaves everything as it was
        torch.testing.assert_close(m.forward_features(x)[:, :p], want_prefix)


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


@pytest.mark.parametrize("linkage", LINKAGES)
def test_compiles_in_one_graph(linkage):
    torch._dynamo.reset()
    m = tome_lab.apply_tome(tiny_vit(), r=[6, 3, 2], matching="atc", linkage=linkage)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = m(x)
        got = torch.compile(m, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_analytic_flops_count_the_similarity():
    m = tiny_vit(depth=3, img_size=96)  # 36 patches + class token
    tome_lab.apply_tome(m, r=[20, 5, 3], matching="atc", feature="x", head_agg="concat")
    st = tome_lab.tome_state(m)
    ms = [36, 16, 11]  # unprotected tokens entering each block
    own = sum(mm * mm * st.spec.embed_dim for mm in ms)
    got = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert got == pytest.approx(own / 1e9, rel=1e-12)


@pytest.mark.full  # fvcore traces
@pytest.mark.parametrize("name,size,kw", [
    ("deit_tiny_patch16_224", 96, dict(depth=3)),
    ("vit_medium_patch16_gap_256", 64, dict(depth=4, embed_dim=96, num_heads=3)),
])
@pytest.mark.parametrize("linkage", ["complete", "average"])
def test_fvcore_equals_analytic(name, size, kw, linkage):
    m = timm.create_model(name, pretrained=False, img_size=size, **kw).eval()
    tome_lab.apply_tome(m, r=[9, 4, 2, 1][: len(m.blocks)], matching="atc", linkage=linkage)
    st = tome_lab.tome_state(m)
    got = tome_lab.count_flops(m, (3, size, size))
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)
    assert analytic_gflops(st.spec, st.r) > analytic_gflops(st.spec, st.r, False)


@pytest.mark.full  # fvcore trace of DeiT-T
def test_flops_schedule_hits_its_target():
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    target = 0.9
    tome_lab.apply_tome(m, schedule="flops", gflops=target, matching="atc")
    st = tome_lab.tome_state(m)
    got = tome_lab.count_flops(m)
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)
    assert got == pytest.approx(target, rel=0.01)
