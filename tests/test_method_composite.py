"""The composite reduction (prune p, then merge m, per block; DiffRate, Chen et al., ICCV 2023)
against a float64 reference written from the two rules, one image at a time: rank the
unprotected tokens by the class token's attention averaged over heads (else the mean attention
each token receives, or the token's L2 norm), keep the N - prefix - p best in sequence order,
then run ToMe's bipartite soft matching (Alg. 1: alternate A/B over the kept sequence, prefix
protected, the m best edges, size-weighted average) on the kept tokens. The reference reads the
probabilities and keys the reference model computes itself, with loops; it shares no code with
the plug-in's top-k, gathers and scatters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_vit
from test_reference import compare_rich

import tome_lab
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.matching import MATCHING, AttentionStats, MatchContext, capabilities
from tome_lab.matching.composite import composite, split


def _importance(view, criterion):
    n, heads = len(view.tokens), view.probs.shape[0]
    if criterion == "norm":
        return [float(view.tokens[j].norm()) for j in range(n)]
    if view.class_token:
        return [sum(float(view.probs[h, 0, j]) for h in range(heads)) / heads for j in range(n)]
    return [float(view.probs[:, :, j].sum()) / (heads * n) for j in range(n)]


def _bipartite(tokens, size, key, groups, m, prefix, class_token):
    """ToMe's Alg. 1 on one image's list of tokens, with the groups each token holds."""
    n = len(tokens)
    unit = [key[i] / key[i].norm() for i in range(n)]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    edges = []
    for pa in a_pos:
        if pa < prefix:
            continue
        best, partner = -math.inf, None
        for pb in b_pos:
            if pb >= prefix and float(unit[pa] @ unit[pb]) > best:
                best, partner = float(unit[pa] @ unit[pb]), pb
        edges.append((best, pa, partner))
    edges.sort(key=lambda e: -e[0])
    merged, kept = edges[:m], edges[m:]
    total = {pb: tokens[pb] * size[pb] for pb in b_pos}
    weight = {pb: size[pb] for pb in b_pos}
    members = {pb: list(groups[pb]) for pb in b_pos}
    for _, pa, pb in merged:
        total[pb] = total[pb] + tokens[pa] * size[pa]
        weight[pb] += size[pa]
        members[pb] += groups[pa]
    kept_a = [pa for _, pa, _ in kept]
    if class_token:  # the published order: sequence order only with a class token
        kept_a.sort()
    order = list(range(prefix)) + kept_a + [pb for pb in b_pos if pb >= prefix]
    out = ([], [], [])
    for pos in order:
        if pos in total:
            out[0].append(total[pos] / weight[pos])
            out[1].append(weight[pos])
            out[2].append(sorted(members[pos]))
        else:
            out[0].append(tokens[pos])
            out[1].append(size[pos])
            out[2].append(list(groups[pos]))
    return out


def composite_step(pairs=None, criterion="attention"):
    """One composite block on one image (a rich reference step, see ``BlockView``)."""
    def step(view):
        n, pre = len(view.tokens), view.num_prefix
        if pairs is None:
            r = min(view.r, n - pre - 1)
            p = max(r // 2, 2 * r - (n - pre), 0)
            m = r - p
        else:
            p, m = pairs[view.block]
        groups = [[j] for j in range(n)]
        if p + m == 0:
            return view.tokens, view.size, groups
        a = _importance(view, criterion)
        ranked = sorted(range(pre, n), key=lambda j: -a[j])
        kept = list(range(pre)) + sorted(ranked[:n - pre - p])
        tokens = [view.tokens[j] for j in kept]
        size = [view.size[j] for j in kept]
        key = torch.stack([view.key[j] for j in kept])
        if m == 0:
            return tokens, size, [[j] for j in kept]
        return _bipartite(tokens, size, key, [[j] for j in kept], m, pre, view.class_token)
    return step


# deit_t (class token, 197 tokens, 6 blocks) with pairs that prune beyond half in one block
# and leave blocks that only prune, only merge, or do nothing; avg_no_cls (received attention);
# the distilled layout (two protected tokens split across A and B) with the norm criterion and
# plain attention; the even split of a constant r without pairs
DEIT_PAIRS = [[20, 30], [0, 40], [60, 0], [0, 0], [5, 10], [3, 3]]
CASES = [
    pytest.param("deit_t", DEIT_PAIRS, "attention", True, id="deit_t-pairs"),
    pytest.param("avg_no_cls", [[10, 8], [0, 10], [6, 0], [2, 3]], "attention", True,
                 id="avg_no_cls-pairs"),
    pytest.param("deit_s_distilled", [[7, 10], [4, 4], [0, 9], [3, 0]], "norm", False,
                 id="distilled-norm-plain"),
    pytest.param("deit_t", None, "attention", True, id="deit_t-split-r12"),
]


@pytest.mark.parametrize("key,pairs,criterion,prop_attn", CASES)
def test_composite_equals_reference(key, pairs, criterion, prop_attn):
    opts = {"pairs": pairs} if pairs is not None else {}
    r = 0 if pairs is not None else 12  # the pairs schedule ignores r
    got, want, st = compare_rich(key, r, composite_step(pairs, criterion), prop_attn,
                                 matching="composite", criterion=criterion, **opts)
    if pairs is not None:
        assert st.r == [p + m for p, m in pairs]
        assert st.config.schedule == "pairs"
    assert st.tokens[-1] < st.spec.num_tokens
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def _ctx(cls_row, metric):
    """One image of 1 + 6 tokens, channels equal to the token index."""
    x = torch.arange(7, dtype=torch.float64)[None, :, None].expand(1, 7, 3).clone()
    row = torch.tensor([cls_row], dtype=torch.float64)
    return MatchContext(metric=torch.tensor([metric], dtype=torch.float64), num_prefix=1, x=x,
                        class_token=True, attn=AttentionStats(cls=row[:, None].expand(1, 2, 7)))


def test_composite_prunes_then_merges():
    """Class attention [., .3, .05, .2, .1, .25, .15], p = 2 drops tokens 2 and 4; the kept
    sequence [0, 1, 3, 5, 6] is split A = {0, 3, 6}, B = {1, 5}; token 6's metric equals 5's,
    so m = 1 merges 6 into 5 (sizes 3 and 1: the weighted average)."""
    metric = [[1, 0], [0, 1], [1, 1], [1, -1], [1, 2], [1, 0.2], [1, 0.2]]
    ctx = _ctx([0.0, 0.3, 0.05, 0.2, 0.1, 0.25, 0.15], metric)
    merge, unmerge = composite(replace_block(ctx, 1), 3, pairs=[[0, 0], [2, 1]])
    size = torch.tensor([[[1.0], [1.0], [1.0], [1.0], [1.0], [3.0], [1.0]]], dtype=torch.float64)
    out, new_size = merge.wavg(ctx.x, size)
    assert out[0, :, 0].tolist() == [0.0, 3.0, 1.0, (5 * 3 + 6) / 4]  # prefix, A's 3, B's 1, 5
    assert new_size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 4.0]
    src = merge(torch.eye(7, dtype=torch.float64)[None], mode="amax")[0]
    assert src.tolist() == [[1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0],
                            [0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1]]
    # unmerge: every kept position reads its token back, pruned ones zero
    fused = out[0, 3, 0].item()
    assert unmerge(out)[0, :, 0].tolist() == [0.0, 1.0, 0.0, 3.0, 0.0, fused, fused]
    assert merge(ctx.x, mode="keep")[0, :, 0].tolist() == [0.0, 3.0, 1.0, 5.0]


def replace_block(ctx, block):
    from dataclasses import replace

    return replace(ctx, block=block)


def test_split_without_pairs():
    assert split(5, 16) == (2, 3) and split(1, 16) == (0, 1) and split(15, 16) == (14, 1)
    for m_tokens in range(2, 20):  # every r the all_but_one bound allows fits bipartite's bound
        for r in range(1, m_tokens):
            p, m = split(r, m_tokens)
            assert p + m == r and 0 <= p < m_tokens and m <= (m_tokens - p) // 2


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224",
                                  "vit_base_patch16_reg4_gap_256"])
@pytest.mark.parametrize("pairs,criterion", [
    ([[4, 6], [3, 2], [0, 5]], "attention"),  # block 2 prunes nothing: its statistic is dead
    ([[0, 6], [3, 0], [2, 5]], "norm"),
    ([[0, 6], [0, 4], [0, 5]], "attention"),  # never prunes: no statistic requested
])
def test_analytic_flops_equal_fvcore(name, pairs, criterion):
    kw = dict(reg_tokens=4) if "reg" in name else {}
    m = tiny_vit(name, depth=3, img_size=96, **kw)
    tome_lab.apply_tome(m, matching="composite", pairs=pairs, criterion=criterion)
    st = tome_lab.tome_state(m)
    got = tome_lab.count_flops(m, (3, 96, 96))
    assert got == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-12)
    assert analytic_gflops(st.spec, st.r) > analytic_gflops(st.spec, st.r, False)
    with torch.no_grad():
        m(torch.randn(1, 3, 96, 96))
    assert st.tokens == tokens_per_layer(st.spec, st.r)
    if criterion == "attention":  # requested only where some block prunes
        assert bool(st.spec.stats) == any(p for p, _ in pairs)


def test_statistics_only_in_blocks_that_prune(monkeypatch):
    """With pairs, a block that only merges asks for no attention statistic and computes
    none; the analytic count leaves it out there (the same total as the dead-statistic
    count fvcore gives, checked in the full tier above)."""
    from tome_lab import engine
    from tome_lab.flops import stats_flops

    pairs = [[0, 4], [3, 1], [0, 2]]
    m = tome_lab.apply_tome(tiny_vit(depth=3), matching="composite", pairs=pairs)
    st = tome_lab.tome_state(m)
    assert [b._tome_plan.stats for b in m._tome_blocks] == [set(), {"cls"}, set()]
    assert st.spec.block_stats == ((), ("cls",), ())
    calls = []
    real = engine.attention_stats
    monkeypatch.setattr(engine, "attention_stats",
                        lambda q, k, mask, want: calls.append(set(want)) or real(q, k, mask, want))
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    assert calls == [{"cls"}]  # block 1 alone
    n = st.spec.num_tokens
    assert stats_flops(st.spec, n, 0) == 0 and stats_flops(st.spec, n - 4, 1) > 0
    # without pairs every block asks (the split decides per r)
    m2 = tome_lab.apply_tome(tiny_vit(depth=3), r=4, matching="composite")
    assert [b._tome_plan.stats for b in m2._tome_blocks] == [{"cls"}] * 3


def test_compiles_in_one_graph():
    m = tome_lab.apply_tome(tiny_vit(), matching="composite", pairs=[[3, 2], [0, 3], [2, 1]],
                            trace_source=True)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        want = m(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_composite_capabilities():
    caps = capabilities(MATCHING.get("composite"))
    assert caps.uses == {"metric", "partition", "combine", "keep"}
    assert caps.reduction == "prune" and caps.bound == "all_but_one"
    assert caps.attention == {"cls", "received"} and caps.sources and caps.unmerge
    assert caps.fullgraph and caps.stochastic  # stochastic under criterion="random"


def test_composite_refuses_bad_options():
    m = tiny_vit()  # 16 patches + a class token, 3 blocks
    with pytest.raises(ValueError, match="unknown composite criterion 'attn'; valid: "
                                         "attention, norm, random"):
        tome_lab.apply_tome(m, r=2, matching="composite", criterion="attn")
    with pytest.raises(ValueError, match=r"pairs\[1\] must be \[p, m\], two ints >= 0"):
        tome_lab.apply_tome(m, matching="composite", pairs=[[1, 1], [2], [0, 0]])
    with pytest.raises(ValueError, match="pairs has 2 entries for a model with 3 blocks"):
        tome_lab.apply_tome(m, matching="composite", pairs=[[1, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"pairs\[1\] = \[1, 4\] merges 4 of the 6 .* at most "
                                         r"half, 3"):
        tome_lab.apply_tome(m, matching="composite", pairs=[[5, 4], [1, 4], [0, 0]])
    with pytest.raises(ValueError, match=r"pairs\[0\] = \[16, 0\] prunes 16 of the 16 .* at "
                                         r"most 15"):
        tome_lab.apply_tome(m, matching="composite", pairs=[[16, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="implies schedule 'pairs'; it cannot go with schedule "
                                         "'list'"):
        tome_lab.apply_tome(m, r=[1, 1, 1], matching="composite", pairs=[[1, 0]] * 3)
    with pytest.raises(ValueError, match="goes with matching 'composite', not 'bipartite'"):
        tome_lab.apply_tome(m, schedule="pairs", pairs=[[1, 0]] * 3)
    with pytest.raises(ValueError, match="option 'pair' .* Did you mean 'pairs'"):
        tome_lab.apply_tome(m, matching="composite", pair=[[1, 0]] * 3)
    # the largest allowed: prune 15 of 16 in block 0
    tome_lab.apply_tome(copy.deepcopy(m), matching="composite", pairs=[[15, 0], [0, 0], [0, 0]])


def test_pairs_pareto_file_runs_in_evaluate_ablate_and_apply_tome(tmp_path, capsys):
    """A Pareto file of (p, m) pairs (the learned-rate search's output form): evaluate runs
    its first entry or --entry i, ablate all of them, apply_tome each from load_front."""
    import json

    from tome_lab import ablate, evaluate
    from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig
    from tome_lab.flops import analytic_gflops
    from tome_lab.models import create_model
    from tome_lab.search.frontier import load_front, write_pairs_yaml

    exp = ExperimentConfig(data=DataConfig(limit=8, batch_size=8),
                           eval=EvalConfig(speed=False, threads=1))
    cheap, dear = [[2, 2]] * 12, [[1, 2]] * 12
    path = write_pairs_yaml(tmp_path / "front.yaml", exp,
                            [{"pairs": dear, "gflops": 2.0, "top1_val": 90.0},
                             {"pairs": cheap, "gflops": 1.0, "top1_val": 80.0}], "test front")
    entries = load_front(path)
    assert [e["pairs"] for e in entries] == [cheap, dear]  # cheapest first
    assert all(e["matching"] == "composite" and e["schedule"] == "pairs" for e in entries)
    model = create_model(exp.model)
    st = tome_lab.tome_state(tome_lab.apply_tome(model, **entries[1]))
    assert st.r == [3] * 12
    assert evaluate.main(["--config", str(path), "--entry", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tokens"] == tokens_per_layer(st.spec, st.r) and got["matching"] == "composite"
    assert got["gflops"] == pytest.approx(analytic_gflops(st.spec, st.r), rel=1e-9)
    assert evaluate.main(["--config", str(path), "--entry", "2"]) == 2
    assert "the sweep has 2 point(s), 0 to 1" in capsys.readouterr().err
    assert ablate.main(["--config", str(path), "--out", str(tmp_path / "run"),
                        "--progress", "false"]) == 0
    rows = [json.loads((d / "result.json").read_text())["metrics"]
            for d in sorted((tmp_path / "run").glob("pairs=*"))]
    assert sorted(r["tokens"][-1] for r in rows) == [66 - 48, 66 - 36]
