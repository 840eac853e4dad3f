"""Zero-TPrune (Wang et al., CVPR 2024) against a float64 reference written from the paper's
equations, one image at a time: the Weighted PageRank s_i <- sum_j A(j, i) s_j per head (the
class token starting at sqrt(N) times the others), EIR's root mean square over the heads VHF
keeps, the I'-stage's one iteration partitioning the unprotected tokens (the less important
half is A), the S-stage pruning the r_S A tokens most similar (cosine of the head-averaged
keys) to some B token, and the I-stage's WPR over the survivors' renormalised graph pruning
the r_I least important. The reference sums over rows with plain Python indexing; it shares
no code with the plug-in's batched products, sorts and gathers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_vit
from test_reference import compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, capabilities
from tome_lab.matching.zero_tprune import split_r


def _importance(probs, idx, iters, class_token, var_min, var_max):
    """WPR + VHF + EIR over the graph of the tokens ``idx`` (rows renormalised)."""
    n, heads = len(idx), probs.shape[0]
    per_head, passing = [], []
    for h in range(heads):
        a = probs[h][idx][:, idx]
        a = a / a.sum(1, keepdim=True)  # the attention had the others been masked out
        w = [math.sqrt(n) if class_token and i == 0 else 1.0 for i in range(n)]
        s = torch.tensor(w, dtype=torch.float64) / sum(w)
        for _ in range(iters):  # s_i = sum_j A(j, i) s_j: what j's attention gives i
            s = (a * s[:, None]).sum(0)
        scaled = s * n
        var = float(((scaled - scaled.mean()) ** 2).mean())
        per_head.append(s)
        passing.append(var_min <= var <= var_max)
    if not any(passing):
        passing = [True] * heads
    used = [s for s, ok in zip(per_head, passing, strict=True) if ok]
    return [math.sqrt(sum(float(s[i]) ** 2 for s in used) / len(used)) for i in range(n)]


def _paper_iters(block, depth):
    """The paper's counts as its text gives them, at each range's low end: 30-50 in the first
    three layers, 1 in the last three, 5-10 in the middle ones."""
    if block in (0, 1, 2):
        return 30
    if block in range(depth - 3, depth):
        return 1
    return 5


def zero_tprune_step(iters=5, s_share=0.5, var_min=0.01, var_max=0.7):
    """One block of Zero-TPrune on one image (a rich reference step, see ``BlockView``)."""
    def step(view):
        its = _paper_iters(view.block, view.depth) if iters == "paper" else iters
        n, p = len(view.tokens), view.num_prefix
        m = n - p
        r = min(view.r, m - 1)
        if r <= 0:
            return view.tokens, view.size, [[i] for i in range(n)]
        r_s = min(int(r * s_share), m // 2)
        r_i = r - r_s
        alive = list(range(n))
        if r_s:
            imp = _importance(view.probs, alive, 1, view.class_token, var_min, var_max)
            ranked = sorted(range(p, n), key=lambda j: imp[j])  # least important first
            a_set, b_set = ranked[:m // 2], ranked[m // 2:]

            def cos(i, j):
                ki, kj = view.key[i], view.key[j]
                return float(ki @ kj) / (float(ki.norm()) * float(kj.norm()))

            best = {i: max(cos(i, j) for j in b_set) for i in a_set}
            gone = sorted(a_set, key=lambda i: -best[i])[:r_s]
            alive = [j for j in alive if j not in gone]
        if r_i:
            imp = _importance(view.probs, alive, its, view.class_token, var_min, var_max)
            ranked = sorted(range(p, len(alive)), key=lambda j: -imp[j])
            kept = sorted(ranked[:len(alive) - p - r_i])
            alive = alive[:p] + [alive[j] for j in kept]
        return ([view.tokens[j] for j in alive], [view.size[j] for j in alive],
                [[j] for j in alive])
    return step


# deit_t (class token, 197 tokens, 6 blocks) at r = 8 and at a list beyond half a block;
# avg_no_cls (64 patches, no class token: uniform initialisation) at r = 6 and 20; the
# I-stage alone, the S-stage as far as it goes, and VHF off, on the distilled layout
CASES = [
    pytest.param("deit_t", 8, {}, id="deit_t-r8"),
    pytest.param("deit_t", [0, 120, 0, 30, 0, 0], dict(iters=3), id="deit_t-r120-30",
                 marks=pytest.mark.full),
    pytest.param("avg_no_cls", 20, {}, id="avg_no_cls-r20"),
    # the paper's per-layer counts: 30 in blocks 0-2, 5 in block 3, 1 in blocks 4-6
    pytest.param("deit_t7", 4, dict(iters="paper", s_share=0.0), id="deit_t7-r4-paper"),
    pytest.param("avg_no_cls", 6, dict(iters=2, s_share=1.0), id="avg_no_cls-r6-s1",
                 marks=pytest.mark.full),
    pytest.param("deit_s_distilled", [30, 0, 10, 4], dict(s_share=0.0), id="distilled-i-only"),
    pytest.param("deit_s_distilled", 10, dict(var_min=0.0, var_max=math.inf),
                 id="distilled-no-vhf", marks=pytest.mark.full),
    pytest.param("registers", 9, dict(s_share=0.8), id="registers", marks=pytest.mark.full),
]


@pytest.mark.parametrize("key,r,opts", CASES)
def test_zero_tprune_equals_reference(key, r, opts):
    got, want, st = compare_rich(key, r, zero_tprune_step(**opts), matching="zero_tprune",
                                 **opts)
    assert st.tokens[-1] < st.spec.num_tokens  # something was pruned
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_split_of_r_between_the_stages():
    assert split_r(10, 40) == (5, 5) and split_r(1, 40) == (0, 1)
    assert split_r(30, 40, s_share=1.0) == (20, 10)  # A holds half the unprotected tokens
    assert split_r(7, 40, s_share=0.0) == (0, 7)


def test_wpr_follows_the_attention_graph():
    """Two tokens attend only to token 2, which attends to itself: WPR puts the mass on 2,
    and the transposed graph (each token's own out-going weights) would not."""
    from tome_lab.matching.zero_tprune import wpr

    a = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    s = wpr(a[None, None], 3, class_token=False, var_min=0.0, var_max=math.inf)
    torch.testing.assert_close(s[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # VHF: the uniform head (variance of N s: 0) is left out of EIR while the peaked one (2)
    # passes; with the default bounds [0.01, 0.7] both fail, and all heads are used
    u = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    s = wpr(torch.stack([a, u])[None], 1, class_token=False, var_max=10.0)
    torch.testing.assert_close(s[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    s = wpr(torch.stack([a, u])[None], 1, class_token=False)
    want = torch.tensor([1 / 9, 1 / 9, 1 + 1 / 9], dtype=torch.float64).div(2).sqrt()
    torch.testing.assert_close(s[0], want)


def test_zero_tprune_capabilities():
    caps = capabilities(MATCHING.get("zero_tprune"))
    assert caps.uses == {"metric"} and caps.reduction == "prune"
    assert caps.bound == "all_but_one" and caps.attention == {"full"}
    assert caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.positions and not caps.sizes
    assert MATCHING.get("zero-tprune") is MATCHING.get("zero_tprune")


def test_zero_tprune_refuses_bad_options_and_other_knobs():
    m = tiny_vit()
    with pytest.raises(ValueError, match="iters must be an int >= 1"):
        tome_lab.apply_tome(m, r=2, matching="zero_tprune", iters=0)
    with pytest.raises(ValueError, match="s_share must be a number in \\[0, 1\\]"):
        tome_lab.apply_tome(m, r=2, matching="zero_tprune", s_share=1.5)
    with pytest.raises(ValueError, match="var_min \\(0.5\\) must not exceed var_max"):
        tome_lab.apply_tome(m, r=2, matching="zero_tprune", var_min=0.5, var_max=0.1)
    with pytest.raises(ValueError, match="option 'iter' .* Did you mean 'iters'"):
        tome_lab.apply_tome(m, r=2, matching="zero_tprune", iter=3)
    with pytest.raises(ValueError, match="combine='mean' cannot go with matching='zero_tprune'"):
        tome_lab.apply_tome(m, r=2, matching="zero_tprune", combine="mean")
    # all_but_one: 16 patches, r = 15 is allowed, 16 is not
    tome_lab.apply_tome(tiny_vit(), r=[15, 0, 0], matching="zero_tprune")
    with pytest.raises(ValueError, match="bound \\('all_but_one'\\) allows at most 15"):
        tome_lab.apply_tome(tiny_vit(), r=[16, 0, 0], matching="zero_tprune")


def test_paper_iterations_per_block():
    from tome_lab.matching.zero_tprune import block_iters

    assert [block_iters("paper", i, 12) for i in range(12)] == [30] * 3 + [5] * 6 + [1] * 3
    assert [block_iters("paper", i, 8) for i in range(8)] == [30] * 3 + [5] * 2 + [1] * 3
    assert [block_iters("paper", i, 4) for i in range(4)] == [30] * 3 + [1]
    assert [block_iters(7, i, 4) for i in range(4)] == [7] * 4
    with pytest.raises(ValueError, match="iters must be an int >= 1 .* or 'paper'"):
        tome_lab.apply_tome(tiny_vit(), r=2, matching="zero_tprune", iters="papers")


@pytest.mark.parametrize("iters,s_share", [(1, 0.5), (7, 0.5), (4, 0.0), ("paper", 0.5)])
def test_zero_tprune_counts_every_iteration(iters, s_share):
    """Each WPR iteration is one [N', N'] x [N'] product per head; the I'-stage one [N, N]
    product per head and the S-stage one [M/2, M - M/2] similarity; the full probabilities
    N^2 x C. "paper": 30, 30, 30, 5, 1, 1, 1 iterations over seven blocks."""
    m = tiny_vit("deit_tiny_patch16_224", depth=7, img_size=96)  # 37 tokens, 3 heads
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=[10, 5, 3, 3, 2, 2, 2],
                                                 matching="zero_tprune",
                                                 iters=iters, s_share=s_share))
    spec, heads = st.spec, st.spec.attn_dim // st.spec.head_dim
    per_block = [30, 30, 30, 5, 1, 1, 1] if iters == "paper" else [iters] * 7
    own, n = 0, spec.num_tokens
    for r, iters in zip(st.r, per_block, strict=True):
        mm = n - spec.num_prefix
        r_s = min(int(r * s_share), mm // 2)
        own += n * n * spec.attn_dim  # the full attention probabilities
        if r_s:
            own += heads * n * n + (mm // 2) * (mm - mm // 2) * spec.head_dim
        own += iters * heads * (n - r_s) ** 2
        n -= r
    cost = analytic_gflops(spec, st.r) - analytic_gflops(spec, st.r, False)
    assert round(cost * 1e9) == own
    if per_block[0] != per_block[-1]:  # and fvcore's trace counts the same, block by block
        got = tome_lab.count_flops(m, (3, 96, 96))
        assert got == pytest.approx(analytic_gflops(spec, st.r), rel=1e-12)
