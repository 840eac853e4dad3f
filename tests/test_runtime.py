"""Timing helpers: interleaved calls and per-call speed-up quartiles."""

from __future__ import annotations

import pytest

from tome_lab.runtime import interleaved_times, ratio_quartiles


def test_ratio_quartiles_are_speed_ups_over_the_reference():
    ref = [2.0, 2.0, 4.0, 4.0, 8.0]
    times = [1.0, 2.0, 1.0, 4.0, 2.0]  # speed-ups 2, 1, 4, 1, 4
    assert ratio_quartiles(times, ref) == pytest.approx((1.0, 2.0, 4.0))
    assert ratio_quartiles([1.0], [3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):  # rounds from different calls cannot pair
        ratio_quartiles([1.0, 2.0], [1.0])


def test_interleaved_times_alternates_and_skips_warmup():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
