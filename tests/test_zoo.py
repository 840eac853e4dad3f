"""Every plug-in of every registry, held to the same behaviour (new plug-ins get tested free).

Matching plug-ins run on three layouts (class token; class + distillation; four registers and
average pooling, no class token) with 17 / 18 / 20 tokens at 64 px, so odd and even counts.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit

import tome_lab
from tome_lab.flops import tokens_per_layer
from tome_lab.registry import COMBINE, FEATURES, MATCHING, PARTITIONS

LAYOUTS = {
    "cls": ("deit_tiny_patch16_224", {}),
    "cls+dist": ("deit_tiny_distilled_patch16_224", {}),
    "reg4+avg": ("vit_base_patch16_reg4_gap_256", dict(reg_tokens=4)),
}
def _caps(matching):
    from tome_lab.matching import capabilities

    return capabilities(MATCHING.get(matching))


def _run(model, x, seed=0, **kw):
    tome_lab.apply_tome(model, trace_source=_caps(kw.get("matching", "bipartite")).sources, **kw)
    torch.manual_seed(seed)
    out = model(x)
    return out, tome_lab.tome_state(model)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("matching", MATCHING.names())
def test_matching_invariants(matching, layout):
    name, kw = LAYOUTS[layout]
    m = tiny_vit(name, **kw)
    caps = _caps(matching)
    p, n0 = tome_lab.vit_spec(m).num_prefix, tome_lab.vit_spec(m).num_tokens
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        out, st = _run(m, x, r=[5, 3, 8], matching=matching)
        again, _ = _run(m, x, r=[5, 3, 8], matching=matching)
        ident, _ = _run(m, x, r=0, matching=matching)
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # deterministic under a seed
    torch.testing.assert_close(ident, ref)  # r = 0 is the identity
    assert torch.isfinite(out).all()
    # the matcher's own bound clamps the last block (st.spec carries it)
    want = [n0] * 3 if matching == "none" else tokens_per_layer(st.spec, [5, 3, 8])
    assert st.tokens == want
    if matching == "none":
        return
    if caps.reduction == "create":  # new tokens: sizes still add up; no sources to check
        torch.testing.assert_close(st.size[:, :p], torch.ones(2, p, 1))
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)))
        return
    # protected tokens stay first, alone, and hold only themselves
    torch.testing.assert_close(st.source[:, :p], torch.eye(n0)[:p].expand(2, -1, -1))
    torch.testing.assert_close(st.size[:, :p], torch.ones(2, p, 1))
    if caps.reduction == "merge":  # dropping rules (prune) need not sum to the input count
        torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(n0)))
        torch.testing.assert_close(st.source.sum(-1, keepdim=True), st.size)
        assert (st.source.sum(1) == 1).all()  # every patch lands in exactly one token
    else:  # a dropping rule may also merge in some blocks (ppt): sizes count the patches
        # each token still holds (all ones for pure pruning), and no patch is held twice
        torch.testing.assert_close(st.source.sum(-1, keepdim=True), st.size)
        assert (st.source.sum(1) <= 1).all()
        # a padded batch (ats) has size-0 rows: each real token holds at least one patch
        real = (st.size > 0).sum(1)
        assert (st.size.sum(1) >= real).all() and (st.size.sum(1) <= n0).all()


def _unmerging(name):
    caps = _caps(name)
    return caps.unmerge and caps.reduction in ("merge", "prune")


@pytest.mark.parametrize("matching", [n for n in MATCHING.names() if _unmerging(n)])
def test_unmerge_gives_every_input_position_its_output_token(matching, monkeypatch):
    """For every plug-in that declares ``unmerge``: in a real block (the block's own context),
    ``unmerge(merge(x))`` gives each input position the output token holding it, read off the
    merge's own source map (``merge_source``), and zeros where a pruning rule dropped it."""
    from tome_lab.merge import merge_source

    real = MATCHING.get(matching)
    calls = []

    def recording(ctx, r, **kw):
        merge, unmerge = real(ctx, r, **kw)
        calls.append((ctx, merge, unmerge))
        return merge, unmerge

    for attr in ("uses", "capabilities", "attention_request", "flops", "check_options"):
        if hasattr(real, attr):
            setattr(recording, attr, getattr(real, attr))
    MATCHING._load()
    monkeypatch.setitem(MATCHING._items, matching, recording)
    m = tiny_vit()
    tome_lab.apply_tome(m, r=[5, 3, 4], matching=matching)
    with torch.no_grad():
        torch.manual_seed(0)
        m(torch.randn(2, 3, 64, 64))
    assert len(calls) == 3
    for ctx, merge, unmerge in calls:
        x = torch.randn_like(ctx.x)
        y = merge(x, mode="mean")
        member = merge_source(merge, x)  # [B, N', N]: 1 where input i sits in output j
        got = unmerge(y)
        assert got.shape == x.shape
        want = member.transpose(1, 2) @ y  # each input position: its output token (or zero)
        torch.testing.assert_close(got, want)
        held = member.sum(1)  # how many output tokens hold each input position
        assert ((held == 1) | (held == 0)).all()
        if _caps(matching).reduction == "merge":
            assert (held == 1).all()


@pytest.mark.parametrize("matching", MATCHING.names())
def test_matching_batch1_bf16_and_grad(matching):
    m = tiny_vit()
    tome_lab.apply_tome(m, r=4, matching=matching)
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 64, 64))).all()
        out = m.to(torch.bfloat16)(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert torch.isfinite(out).all()
    m = m.float().train()
    m(torch.randn(2, 3, 64, 64)).logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.blocks[-1].mlp.fc1.weight.grad.abs().sum() > 0


def _knob_cases():
    for reg, key in ((FEATURES, "feature"), (COMBINE, "combine"), (PARTITIONS, "partition")):
        for name in reg.names():
            yield {key: name}
    for d in ("cosine", "dot", "euclidean"):
        yield {"distance": d}
    yield {"head_agg": "concat"}


@pytest.mark.parametrize("knob", list(_knob_cases()), ids=lambda k: "-".join(map(str, *k.items())))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_knob_invariants(knob, layout):
    name, kw = LAYOUTS[layout]
    m = tiny_vit(name, **kw)
    spec = tome_lab.vit_spec(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, st = _run(m, x, r=4, **knob)
    assert torch.isfinite(out).all()
    assert st.tokens == tokens_per_layer(spec, [4, 4, 4])
    torch.testing.assert_close(st.size.sum(1), torch.full((2, 1), float(spec.num_tokens)))
    p = spec.num_prefix
    torch.testing.assert_close(st.source[:, :p], torch.eye(spec.num_tokens)[:p].expand(2, -1, -1))


def test_knobs_change_the_result():
    """Each non-default knob really reaches the computation."""
    m = tiny_vit()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        base, _ = _run(m, x, r=6)
        for knob in _knob_cases():
            k, v = next(iter(knob.items()))
            default = {"feature": "k", "combine": "wavg", "partition": "alternate",
                       "distance": "cosine", "head_agg": "mean"}[k]
            if v == default:
                continue
            out, _ = _run(m, x, r=6, **knob)
            assert not torch.allclose(out, base), knob


@pytest.mark.parametrize("kwargs,match", [
    (dict(matching="pruning", feature="q"), "feature='q' cannot go with matching='pruning'"),
    (dict(matching="pruning", combine="mean"), "does not use a combine"),
    (dict(matching="random", distance="dot"), "does not use a metric"),
    (dict(matching="kmeans", partition="halves"), "does not use a partition"),
    (dict(matching="truncate", feature="q"), "does not use a metric"),
    (dict(matching="truncate", combine="keep"), "does not use a combine"),
    (dict(matching="truncate", partition="halves"), "does not use a partition"),
    (dict(matching="kmeans", combine="keep"), "no destination token to keep"),
    (dict(matching="pruning", criterion="entropy"), "valid: attention, norm, random"),
    (dict(matching="kth_bipartite", k=1), None),
    (dict(feature="z"), "unknown feature 'z'"),
    (dict(combine="avg"), "Did you mean"),
    (dict(head_agg="sum"), "valid: mean, concat"),
])
def test_incompatible_choices_fail_at_configuration(kwargs, match):
    m = tiny_vit()
    if match is None:  # plug-in option values are checked by the plug-in on first use
        tome_lab.apply_tome(m, r=2, **kwargs)
        with pytest.raises(ValueError, match=r"k >= 2"):
            m(torch.randn(1, 3, 64, 64))
        return
    with pytest.raises(ValueError, match=match):
        tome_lab.apply_tome(m, r=2, **kwargs)


def test_pruning_attention_keeps_attended_tokens():
    """With the class token attending only to patch 7, pruning keeps patch 7."""
    from tome_lab.engine import attention_stats as _attention_stats
    from tome_lab.matching import MatchContext
    from tome_lab.matching.pruning import pruning

    b, h, n, d = 1, 2, 9, 4
    q = torch.zeros(b, h, n, d)
    k = torch.zeros(b, h, n, d)
    q[:, :, 0, 0] = 10.0
    k[:, :, 7, 0] = 10.0
    x = torch.arange(n, dtype=torch.float32)[None, :, None]
    ctx = MatchContext(metric=None, num_prefix=1, x=x, q=q, k=k, class_token=True,
                       attn=_attention_stats(q, k, None, frozenset({"cls"})))
    merge, unmerge = pruning(ctx, 7)
    assert merge(x)[0, :, 0].tolist() == [0.0, 7.0]
    assert unmerge(merge(x))[0, :, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 7, 0]


def test_kmeans_groups_identical_tokens():
    """Tokens that are exact copies of 3 prototypes form exactly those 3 clusters."""
    from tome_lab.matching import MatchContext
    from tome_lab.matching.kmeans import kmeans

    protos = torch.eye(3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0, 0])
    metric = protos[labels][None]  # (1, 10, 3), no prefix
    merge, _ = kmeans(MatchContext(metric=metric, num_prefix=0), 7)
    out = merge(metric, mode="mean")
    assert out.shape == (1, 3, 3)
    assert sorted(out[0].argmax(-1).tolist()) == [0, 1, 2]
    torch.testing.assert_close(out[0].sort(0).values, protos.sort(0).values)


def test_greedy_merges_chains():
    """Greedy may merge into one token more than once (bipartite cannot)."""
    from tome_lab.matching import MatchContext
    from tome_lab.matching.greedy import greedy

    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [0.0, 1.0], [-1.0, 0.2]]])
    merge, _ = greedy(MatchContext(metric=metric, num_prefix=0), 2)
    size = merge(torch.ones(1, 5, 1), mode="sum")[0, :, 0].tolist()
    assert size == [3.0, 1.0, 1.0]
