"""Checks before anything runs (tome_lab.preflight), through ``python -m tome_lab.ablate``."""

from __future__ import annotations

import re

import pytest

from tome_lab import preflight
from tome_lab.ablate import main
from tome_lab.sweep import expand


@pytest.mark.parametrize(("words", "message"), [
    (["model=deit_smal"], "unknown model 'deit_smal'.*did you mean 'deit_small_"),
    (["schedule=[8,8]"], "schedule of length 2 for a model with 12 blocks"),
    (["schedule=flops", "gflops=0.01"], "gflops=0.01 cannot be reached"),
    (["matching=pruning", "criterion=foo"], "unknown pruning criterion 'foo'"),
    (["matching=kmeans", "iters=0"], "iters >= 1"),
    (["checkpoint=nowhere.safetensors"], "checkpoint 'nowhere.safetensors' does not exist"),
])
def test_a_point_that_would_fail_exits_2_before_anything_runs(words, message, tmp_path,
                                                              capsys):
    assert main([*words, "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 point(s) would fail" in err
    assert re.search(message, err), err
    assert not (tmp_path / "s").exists()


def test_every_bad_point_is_named_and_good_ones_pass():
    points = expand(["matching=pruning", "criterion=attention,foo,bar"])
    with pytest.raises(ValueError) as info:
        preflight.check_points(points)
    text = str(info.value)
    assert text.startswith("2 of 3 point(s) would fail")
    assert "criterion=foo: unknown pruning criterion 'foo'" in text
    assert "criterion=bar: unknown pruning criterion 'bar'" in text
    preflight.check_points(expand(["matching=bipartite,pruning", "r=4,8"]))  # no error
