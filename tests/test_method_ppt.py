"""PPT (Wu et al., 2023) against a float64 reference written from the method's rule (as the
official code computes it), one image at a time: each unprotected token's significance, the
class token's attention summed over heads times the norm of its value vector, normalised over
the unprotected tokens; the unbiased variance of those scores against the threshold; at or
above it the r least significant tokens are dropped and the others kept in descending order
of significance, below it r tokens are merged by ToMe's bipartite soft matching (the
reference's own loop version, ``test_reference._merge``). The reference shares no code with
the plug-in's batched scores, sorts and gathers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requested_stats, tiny_vit
from test_reference import _merge, _model, compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, capabilities


def ppt_step(threshold=7e-5, decisions=None):
    """One block of PPT on one image (a rich reference step, see ``BlockView``); appends
    "prune" or "pool" to ``decisions`` for each block that reduces."""
    def step(view):
        n, p = len(view.tokens), view.num_prefix
        m = n - p
        r = min(view.r, m // 2)
        if r <= 0:
            return view.tokens, view.size, [[i] for i in range(n)]
        heads = view.probs.shape[0]
        if view.class_token:  # the class token's attention to j, summed over heads
            a = [sum(float(view.probs[h, 0, j]) for h in range(heads)) for j in range(n)]
        else:  # no class token: the mean attention j receives over heads and queries
            a = [float(view.probs[:, :, j].sum()) / (heads * n) for j in range(n)]
        vnorm = [math.sqrt(sum(float(view.v[h, j] @ view.v[h, j]) for h in range(heads)))
                 for j in range(n)]
        raw = {j: a[j] * vnorm[j] for j in range(p, n)}
        total = sum(raw.values())
        s = {j: raw[j] / total for j in raw}
        mean = sum(s.values()) / m
        var = sum((v - mean) ** 2 for v in s.values()) / (m - 1)
        if var >= threshold:  # a few tokens carry the attention: prune the others
            if decisions is not None:
                decisions.append("prune")
            kept = list(range(p)) + sorted(s, key=lambda j: -s[j])[:m - r]
            return ([view.tokens[j] for j in kept], [view.size[j] for j in kept],
                    [[j] for j in kept])
        if decisions is not None:
            decisions.append("pool")
        tokens, size = _merge(view.tokens, view.size, view.key, r, p, view.class_token)
        return tokens, size, None  # PPT reads no positions
    return step


# thresholds chosen so that each run takes both branches (the significance variance grows
# with depth on these random models; the test asserts the mix): deit_t at r = 8 (class
# token; blocks 0-2 pool, block 3 pools one image and prunes the other, 4-5 prune) and at
# r = 4; avg_no_cls (no class token: the attention received) at the default threshold
# (blocks 0-1 pool, 2-3 prune) and, with plain attention, whose scores spread less, at 5e-6
# (block 3 prunes); the distilled layout with plain attention (block 1 pools one image and
# prunes the other)
CASES = [
    pytest.param("deit_t", 8, 5e-6, True, id="deit_t-r8"),
    pytest.param("deit_t", 4, 5e-6, True, id="deit_t-r4", marks=pytest.mark.full),
    pytest.param("avg_no_cls", 8, 7e-5, True, id="avg_no_cls-r8"),
    pytest.param("avg_no_cls", 12, 5e-6, False, id="avg_no_cls-r12-plain",
                 marks=pytest.mark.full),
    pytest.param("deit_s_distilled", 6, 1.8e-6, False, id="distilled-plain"),
    pytest.param("registers", 9, 7e-5, True, id="registers", marks=pytest.mark.full),
]


@pytest.mark.parametrize("key,r,threshold,prop_attn", CASES)
def test_ppt_equals_reference(key, r, threshold, prop_attn):
    decisions = []
    got, want, st = compare_rich(key, r, ppt_step(threshold, decisions), prop_attn,
                                 matching="ppt", threshold=threshold)
    assert {"prune", "pool"} <= set(decisions)  # both branches ran
    assert st.tokens[-1] < st.spec.num_tokens
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("threshold,kind", [(0.0, "prune"), (1.0, "pool")])
def test_threshold_extremes_give_pruning_or_tome(threshold, kind):
    """Threshold 0 prunes in every block (sizes stay one), a threshold above any variance
    pools everywhere: PPT is then ToMe (bipartite) itself."""
    m, images = _model("avg_no_cls")
    patched = tome_lab.apply_tome(m, r=8, matching="ppt", threshold=threshold,
                                  trace_source=True)
    with torch.no_grad():
        got = patched(images)
    st = tome_lab.tome_state(patched)
    if kind == "prune":
        assert (st.size == 1).all() and st.size.shape[1] == st.tokens[-1]
    else:
        tome = tome_lab.apply_tome(_model("avg_no_cls")[0], r=8)
        with torch.no_grad():
            torch.testing.assert_close(got, tome(images), rtol=0, atol=0)
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), 64.0,
                                                               dtype=torch.float64))


def test_decision_is_per_image():
    """One batch, two images on either side of the threshold: one prunes, one pools."""
    from tome_lab.matching import AttentionStats, MatchContext
    from tome_lab.matching.ppt import ppt

    n, p = 9, 1
    cls = torch.full((2, 1, n), 1.0 / n, dtype=torch.float64)
    cls[1, 0, 1:] = torch.tensor([0.6, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    v = torch.ones(2, 1, n, 4, dtype=torch.float64)
    torch.manual_seed(0)
    x = torch.randn(2, n, 4, dtype=torch.float64)
    ctx = MatchContext(metric=x, num_prefix=p, x=x, v=v, class_token=True,
                       attn=AttentionStats(cls=cls))
    merge, unmerge = ppt(ctx, 2, threshold=1e-3)
    out, size = merge.wavg(x, torch.ones(2, n, 1, dtype=torch.float64))
    assert size[0].sum() == n and size[1].sum() == n - 2  # image 0 pooled, image 1 pruned
    # image 1 keeps the prefix, then 1 (0.6), 2 (0.1) and the first four of the tied 0.05s
    torch.testing.assert_close(out[1], x[1, [0, 1, 2, 3, 4, 5, 6]])
    back = unmerge(out)
    assert (back[1, 7:] == 0).all() and (back[1, :7] == x[1, :7]).all()
    assert (back[0] != 0).all()  # pooled: every position gets its group's token


def test_ppt_capabilities():
    caps = capabilities(MATCHING.get("ppt"))
    assert caps.uses == {"metric"} and caps.reduction == "prune" and caps.bound == "half"
    assert caps.attention == {"cls", "received"}
    assert caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.positions and not caps.sizes
    assert requested_stats("ppt") == (("cls",), ("received",))


def test_ppt_refuses_bad_options_and_other_knobs():
    m = tiny_vit()
    with pytest.raises(ValueError, match="ppt threshold must be a number >= 0"):
        tome_lab.apply_tome(m, r=2, matching="ppt", threshold=-1.0)
    with pytest.raises(ValueError, match="option 'treshold' .* Did you mean 'threshold'"):
        tome_lab.apply_tome(m, r=2, matching="ppt", treshold=1e-4)
    with pytest.raises(ValueError, match="combine='mean' cannot go with matching='ppt'"):
        tome_lab.apply_tome(m, r=2, matching="ppt", combine="mean")
    with pytest.raises(ValueError, match="partition='halves' cannot go with matching='ppt'"):
        tome_lab.apply_tome(m, r=2, matching="ppt", partition="halves")
    with pytest.raises(ValueError, match="bound \\('half'\\) allows at most 8"):
        tome_lab.apply_tome(tiny_vit(), r=[9, 0, 0], matching="ppt")


@pytest.mark.parametrize("name,queries", [("deit_tiny_patch16_224", 1),
                                          ("vit_medium_patch16_gap_256", None)])
def test_ppt_counts_its_statistic_and_one_similarity(name, queries):
    m = tiny_vit(name, depth=3, img_size=96)
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=[15, 5, 3], matching="ppt"))
    n0 = st.spec.num_tokens
    ns = [n0, n0 - 15, n0 - 20]
    own = sum((queries or n) * n * st.spec.attn_dim + ((n + 1) // 2) * (n // 2)
              * st.spec.head_dim for n in ns)
    cost = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert round(cost * 1e9) == own
