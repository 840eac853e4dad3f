"""EViT (Liang et al., ICLR 2022) against a float64 reference written from the paper's rule,
one image at a time: rank the unprotected tokens by the class token's attention averaged over
heads, keep the N - p - r - 1 most attended in sequence order, and fuse all the others into
one token appended last, their class-attention-weighted average (or, ``fusion="sum"``, the
official code's unnormalised sum), of size the sum of theirs. The reference reads the
attention probabilities the reference model computes itself; it shares no code with the
plug-in's top-k and scatter."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import requested_stats, tiny_vit
from test_reference import _model, compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.matching import MATCHING, AttentionStats, MatchContext, capabilities
from tome_lab.matching.evit import evit, published_r


def evit_step(fusion="mean"):
    """One block of EViT on one image (a rich reference step, see ``BlockView``)."""
    def step(view):
        n, p = len(view.tokens), view.num_prefix
        r = min(view.r, n - p - 1)  # at least the fused token remains
        if r <= 0:
            return view.tokens, view.size, [[i] for i in range(n)]
        heads = view.probs.shape[0]
        if view.class_token:  # a_j: the class token's attention to j, averaged over heads
            a = [sum(float(view.probs[h, 0, j]) for h in range(heads)) / heads
                 for j in range(n)]
        else:  # no class token: the mean attention j receives over heads and queries
            a = [float(view.probs[:, :, j].sum()) / (heads * n) for j in range(n)]
        ranked = sorted(range(p, n), key=lambda j: -a[j])
        kept = sorted(ranked[:n - p - r - 1])
        inattentive = [j for j in range(p, n) if j not in kept]
        fused = sum(a[j] * view.tokens[j] for j in inattentive)
        if fusion == "mean":
            fused = fused / sum(a[j] for j in inattentive)
        singles = list(range(p)) + kept
        tokens = [view.tokens[j] for j in singles] + [fused]
        size = [view.size[j] for j in singles] + [sum(view.size[j] for j in inattentive)]
        return tokens, size, [[j] for j in singles] + [inattentive]
    return step


def _compare(key, r, fusion="mean", prop_attn=True):
    opts = {} if fusion == "mean" else {"fusion": fusion}
    return compare_rich(key, r, evit_step(fusion), prop_attn, matching="evit", **opts)


# deit_t (class token, 197 tokens, 6 blocks) at r = 8 and at a per-block list that removes more
# than half of a block's tokens (all_but_one); avg_no_cls (64 patches, no class token: the
# received-attention fallback) at r = 8 and 20 (20 fuses all but one token of the third
# block); the official sum and plain attention on a class + distillation layout
CASES = [
    pytest.param("deit_t", 8, "mean", True, id="deit_t-r8"),
    pytest.param("deit_t", [0, 120, 0, 40, 0, 0], "mean", True, id="deit_t-r120-40",
                 marks=pytest.mark.full),
    pytest.param("avg_no_cls", 20, "mean", True, id="avg_no_cls-r20"),
    pytest.param("avg_no_cls", 8, "mean", True, id="avg_no_cls-r8", marks=pytest.mark.full),
    pytest.param("deit_s_distilled", [40, 0, 10, 5], "sum", False, id="distilled-sum-plain"),
    pytest.param("deit_s_distilled", 6, "sum", True, id="distilled-sum-r6",
                 marks=pytest.mark.full),
    pytest.param("registers", 9, "mean", False, id="registers-plain", marks=pytest.mark.full),
]


@pytest.mark.parametrize("key,r,fusion,prop_attn", CASES)
def test_evit_equals_reference(key, r, fusion, prop_attn):
    got, want, st = _compare(key, r, fusion, prop_attn)
    assert st.tokens[-1] < st.spec.num_tokens  # something was fused
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def _ctx(cls_row, class_token=True):
    """One image of 1 + 6 tokens with channels 0..5 equal to the token index."""
    x = torch.arange(7, dtype=torch.float64)[None, :, None].expand(1, 7, 3).clone()
    row = torch.tensor([cls_row], dtype=torch.float64)  # (1, N)
    stats = (AttentionStats(cls=row[:, None].expand(1, 2, 7)) if class_token
             else AttentionStats(received=row))
    return MatchContext(metric=None, num_prefix=1, x=x, class_token=class_token, attn=stats)


@pytest.mark.parametrize("class_token", [True, False])
def test_evit_keeps_the_attended_and_fuses_the_rest(class_token):
    """Class attention [., .1, .3, .05, .2, .15, .2], r = 2: tokens 2, 4, 6 are kept (4 and 6
    tie with 0.2 but 5 has 0.15), 1, 3, 5 fused with weights .1, .05, .15."""
    ctx = _ctx([0.0, 0.1, 0.3, 0.05, 0.2, 0.15, 0.2], class_token)
    merge, unmerge = evit(ctx, 2)
    out, size = merge.wavg(ctx.x, torch.tensor([[[1.0], [1.0], [2.0], [3.0], [1.0], [4.0],
                                                 [1.0]]], dtype=torch.float64))
    fused = (0.1 * 1 + 0.05 * 3 + 0.15 * 5) / 0.3
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 2, 4, 6, fused],
                                                          dtype=torch.float64))
    assert size[0, :, 0].tolist() == [1.0, 2.0, 1.0, 1.0, 1.0 + 3.0 + 4.0]
    # every fused position reads the fused token back; sources: the union (amax)
    assert unmerge(out)[0, :, 0].tolist() == [0.0, fused, 2, fused, 4, fused, 6]
    src = merge(torch.eye(7, dtype=torch.float64)[None], mode="amax")[0]
    assert src[-1].tolist() == [0, 1, 0, 1, 0, 1, 0] and src.sum().item() == 7
    total, _ = evit(ctx, 2, fusion="sum")[0].wavg(ctx.x)
    assert total[0, -1, 0].item() == pytest.approx(0.1 * 1 + 0.05 * 3 + 0.15 * 5)
    # r = M - 1 fuses every unprotected token into one
    merge, _ = evit(ctx, 5)
    out, size = merge.wavg(ctx.x)
    assert out.shape[1] == 2 and size[0, :, 0].tolist() == [1.0, 6.0]
    with pytest.raises(ValueError, match="no destination token to keep"):
        evit(ctx, 2)[0](ctx.x, mode="keep")


def test_fusion_and_its_weights_matter():
    """The fused token changes the output: evit differs from pruning at the same r, and the
    official sum from the weighted average."""
    m, images = _model("avg_no_cls")
    outs = {}
    for name, opts in (("mean", {}), ("sum", {"fusion": "sum"}), ("prune", None)):
        patched = (tome_lab.apply_tome(copy.deepcopy(m), r=12, matching="pruning")
                   if opts is None else
                   tome_lab.apply_tome(copy.deepcopy(m), r=12, matching="evit", **opts))
        with torch.no_grad():
            outs[name] = patched(images)
    assert not torch.allclose(outs["mean"], outs["sum"], atol=1e-6)
    assert not torch.allclose(outs["mean"], outs["prune"], atol=1e-6)


def test_published_r_reproduces_the_official_counts():
    """DeiT-S at 224 px, keep rate 0.7 at blocks 4, 7, 10 (1-based): the code keeps
    ceil(0.7 M) attentive tokens plus the fused one, 197 -> 140 -> 100 -> 72 tokens."""
    rs = published_r(197, 1, 12)
    assert rs == [0, 0, 0, 57, 0, 0, 40, 0, 0, 28, 0, 0]
    m = tome_lab.apply_tome(tiny_vit(img_size=224, depth=12), r=rs, matching="evit")
    st = tome_lab.tome_state(m)
    assert tokens_per_layer(st.spec, st.r)[3::3] == [140, 100, 72]
    # schedule="stages" keeps ceil(0.7 M) unprotected tokens, the fused one among them
    st = tome_lab.tome_state(tome_lab.apply_tome(tiny_vit(img_size=224, depth=12),
                                                 schedule="stages", matching="evit"))
    assert st.r == [0, 0, 0, 58, 0, 0, 41, 0, 0, 29, 0, 0]
    with pytest.raises(ValueError, match="give at="):
        published_r(197, 1, 6)
    assert published_r(65, 1, 4, keep_rate=0.5, at=[1]) == [0, 31, 0, 0]


def test_evit_is_its_own_plugin_not_a_pruning_alias():
    assert "evit" in MATCHING.names() and "evit" not in MATCHING.aliases()
    assert MATCHING.get("evit") is evit and MATCHING.aliases()["prune"] == "pruning"


def test_evit_capabilities():
    caps = capabilities(MATCHING.get("evit"))
    assert caps.uses == frozenset() and caps.reduction == "merge"
    assert caps.bound == "all_but_one" and caps.attention == {"cls", "received"}
    assert caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.positions and not caps.sizes
    # the statistic depends on the layout: the class row, else the attention received
    assert requested_stats("evit") == (("cls",), ("received",))


def test_evit_refuses_bad_options_and_other_knobs():
    m = tiny_vit()
    with pytest.raises(ValueError, match="unknown evit fusion 'avg'; valid: mean, sum"):
        tome_lab.apply_tome(m, r=2, matching="evit", fusion="avg")
    with pytest.raises(ValueError, match="option 'fusoin' .* Did you mean 'fusion'"):
        tome_lab.apply_tome(m, r=2, matching="evit", fusoin="sum")
    with pytest.raises(ValueError, match="combine='mean' cannot go with matching='evit'"):
        tome_lab.apply_tome(m, r=2, matching="evit", combine="mean")
    with pytest.raises(ValueError, match="feature='x' cannot go with matching='evit'"):
        tome_lab.apply_tome(m, r=2, matching="evit", feature="x")
    # all_but_one: 16 patches, r = 15 is allowed (one fused token), 16 is not
    tome_lab.apply_tome(tiny_vit(), r=[15, 0, 0], matching="evit")
    with pytest.raises(ValueError, match="bound \\('all_but_one'\\) allows at most 15"):
        tome_lab.apply_tome(tiny_vit(), r=[16, 0, 0], matching="evit")


@pytest.mark.parametrize("name,queries", [("deit_tiny_patch16_224", 1),
                                          ("vit_medium_patch16_gap_256", None)])
def test_evit_counts_only_its_attention_statistic(name, queries):
    """The class row is one query per head (N x C), the attention received every query
    (N^2 x C); the fusion itself is element-wise."""
    m = tiny_vit(name, depth=3, img_size=96)  # 36 patches (+ a class token)
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=[20, 5, 3], matching="evit"))
    ns = [st.spec.num_tokens, st.spec.num_tokens - 20, st.spec.num_tokens - 25]
    own = sum((queries or n) * n * st.spec.attn_dim for n in ns)
    cost = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert round(cost * 1e9) == own
