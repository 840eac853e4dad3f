"""The block protocol: what a block hands a matcher (index, depth, positions, attention
statistics), per-capability bounds on r, declared capabilities, and per-forward state.

Probe matchers are registered for one test at a time (monkeypatched into the registry), so
the registry's real plug-ins are unchanged for every other test.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_vit

import tome_lab
from tome_lab.flops import analytic_gflops, tokens_per_layer
from tome_lab.matching import MATCHING, Capabilities, capabilities, uses
from tome_lab.matching.bipartite import bipartite
from tome_lab.merge import prune_fns


@pytest.fixture
def probe(monkeypatch):
    """Registers ``fn`` under ``name`` for this test only; returns the list of contexts seen."""
    seen: list = []

    def register(name, fn):
        def recording(ctx, r, **kw):
            seen.append(ctx)
            return fn(ctx, r, **kw)

        for attr in ("uses", "capabilities", "attention_request", "flops"):
            if hasattr(fn, attr):
                setattr(recording, attr, getattr(fn, attr))
        MATCHING._load()
        monkeypatch.setitem(MATCHING._items, name, recording)
        return seen

    return register


def test_blocks_see_their_index_and_the_depth(probe):
    seen = probe("probe_index", bipartite)
    m = tiny_vit(depth=4)
    tome_lab.apply_tome(m, r=2, matching="probe_index")
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    assert [c.block for c in seen] == [0, 1, 2, 3]
    assert {c.depth for c in seen} == {4} and {c.grid for c in seen} == {(4, 4)}
    assert all(c.position is None and c.attn is None for c in seen)  # nothing asked


@uses("metric", "partition", "combine", "keep", positions=True)
def _bipartite_with_positions(ctx, r, **kw):
    return bipartite(ctx, r, **kw)


@pytest.mark.parametrize("name,kw", [("deit_tiny_patch16_224", {}),
                                     ("vit_medium_patch16_gap_256", {})])
def test_positions_are_the_size_weighted_mean_of_the_sources_grid_positions(probe, name, kw):
    seen = probe("probe_pos", _bipartite_with_positions)
    m = tiny_vit(name, depth=4, **kw)
    tome_lab.apply_tome(m, r=3, matching="probe_pos", trace_source=True)
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    st = tome_lab.tome_state(m)
    p = st.spec.num_prefix
    grid = torch.tensor([[i // 4, i % 4] for i in range(16)], dtype=torch.float64)  # row-major
    # block 0 sees the grid itself, the prefix at (-1, -1)
    pos0 = seen[0].position.double()
    assert torch.equal(pos0[:, p:], grid.expand(2, -1, -1))
    assert (pos0[:, :p] == -1).all()
    for i in range(1, 5):  # each later slot: the mean over the patches a token holds
        source = st.sources[i].double()[:, p:, p:]  # (B, N_i - p, 16) patch membership
        want = (source @ grid) / source.sum(-1, keepdim=True)
        torch.testing.assert_close(st.positions[i][:, p:].double(), want, atol=1e-5, rtol=0)
        if i < 4:
            torch.testing.assert_close(seen[i].position, st.positions[i])
    assert st.tokens[-1] < st.spec.num_tokens


def test_positions_need_a_grid(probe):
    probe("probe_pos", _bipartite_with_positions)
    m = tiny_vit()
    m.patch_embed.grid_size = None  # a stem without a 2-D grid
    with pytest.raises(ValueError, match="no 2-D grid"):
        tome_lab.apply_tome(m, r=2, matching="probe_pos")


@uses("metric", "combine", "keep", attention=frozenset({"cls", "received", "full"}))
def _bipartite_with_stats(ctx, r, **kw):
    return bipartite(ctx, r, **kw)


@pytest.mark.parametrize("prop_attn", [True, False])
def test_attention_statistics_equal_a_float64_softmax_of_the_blocks_own_q_k(probe, prop_attn):
    seen = probe("probe_stats", _bipartite_with_stats)
    m = tiny_vit(depth=4)
    tome_lab.apply_tome(m, r=3, matching="probe_stats", prop_attn=prop_attn)
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    assert len(seen) == 4
    for ctx in seen:
        q, k = ctx.q.double(), ctx.k.double()
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, N, N)
        if prop_attn and ctx.size is not None:  # proportional attention: + log size per key
            logits = logits + ctx.size.double().log()[:, None, None, :, 0]
        probs = logits.softmax(-1)
        torch.testing.assert_close(ctx.attn.full.double(), probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(ctx.attn.cls.double(), probs[:, :, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(ctx.attn.received.double(), probs.mean(dim=(1, 2)),
                                   atol=1e-6, rtol=0)
    assert seen[-1].size is not None and (seen[-1].size > 1).any()  # sizes mattered


def test_pruning_reads_the_class_row_and_counts_it():
    """Pruning by attention keeps the tokens with the largest head-mean class-token attention
    of an independent float64 softmax; its analytic count adds that row's products."""
    m = tiny_vit(depth=2)
    x = torch.randn(2, 3, 64, 64)
    q_seen = []
    m.blocks[0].attn.qkv.register_forward_hook(lambda mod, i, o: q_seen.append(o))
    tome_lab.apply_tome(m, r=5, matching="pruning", trace_source=True)
    with torch.no_grad():
        m(x)
    qkv = q_seen[0].double().reshape(2, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    cls = (q[:, :, :1] @ k.transpose(-2, -1) / 4.0).softmax(-1)[:, :, 0].mean(1)  # (B, N)
    keep = cls[:, 1:].topk(16 - 5, dim=1).indices + 1
    st = tome_lab.tome_state(m)
    kept = st.sources[1][:, 1:].argmax(-1)  # the patch each kept token is
    assert torch.equal(kept, keep.sort(1).values)
    spec = st.spec
    assert spec.stats == ("cls",)
    with_row = analytic_gflops(spec, st.r)
    without = analytic_gflops(spec.__class__(**{**spec.__dict__, "stats": ()}), st.r)
    assert round((with_row - without) * 1e9) == 17 * 64 + 12 * 64  # one query row per block


@uses("combine", "keep", bound="all_but_one", reduction="prune")
def _drop_last(ctx, r):
    b, n, _ = ctx.x.shape
    keep = torch.arange(n - r, device=ctx.x.device).expand(b, -1)
    return prune_fns(keep, n)


def test_a_bound_other_than_half_removes_more_and_the_count_follows(probe):
    probe("probe_bound", _drop_last)
    m = tiny_vit(depth=3)
    tome_lab.apply_tome(m, r=12, matching="probe_bound")
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    st = tome_lab.tome_state(m)
    assert st.tokens == [5, 2, 2]  # 16 patches: 12, then all but one, then nothing left to drop
    assert st.tokens == tokens_per_layer(st.spec, st.r)
    with pytest.raises(ValueError, match="at most 15"):
        tome_lab.apply_tome(m, r=16, matching="probe_bound")
    with pytest.raises(ValueError, match=r"r=9 is more than matching 'bipartite' .* at most 8"):
        tome_lab.apply_tome(m, r=9)


def test_capabilities_are_declared_data():
    caps = capabilities(MATCHING.get("bipartite"))
    assert caps == Capabilities(uses=frozenset({"metric", "partition", "combine", "keep"}))
    assert capabilities(MATCHING.get("pruning")).reduction == "prune"
    with pytest.raises(ValueError, match="unknown bound"):
        Capabilities(bound="most")
    with pytest.raises(ValueError, match="valid: cls, received, full"):
        uses(attention=frozenset({"rollout"}))
    for name in MATCHING.names():  # every registered plug-in declares them
        assert isinstance(getattr(MATCHING.get(name), "capabilities", None), Capabilities), name


def test_a_block_called_alone_is_refused():
    m = tiny_vit()
    tome_lab.apply_tome(m, r=2)
    with pytest.raises(TypeError, match="call the model, not the block"):
        m.blocks[0](torch.randn(1, 17, 64))


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_medium_patch16_gap_256"])
def test_concurrent_forwards_each_use_their_own_state(name):
    """Two threads run the same patched model at once on batches of different sizes; a
    barrier holds both inside the blocks (and the gap model before its pool), so shared
    per-forward state would mix their sizes. Each output equals its sequential forward."""
    m = tiny_vit(name, depth=4)
    tome_lab.apply_tome(m, r=3)
    xs = [torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)]
    with torch.no_grad():
        want = [m(x) for x in xs]
    barrier = threading.Barrier(2, timeout=30)

    def hold(*_):  # returns None, so the hooked module's input and output stay as they are
        barrier.wait()

    m.blocks[2].register_forward_pre_hook(hold)
    m.norm.register_forward_hook(hold)
    got: list = [None, None]
    errors: list = []

    def run(i):
        try:
            with torch.no_grad():
                got[i] = m(xs[i])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert tome_lab.tome_state(m).size.shape[0] in (2, 3)  # the last to finish
