"""Schedules: every registered one yields one r per block; named behaviours; clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import timm

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.registry import SCHEDULES

SPEC = tome_lab.vit_spec(timm.create_model("deit_small_patch16_224", pretrained=False))
OPTIONS = {"list": dict(r=tuple([3] * 12)), "flops": dict(r=0, gflops=3.0),
           "constant_flops": dict(r=0, gflops=3.0),
           "pairs": dict(r=0, pairs=[[4, 8]] * 12)}


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_gives_one_r_per_block(name):
    kw = dict(OPTIONS.get(name, dict(r=8)))
    r = kw.pop("r")
    spec = replace(SPEC, matching="composite") if name == "pairs" else SPEC  # its matcher
    rs = SCHEDULES.get(name)(r, spec, **kw)
    assert len(rs) == SPEC.depth and all(isinstance(v, int) and v >= 0 for v in rs)


def test_named_shapes():
    assert SCHEDULES.get("constant")(8, SPEC) == [8] * 12
    dec = SCHEDULES.get("decreasing")(8, SPEC)
    assert dec[0] == 16 and dec[-1] == 0 and dec == sorted(dec, reverse=True)
    inc = SCHEDULES.get("increasing")(8, SPEC)
    assert inc[0] == 0 and inc[-1] == 16 and inc == sorted(inc)
    assert SCHEDULES.get("linear")(8, SPEC, start=4, end=15) == [4 + i for i in range(12)]


@pytest.mark.parametrize("target", [4.0, 3.4, 2.7, 2.0, 1.2])
def test_flops_schedule_hits_target(target):
    rs = SCHEDULES.get("flops")(0, SPEC, gflops=target)
    got = analytic_gflops(SPEC, rs)
    # one more merge in one block changes the count by at most ~0.03 GFLOPs on DeiT-S
    assert got == pytest.approx(target, abs=0.03)


def test_flops_schedule_through_apply_and_fvcore():
    m = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    tome_lab.apply_tome(m, schedule="flops", gflops=2.7)
    assert tome_lab.count_flops(m) == pytest.approx(2.7, abs=0.03)


@pytest.mark.parametrize("name,kw,match", [
    ("flops", dict(gflops=9.0), "cannot be reached"),
    ("flops", dict(gflops=0.01), "cannot be reached"),
    ("linear", dict(start=-1), "start, end >= 0"),
])
def test_schedule_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        SCHEDULES.get(name)(8, SPEC, **kw)


def test_list_schedule_length_error():
    with pytest.raises(ValueError, match="length 3 for a model with 12 blocks"):
        SCHEDULES.get("list")((1, 2, 3), SPEC)


def test_constant_flops_takes_the_closest_constant_r_for_each_matcher():
    """For each matcher, the constant r whose own count (matching costs included) is closest
    to the target, found here by brute force over every r."""
    from tome_lab.config import ToMeConfig
    from tome_lab.engine import config_spec

    target = 2.9
    picked = {}
    for matching in ("bipartite", "kmeans", "pruning"):
        spec = config_spec(SPEC, ToMeConfig(matching=matching))
        rs = SCHEDULES.get("constant_flops")(0, spec, gflops=target)
        errs = {r: abs(analytic_gflops(spec, [r] * 12) - target) for r in range(0, 99)}
        assert len(set(rs)) == 1 and errs[rs[0]] == min(errs.values())
        picked[matching] = rs[0]
    with pytest.raises(ValueError, match="needs the option gflops"):
        SCHEDULES.get("constant_flops")(0, SPEC)


def _stages_by_hand(tokens, prefix, keep, blocks, depth):
    """EViT's rounding with exact fractions: ceil(keep * unprotected) survive at each stage,
    at most half the unprotected tokens merged (a bipartite matcher's bound)."""
    import math
    from fractions import Fraction

    out = []
    for i in range(depth):
        free = tokens - prefix
        r = min(free - math.ceil(Fraction(keep) * free), free // 2) if i in blocks else 0
        out.append(r)
        tokens -= r
    return out


def test_stages_keep_a_rate_at_the_4th_7th_and_10th_block():
    # DeiT-S, keep 0.7: 196 -> 138 -> 97 -> 68 unprotected tokens (EViT's counts without its
    # fused token)
    assert SCHEDULES.get("stages")(0, SPEC) == [0, 0, 0, 58, 0, 0, 41, 0, 0, 29, 0, 0]
    assert SCHEDULES.get("stages")(0, SPEC, keep_rate=0.5, at=[0, 5]) == _stages_by_hand(
        197, 1, "0.5", {0, 5}, 12)
    audio = tome_lab.vit_spec(timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=8, class_token=False,
        global_pool="avg"))
    assert [i for i, r in enumerate(SCHEDULES.get("stages")(0, audio)) if r] == [2, 4, 6]
    two = replace(SPEC, depth=2)  # 9 x 2 / 12 rounds to 2: the last block, not past it
    assert SCHEDULES.get("stages")(0, two, keep_rate=0.5) == [98, 49]


def test_keep_ratio_is_pitomes_geometric_schedule():
    import math
    from fractions import Fraction

    want, free = [], 196
    for _ in range(12):  # r = floor(T (1 - ratio)) on the unprotected tokens, exactly
        r = math.floor(free * (1 - Fraction("0.9")))
        want.append(r)
        free -= r
    assert SCHEDULES.get("keep_ratio")(0, SPEC, ratio=0.9) == want
    assert want[:3] == [19, 17, 16]  # 196 -> 177 -> 160 -> 144 by hand
    hundred = replace(SPEC, num_tokens=101)  # 100 unprotected tokens at 0.55 merge 45, where
    assert SCHEDULES.get("keep_ratio")(0, hundred, ratio=0.55)[0] == 45  # floats give 44


@pytest.mark.parametrize("name,family,ks", [
    ("stages", lambda k: _stages_by_hand(197, 1, f"{k}/100", {3, 6, 9}, 12), range(1, 101)),
    ("keep_ratio", lambda k: SCHEDULES.get("keep_ratio")(0, SPEC, ratio=1 - k / 200),
     range(101)),
])
def test_rate_schedules_take_the_rate_closest_to_a_budget(name, family, ks):
    grid = [family(k) for k in ks]
    for target in (3.4, 2.7):
        got = SCHEDULES.get(name)(0, SPEC, gflops=target)
        err = abs(analytic_gflops(SPEC, got) - target)
        assert got in grid and err == pytest.approx(
            min(abs(analytic_gflops(SPEC, s) - target) for s in grid))
        assert err < 0.05  # DeiT-S: one rate step moves the count by at most ~0.1


@pytest.mark.parametrize("name,kw,match", [
    ("stages", dict(keep_rate=0), "keep_rate must be in"),
    ("stages", dict(keep_rate=1.5), "keep_rate must be in"),
    ("stages", dict(at=[3, 12]), r"block indices in 0..11"),
    ("stages", dict(at=3), "list of block indices"),
    ("keep_ratio", dict(ratio=0.2), r"ratio must be in \[0.5, 1\]"),
])
def test_rate_schedule_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        SCHEDULES.get(name)(0, SPEC, **kw)
