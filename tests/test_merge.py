"""Bipartite soft matching against a naive per-image reference of the published algorithm."""

from __future__ import annotations

import pytest
import torch

from tome_lab.matching import MatchContext
from tome_lab.matching.bipartite import bipartite
from tome_lab.merge import clamp_r, merge_source, merge_wavg, similarity, truncate_fns


def reference_bipartite(metric, x, size, r, p, keep_order=True):
    """Loops over images, tokens and edges; returns merged x and size (wavg).

    ``keep_order``: kept A tokens in sequence order (False: in descending score order, as the
    paper's code leaves them without a class token).
    """
    out_x, out_s = [], []
    for m, xi, si in zip(metric, x, size, strict=True):
        n = m.shape[0]
        a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
        mn = m / m.norm(dim=-1, keepdim=True)
        best = []
        for ia, pa in enumerate(a_pos):
            if pa < p:  # protected A token: never a source
                best.append((-float("inf"), ia, 0))
                continue
            scores = [(-float("inf") if pb < p else float(mn[pa] @ mn[pb]), ib)
                      for ib, pb in enumerate(b_pos)]
            s, ib = max(scores, key=lambda t: (t[0], -t[1]))
            best.append((s, ia, ib))
        order = sorted(best, key=lambda t: -t[0])
        src = {ia: ib for _, ia, ib in order[:r]}
        bx = [xi[pb] * si[pb] for pb in b_pos]
        bs = [si[pb].clone() for pb in b_pos]
        for ia, ib in src.items():
            bx[ib] = bx[ib] + xi[a_pos[ia]] * si[a_pos[ia]]
            bs[ib] = bs[ib] + si[a_pos[ia]]
        kept_a = [ia for _, ia, _ in order[r:]]
        if keep_order:
            kept_a.sort()
        toks = [(a_pos[ia], xi[a_pos[ia]], si[a_pos[ia]]) for ia in kept_a]
        btoks = [(pb, bx[ib] / bs[ib], bs[ib]) for ib, pb in enumerate(b_pos)]
        prefix = sorted([t for t in toks + btoks if t[0] < p], key=lambda t: t[0])
        rest = [t for t in toks if t[0] >= p] + [t for t in btoks if t[0] >= p]
        seq = prefix + rest
        out_x.append(torch.stack([t[1] for t in seq]))
        out_s.append(torch.stack([t[2] for t in seq]))
    return torch.stack(out_x), torch.stack(out_s)


@pytest.mark.parametrize("class_token,order", [(True, "published"), (False, "published"),
                                               (False, "sorted")])
@pytest.mark.parametrize("n,p,r", [(17, 1, 5), (18, 2, 8), (21, 5, 6), (16, 0, 7), (9, 1, 4)])
def test_bipartite_matches_reference(n, p, r, class_token, order):
    torch.manual_seed(n + p + r)
    metric = torch.randn(3, n, 8, dtype=torch.float64)
    x = torch.randn(3, n, 5, dtype=torch.float64)
    size = torch.randint(1, 4, (3, n, 1)).double()
    r = clamp_r(r, n, p)
    ctx = MatchContext(metric=metric, num_prefix=p, class_token=class_token)
    merge, _ = bipartite(ctx, r, order=order)
    got_x, got_s = merge_wavg(merge, x, size)
    keep_order = class_token or order == "sorted"
    want_x, want_s = reference_bipartite(metric, x, size, r, p, keep_order)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_s, want_s)
    assert got_x.shape[1] == n - r


def test_prefix_never_merged_and_first():
    n, p = 20, 5
    metric = torch.randn(2, n, 4)
    metric[:, :p] = metric[:, p:p + 1]  # prefix identical to a patch: still not merged
    merge, _ = bipartite(MatchContext(metric=metric, num_prefix=p), clamp_r(99, n, p))
    x = torch.arange(n, dtype=torch.float32)[None, :, None].expand(2, n, 1)
    source = merge_source(merge, x)
    out = merge(x, mode="amax")
    assert out[:, :p, 0].tolist() == [list(range(p))] * 2
    assert torch.all(source[:, :p].sum(-1) == 1)


def test_unmerge_inverts_merge_on_groups():
    n, p, r = 15, 1, 6
    metric = torch.randn(2, n, 4)
    x = torch.randn(2, n, 3)
    merge, unmerge = bipartite(MatchContext(metric=metric, num_prefix=p), r)
    y = merge(x, mode="mean")
    z = unmerge(y)
    assert z.shape == x.shape
    torch.testing.assert_close(merge(z, mode="mean"), y)
    # every token unmerge returns is either untouched or the value of its merged group
    source = merge_source(merge, x)  # (B, N - r, N)
    back = (source.transpose(1, 2) @ y)  # each input position gets its group's value
    torch.testing.assert_close(z, back)


def test_zero_norm_keys_are_finite():
    metric = torch.zeros(1, 9, 4)
    merge, _ = bipartite(MatchContext(metric=metric, num_prefix=1), 3)
    out, size = merge_wavg(merge, torch.randn(1, 9, 2))
    assert torch.isfinite(out).all() and size.sum() == 9


@pytest.mark.parametrize("poison", ["nan", "inf", "-inf", "fp16_overflow"])
@pytest.mark.parametrize("p, class_token, order", [(1, True, "published"),
                                                   (2, False, "published"),
                                                   (3, False, "sorted")])
def test_non_finite_scores_never_drop_a_token_or_repeat_a_prefix(poison, p, class_token, order):
    n, r = 16, 6
    torch.manual_seed(0)
    metric = torch.randn(2, n, 4)
    distance = "dot"
    if poison == "fp16_overflow":  # fp16 dot products of large keys overflow to +-inf
        metric = metric.half() * 300
        metric[:, p::2] = metric[:, p::2].abs()
        metric[:, p + 1::2] = -metric[:, p + 1::2].abs()  # every A.B product is -inf or inf
    else:
        value = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}[poison]
        metric[:, p:p + 6] = value  # unprotected tokens whose scores are all non-finite
    ctx = MatchContext(metric=metric, num_prefix=p, class_token=class_token, distance=distance)
    merge, _ = bipartite(ctx, r, order=order)
    ids = torch.arange(n, dtype=torch.float32)[None, :, None].expand(2, n, 1)
    source = merge_source(merge, ids)  # (B, N - r, N)
    assert source.shape[1] == n - r
    assert torch.equal(source.sum(1), torch.ones(2, n))  # every token exactly once
    assert merge(ids, mode="amax")[:, :p, 0].tolist() == [list(range(p))] * 2
    assert torch.all(source[:, :p].sum(-1) == 1)  # the prefix is never merged


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclidean"])
def test_similarity_orders_nearest_first(distance):
    a = torch.tensor([[[1.0, 0.0]]])
    b = torch.tensor([[[1.0, 0.1], [-1.0, 0.0], [0.0, 3.0]]])
    s = similarity(a, b, distance)
    assert s.shape == (1, 1, 3)
    assert s[0, 0].argmax() == 0


def test_clamp_r():
    assert clamp_r(16, 197, 1) == 16
    assert clamp_r(200, 11, 1) == 5
    assert clamp_r(3, 2, 1) == 0


def reference_sets(metric, x, r, p, a_pos, b_pos, mode):
    """Per image and per token: bipartite matching between explicit position sets, then
    ``mode`` (``mean``, ``amax``, ``keep``, ``sum``) over each destination and its sources.
    Output: prefix, kept A tokens in A's order, then B in B's order."""
    outs = []
    for m, xi, ai, bi in zip(metric, x, a_pos.tolist(), b_pos.tolist(), strict=True):
        mn = m / m.norm(dim=-1, keepdim=True)
        best = []
        for ia, pa in enumerate(ai):
            scores = [(float(mn[pa] @ mn[pb]), ib) for ib, pb in enumerate(bi)]
            s, ib = max(scores, key=lambda t: (t[0], -t[1]))
            best.append((s, ia, ib))
        order = sorted(best, key=lambda t: -t[0])
        groups = {ib: [xi[pb]] for ib, pb in enumerate(bi)}
        for _, ia, ib in order[:r]:
            groups[ib].append(xi[ai[ia]])
        kept = sorted(ia for _, ia, _ in order[r:])
        merged = []
        for ib in range(len(bi)):
            g = torch.stack(groups[ib])
            merged.append({"mean": g.mean(0), "amax": g.amax(0), "keep": g[0],
                           "sum": g.sum(0)}[mode])
        outs.append(torch.stack([xi[i] for i in range(p)] + [xi[ai[ia]] for ia in kept]
                                + merged))
    return torch.stack(outs)


@pytest.mark.parametrize("partition", ["halves", "random"])
@pytest.mark.parametrize("mode", ["mean", "amax", "keep", "sum"])
def test_explicit_partitions_and_reductions_match_reference(partition, mode):
    """Batch of 3, a class token, explicit A/B sets: every reduction the combine rules use
    (``mean``, ``max`` -> amax, ``keep``, and the sum under ``wavg``) against the per-image
    reference, which checks the row arithmetic across images as well."""
    from tome_lab.registry import PARTITIONS

    n, p, r = 19, 1, 5
    metric = torch.randn(3, n, 6, dtype=torch.float64)
    x = torch.randn(3, n, 4, dtype=torch.float64)
    torch.manual_seed(7)
    a_pos, b_pos = PARTITIONS.get(partition)(n, p, 3, metric.device)
    torch.manual_seed(7)  # the matcher draws the same sets
    ctx = MatchContext(metric=metric, num_prefix=p, class_token=True, partition=partition)
    merge, _ = bipartite(ctx, r)
    torch.testing.assert_close(merge(x, mode=mode),
                               reference_sets(metric, x, r, p, a_pos, b_pos, mode))


def _three_pass(merge):
    """The same merge without its merged-rows ``wavg``: merge_wavg then takes three passes."""
    return lambda t, mode="mean": merge(t, mode)


@pytest.mark.parametrize("partition", ["alternate", "halves", "random"])
@pytest.mark.parametrize("sized", [False, True])
def test_merged_rows_average_equals_the_three_pass_average(partition, sized):
    """merge_wavg's bipartite path (kept rows copied once, then only merged rows touched)
    against the generic x * size / sum / divide path, with several sources per destination,
    with and without sizes, for every partition (prefix tokens protected)."""
    torch.manual_seed(3)
    n, p, r = 23, 2, 9
    metric = torch.randn(2, n, 4, dtype=torch.float64)
    metric[:, p:, 0] += 4.0  # few distinct directions: destinations draw several sources
    x = torch.randn(2, n, 6, dtype=torch.float64)
    size = torch.randint(1, 5, (2, n, 1)).double() if sized else None
    ctx = MatchContext(metric=metric, num_prefix=p, class_token=True, partition=partition)
    merge, _ = bipartite(ctx, r)
    assert hasattr(merge, "wavg")
    got_x, got_s = merge_wavg(merge, x, size)
    want_x, want_s = merge_wavg(_three_pass(merge), x, size)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_s, want_s, rtol=0, atol=0)
    members = merge(torch.ones(2, n, 1, dtype=torch.float64), "sum")
    assert (members >= 3).any()  # some destination took two sources or more


@pytest.mark.parametrize("x_dtype,size_dtype", [
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
    (torch.float32, torch.float64), (torch.float16, torch.int64), (torch.bfloat16, None)])
@pytest.mark.parametrize("matcher", ["bipartite", "truncate"])
def test_merged_rows_average_promotes_like_the_three_pass_average(x_dtype, size_dtype, matcher):
    """Tokens and sizes of different dtypes come out in the dtype x * size promotes to."""
    torch.manual_seed(4)
    n, p, r = 15, 1, 5
    metric = torch.randn(2, n, 4)
    x = torch.randn(2, n, 6).to(x_dtype)
    size = None if size_dtype is None else torch.randint(1, 5, (2, n, 1)).to(size_dtype)
    if matcher == "bipartite":
        merge, _ = bipartite(MatchContext(metric=metric, num_prefix=p, class_token=True), r)
    else:
        merge, _ = truncate_fns(n, r)
    got_x, got_s = merge_wavg(merge, x, size)
    want_x, want_s = merge_wavg(_three_pass(merge), x, size)
    assert (got_x.dtype, got_s.dtype) == (want_x.dtype, want_s.dtype)
    torch.testing.assert_close(got_x, want_x, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_s, want_s, rtol=0, atol=0)


def test_truncate_keeps_the_first_tokens_and_unmerges_zeros():
    x = torch.arange(2 * 7 * 3, dtype=torch.float64).view(2, 7, 3)
    size = torch.arange(1, 15, dtype=torch.float64).view(2, 7, 1)
    merge, unmerge = truncate_fns(7, 3)
    for mode in ("sum", "mean", "amax", "keep"):  # a dropped token has no destination
        assert torch.equal(merge(x, mode=mode), x[:, :4])
    assert merge(x).data_ptr() == x.data_ptr()  # a view: nothing is copied
    got, got_size = merge_wavg(merge, x, size)
    assert torch.equal(got, x[:, :4]) and torch.equal(got_size, size[:, :4])
    got, got_size = merge_wavg(merge, x)
    assert torch.equal(got, x[:, :4]) and torch.equal(got_size, torch.ones(2, 4, 1, dtype=x.dtype))
    source = merge_source(merge, x)  # each kept token holds only its own patch
    assert torch.equal(source, torch.eye(7, dtype=x.dtype)[:4].expand(2, -1, -1))
    back = unmerge(merge(x))
    assert torch.equal(back[:, :4], x[:, :4]) and not back[:, 4:].any()
