"""Schedules: every registered one yields one r per block; named behaviours; clear errors."""

from __future__ import annotations

import pytest
import timm

import tome_lab
from tome_lab.flops import analytic_gflops
from tome_lab.registry import SCHEDULES

SPEC = tome_lab.vit_spec(timm.create_model("deit_small_patch16_224", pretrained=False))
OPTIONS = {"list": dict(r=tuple([3] * 12)), "flops": dict(r=0, gflops=3.0),
           "constant_flops": dict(r=0, gflops=3.0)}


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_gives_one_r_per_block(name):
    kw = dict(OPTIONS.get(name, dict(r=8)))
    r = kw.pop("r")
    rs = SCHEDULES.get(name)(r, SPEC, **kw)
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
    from tome_lab.patch import config_spec

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
