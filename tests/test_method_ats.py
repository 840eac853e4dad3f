"""ATS (Fayyaz et al., ECCV 2022) against a float64 reference written from the paper's
equations, one image at a time and with no padding: each unprotected token's significance, the
class token's attention summed over heads times the norm of its value vector, normalised; the
scores sorted ascending and summed into a cumulative distribution; inverse transform sampling
at the K midpoints (k - 1/2)/K (the first token whose cumulative score reaches the point), K =
(the padded batch's tokens) - prefix - r; duplicates collapse, the picked tokens are kept in
sequence order and the others dropped. The batched plug-in pads each image to N - r rows with
size-0 tokens; the reference never sees them, so the comparison proves the padding inert.
Without a class token, the reference uses the attention each token receives from every
(real) query, summed over heads. It shares no code with the plug-in's sort, search or gather.

The reference models' attention is sharpened (q and k weights x3): at random initialisation
the class token attends almost uniformly and no two sample points fall on one token, so every
image would keep exactly K tokens.
"""

from __future__ import annotations

import copy
import math

import pytest
import test_reference
import torch
from conftest import requested_stats, tiny_vit
from test_reference import compare_rich

import tome_lab
from tome_lab.evaluate import ImageCost, image_gflops, image_tokens, pads, score
from tome_lab.flops import analytic_gflops
from tome_lab.matching import MATCHING, AttentionStats, MatchContext, capabilities
from tome_lab.matching.ats import ats

_REAL_MODEL = test_reference._model


def _sharpen(model, factor=3.0):
    """Scales every block's q and k weights (and biases), so attention is peaked."""
    with torch.no_grad():
        for blk in model.blocks:
            d = blk.attn.qkv.in_features
            blk.attn.qkv.weight[:2 * d] *= factor
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[:2 * d] *= factor
    return model


def _sharp_model(key):
    m, images = _REAL_MODEL(key)
    return _sharpen(m), images


def ats_step(kept_counts=None):
    """One block of ATS on one image (a rich reference step, see ``BlockView``); appends
    (unprotected tokens kept, K) of each reducing block to ``kept_counts``."""
    padded = {}

    def step(view):
        n, p = len(view.tokens), view.num_prefix
        if view.block == 0:
            padded["n"] = n  # rows of the padded batch entering this block
        n_pad = padded["n"]
        r = min(view.r, n_pad - p - 1)  # the engine's all_but_one clamp, on the padded rows
        if r <= 0:
            return view.tokens, view.size, [[i] for i in range(n)]
        padded["n"] = n_pad - r
        k = n_pad - p - r  # sample points
        heads = view.probs.shape[0]
        if view.class_token:  # the class token's attention to j, summed over heads
            a = [sum(float(view.probs[h, 0, j]) for h in range(heads)) for j in range(n)]
        else:  # the attention j receives from every query, summed over heads
            a = [float(view.probs[:, :, j].sum()) for j in range(n)]
        vnorm = [math.sqrt(sum(float(view.v[h, j] @ view.v[h, j]) for h in range(heads)))
                 for j in range(n)]
        raw = {j: a[j] * vnorm[j] for j in range(p, n)}
        total = sum(raw.values())
        s = {j: raw[j] / total for j in raw}
        ranked = sorted(s, key=lambda j: (s[j], j))  # ascending, ties by position
        cdf, acc = [], 0.0
        for j in ranked:
            acc += s[j]
            cdf.append(acc)
        picked = set()
        for i in range(1, k + 1):
            u = (i - 0.5) / k
            t = next((t for t, c in enumerate(cdf) if c >= u), len(cdf) - 1)
            picked.add(ranked[t])
        kept = list(range(p)) + sorted(picked)
        if kept_counts is not None:
            kept_counts.append((len(picked), k))
        return ([view.tokens[j] for j in kept], [view.size[j] for j in kept],
                [[j] for j in kept])
    return step


# deit_t (class token, 197 tokens) at r = 8 and at a list beyond half; the distilled layout
# (two protected tokens) at a list with idle blocks between reducing ones; avg_no_cls (no class
# token: the attention received, from the full matrix) at r = 8; registers in the full tier
CASES = [
    pytest.param("deit_t", 8, id="deit_t-r8"),
    pytest.param("deit_s_distilled", [20, 0, 10, 5], id="distilled-r20-0-10-5"),
    pytest.param("avg_no_cls", 8, id="avg_no_cls-r8"),
    pytest.param("deit_t", [0, 120, 0, 40, 0, 0], id="deit_t-r120-40", marks=pytest.mark.full),
    pytest.param("registers", 9, id="registers-r9", marks=pytest.mark.full),
]


@pytest.mark.parametrize("key,r", CASES)
def test_ats_equals_reference(key, r, monkeypatch):
    monkeypatch.setattr(test_reference, "_model", _sharp_model)
    kept = []
    got, want, st = compare_rich(key, r, ats_step(kept), True, matching="ats")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert st.tokens[-1] < st.spec.num_tokens
    if key != "avg_no_cls":  # peaked class attention: duplicates collapse, counts differ
        real = [(s[..., 0] > 0).sum(1) for s in st.sizes if s is not None]  # (B,) each
        assert any(c[0] != c[1] for c in real)  # the two images' counts differ
        assert any(n < k for n, k in kept)  # duplicates collapsed: fewer than K kept


def _ctx(cls_row, n_images=1, size=None):
    """One image of 1 + 6 tokens, channels equal to the token index; value norms all equal,
    so the significance is the class row's."""
    n = len(cls_row)
    x = torch.arange(n, dtype=torch.float64)[None, :, None].expand(n_images, n, 3).clone()
    row = torch.tensor([cls_row] * n_images, dtype=torch.float64)  # (B, N)
    return MatchContext(metric=None, num_prefix=1, x=x, v=torch.ones(n_images, 2, n, 4,
                                                                     dtype=torch.float64),
                        class_token=True, size=size,
                        attn=AttentionStats(cls=row[:, None].expand(-1, 2, -1) / 2))


def test_sampling_collapses_duplicates_and_pads():
    """Scores [.5, .05, .05, .3, .05, .05] (tokens 1..6), K = 4 points .125, .375, .625, .875
    on the ascending CDF .05 .10 .15 .20 .50 1.0 (tokens 2, 3, 5, 6, 4, 1): tokens 5, 4, 1, 1;
    three kept, in sequence order, then one padding row of size 0."""
    ctx = _ctx([0.2, 0.5, 0.05, 0.05, 0.3, 0.05, 0.05])
    merge, unmerge = ats(ctx, 2)  # K = 7 - 1 - 2 = 4
    out, size = merge.wavg(ctx.x)
    assert out[0, :, 0].tolist() == [0.0, 1.0, 4.0, 5.0, 0.0]
    assert size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert unmerge(out)[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 4.0, 5.0, 0.0]
    src = merge(torch.eye(7, dtype=torch.float64)[None], mode="amax")[0]
    assert src.sum(1).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]  # padding holds no patch
    # a peaked row keeps one token; a flat one keeps K
    assert merge.wavg(ctx.x)[1].sum() == 4
    flat, _ = ats(_ctx([0.0] + [1 / 6] * 6), 2)
    assert flat.wavg(_ctx([0.0] + [1 / 6] * 6).x)[1].sum() == 5
    one, _ = ats(_ctx([0.0, 0.95, 0.01, 0.01, 0.01, 0.01, 0.01]), 2)
    assert one.wavg(_ctx([0.0] * 7).x)[1][0, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_padding_gets_no_score_and_is_never_sampled():
    """A later block: padding rows (size 0) hold zero attention and are never picked, even
    when their value norms are the largest."""
    size = torch.tensor([[[1.0], [1.0], [1.0], [0.0], [1.0], [0.0], [1.0]]],
                        dtype=torch.float64)
    ctx = _ctx([0.2, 0.3, 0.2, 0.0, 0.2, 0.0, 0.1], size=size)
    ctx.v[:, :, [3, 5]] = 100.0
    merge, _ = ats(ctx, 1)  # K = 5
    _, out_size = merge.wavg(ctx.x, size)
    kept = merge(ctx.x)[0, :, 0][out_size[0, :, 0] > 0].tolist()
    assert 3.0 not in kept and 5.0 not in kept and out_size.sum() == 5


@pytest.mark.parametrize("attn_impl", ["mask", "bias_channel", "flex"])
def test_batch_equals_each_image_alone(attn_impl):
    """Images of one batch keep different counts; each one's logits are those it gets alone
    (the padding of the others changes nothing), whichever attention core adds log 0."""
    m, images = _sharp_model("deit_t")
    images = torch.cat([images, images.flip(-1)])
    tome_lab.apply_tome(m, r=8, matching="ats", attn_impl=attn_impl)
    with torch.no_grad():
        together = m(images)
        counts = image_tokens(m, len(images))
        alone = torch.cat([m(img[None]) for img in images])
    assert len(set(counts[:, -1].tolist())) > 1
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-11)


def test_average_pool_ignores_padding():
    """The size-weighted average pool (no class token) gives padding rows zero weight: the
    output is finite and each image's equals its own forward alone."""
    m, images = _sharp_model("avg_no_cls")
    _sharpen(m, 4.0)
    tome_lab.apply_tome(m, r=12, matching="ats")
    with torch.no_grad():
        together = m(images)
        alone = torch.cat([m(img[None]) for img in images])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-11)


def test_plain_attention_is_refused_at_patch_time():
    """prop_attn=False would attend to the padding: the configuration refuses it."""
    m, _ = _sharp_model("deit_t")
    with pytest.raises(ValueError, match="use prop_attn=True"):
        tome_lab.apply_tome(m, r=8, matching="ats", prop_attn=False)
    with pytest.raises(ValueError, match="pads its batches"):
        tome_lab.ToMeConfig(matching="ats", prop_attn=False)


def test_ats_capabilities():
    caps = capabilities(MATCHING.get("ats"))
    assert caps.uses == frozenset() and caps.reduction == "prune"
    assert caps.bound == "all_but_one" and caps.attention == {"cls", "full"}
    assert caps.sources and caps.unmerge and caps.fullgraph
    assert not caps.stochastic and not caps.positions and not caps.sizes
    assert requested_stats("ats") == (("cls",), ("full",))
    assert pads("ats") and not pads("bipartite") and not pads("pruning")


def test_ats_refuses_options_and_other_knobs():
    m = tiny_vit()
    with pytest.raises(ValueError, match="option 'seed' is not taken by matching 'ats'"):
        tome_lab.apply_tome(m, r=2, matching="ats", seed=1)
    with pytest.raises(ValueError, match="combine='mean' cannot go with matching='ats'"):
        tome_lab.apply_tome(m, r=2, matching="ats", combine="mean")
    with pytest.raises(ValueError, match="feature='x' cannot go with matching='ats'"):
        tome_lab.apply_tome(m, r=2, matching="ats", feature="x")
    tome_lab.apply_tome(tiny_vit(), r=[15, 0, 0], matching="ats")  # K = 1
    with pytest.raises(ValueError, match="bound \\('all_but_one'\\) allows at most 15"):
        tome_lab.apply_tome(tiny_vit(), r=[16, 0, 0], matching="ats")


@pytest.mark.parametrize("name,queries", [("deit_tiny_patch16_224", 1),
                                          ("vit_medium_patch16_gap_256", None)])
def test_ats_counts_only_its_attention_statistic(name, queries):
    """The class row is one query per head (N x C); the full matrix every query (N^2 x C);
    norms, sort, cumulative sum and search are element-wise."""
    m = tiny_vit(name, depth=3, img_size=96)
    st = tome_lab.tome_state(tome_lab.apply_tome(m, r=[20, 5, 3], matching="ats"))
    ns = [st.spec.num_tokens, st.spec.num_tokens - 20, st.spec.num_tokens - 25]
    own = sum((queries or n) * n * st.spec.attn_dim for n in ns)
    cost = analytic_gflops(st.spec, st.r) - analytic_gflops(st.spec, st.r, False)
    assert round(cost * 1e9) == own


@pytest.mark.full  # an fvcore trace
def test_ats_analytic_equals_fvcore_with_padding():
    """fvcore counts the padded batch (the cap), which the analytic count reproduces."""
    m = _sharpen(tiny_vit("vit_medium_patch16_gap_256", depth=3, img_size=96), 4.0)
    tome_lab.apply_tome(m, r=[20, 5, 3], matching="ats")
    st = tome_lab.tome_state(m)
    assert tome_lab.count_flops(m, (3, 96, 96)) == pytest.approx(
        analytic_gflops(st.spec, st.r), rel=1e-9)


def test_image_gflops_counts_each_images_real_tokens():
    """Each image's count is the analytic one over its own real tokens (written out here per
    block); for a matcher without padding it is the analytic count of every image."""
    m, images = _sharp_model("deit_t")
    tome_lab.apply_tome(m, r=8, matching="ats")
    with torch.no_grad():
        m(images)
    st = tome_lab.tome_state(m)
    counts = image_tokens(m, 2)
    spec, heads = st.spec, st.spec.attn_dim // st.spec.head_dim
    for row, got in zip(counts.tolist(), image_gflops(spec, st.r, counts), strict=True):
        n, want = spec.num_tokens, spec.fixed_flops
        for n_out in row:
            want += (n * spec.attn_token_flops + 2 * n * n * heads * spec.head_dim
                     + n * spec.attn_dim + n_out * spec.mlp_token_flops)  # + the class row
            n = n_out
        want += n * spec.final_token_flops
        assert got == pytest.approx(want / 1e9, rel=1e-12)
        assert got < analytic_gflops(spec, st.r)  # below the padded cap
    tome_lab.apply_tome(m, r=8)
    with torch.no_grad():
        m(images)
    st = tome_lab.tome_state(m)
    assert image_gflops(st.spec, st.r, image_tokens(m, 2)) == [analytic_gflops(st.spec, st.r)] * 2


def test_image_cost_reports_mean_and_spread_over_scored_images():
    m, images = _sharp_model("deit_t")
    m = m.float()
    tome_lab.apply_tome(m, r=8, matching="ats")
    loader = [(images.float(), torch.tensor([0, 1])), (images.float().flip(-1),
                                                          torch.tensor([1, 0]))]
    cost = ImageCost(m)
    got = score(m, loader, "cpu", progress_bar=False)
    cost.close()
    s = cost.summary()
    assert got["n_images"] == 4 and len(cost.gflops) == 4
    assert s["gflops_image_min"] < s["gflops_image_mean"] < s["gflops_image_max"]
    assert s["gflops_image_std"] > 0 and s["tokens_image_min"] < s["tokens_image_max"]
    assert s["gflops_image_max"] <= analytic_gflops(tome_lab.tome_state(m).spec,
                                                    tome_lab.tome_state(m).r)
    score(m, loader, "cpu", progress_bar=False)  # the hook is gone
    assert len(cost.gflops) == 4


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.full)])
def test_ats_compiles_in_one_graph_with_padding(backend):
    """fullgraph=True with padding present (the sampling, the search and the assertion on
    the padding's attention trace without a break); compiled equals eager."""
    from test_compile import _compiled_equals_eager

    m = _sharpen(tiny_vit(depth=3), 6.0)
    tome_lab.apply_tome(m, r=[5, 3, 2], matching="ats")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        m(x)
    assert (tome_lab.tome_state(m).size == 0).any()  # some image was padded
    with torch._inductor.config.patch(fallback_random=True):
        _compiled_equals_eager(copy.deepcopy(m), x, backend=backend)


def test_methods_table_marks_averages_and_adds_the_per_image_column(tmp_path):
    """A row with per-image GFLOPs is marked (avg) and gets its mean [min, max] in a column
    of its own, and the note says top-1 and GFLOPs are averages; a table without such rows
    is unchanged (no column, no note)."""
    import json

    from tome_lab import report

    def row(setting, p=None, **extra):
        out = {"setting": setting, "model": "vit_digits", "data": "mnist5k", "n_images": 100,
               "top1": 90.0, "low": 80.0, "high": 95.0, "gflops": 0.08, "r": [4, 4, 4, 4]}
        if p is not None:
            out.update(mcnemar_p=p, diff=1.0, diff_low=0.0, diff_high=2.0)
        return {**out, **extra}

    def table(rows):
        (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / "docs").mkdir(exist_ok=True)
        return report.methods_compare(report.Ctx(tmp_path, tmp_path / "docs" / "m.md"),
                                      "t.jsonl")

    plain = [row("matching=bipartite"), row("matching=pruning", 0.5)]
    before = table(plain)
    assert "per-image" not in before and "(avg)" not in before
    with_ats = table([*plain, row("matching=ats", 0.2, gflops_image_mean=0.061,
                                  gflops_image_std=0.004, gflops_image_min=0.05,
                                  gflops_image_max=0.07)])
    lines = {ln.split("|")[2].strip(): ln for ln in with_ats.splitlines()
             if ln.startswith("| -")}
    assert "| 0.0800 | 0.0610 [0.0500, 0.0700] |" in lines["`matching=ats` (avg)"]
    assert "| 0.0800 | - |" in lines["`matching=pruning`"]
    assert "per-image GFLOPs mean [min, max]" in with_ats
    assert "top-1 and the per-image GFLOPs are averages over the images" in with_ats


@pytest.mark.parametrize("compile", [False, True])
def test_evaluate_adds_per_image_columns_for_ats_only(compile):
    """``evaluate`` on synthetic images with random weights: ats's result carries each
    image's GFLOPs (mean, spread, at most the padded cap) and tokens, eager or compiled
    (counted in an eager pass); bipartite's does not."""
    from tome_lab.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ToMeConfig
    from tome_lab.evaluate import evaluate

    def run(matching):
        return evaluate(ExperimentConfig(
            model=ModelConfig(pretrained=False),
            data=DataConfig(name="synthetic", limit=8, batch_size=4),
            tome=ToMeConfig(r=4, matching=matching),
            eval=EvalConfig(speed=False, threads=1, compile=compile, compile_backend="eager")))

    out = run("ats")
    assert out["n_images"] == 8
    assert out["gflops_image_min"] <= out["gflops_image_mean"] <= out["gflops_image_max"]
    assert out["gflops_image_max"] <= out["gflops"] * (1 + 1e-9)
    assert out["tokens_image_max"] <= out["tokens"][-1] and out["gflops_image_std"] >= 0
    if not compile:
        assert not any(k.startswith(("gflops_image", "tokens_image")) for k in run("bipartite"))
