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


def test_interleaved_times_repeats_calls_within_a_round_and_divides():
    import time

    calls = []

    def slow():
        calls.append("s")
        time.sleep(0.01)

    times = interleaved_times({"s": slow, "f": lambda: calls.append("f")}, repeats=2, warmup=0,
                              calls=3)
    assert calls == ["s"] * 3 + ["f"] * 3 + ["s"] * 3 + ["f"] * 3
    assert all(0.009 < t < 0.02 for t in times["s"])  # per call, not per round of 3
    with pytest.raises(ValueError, match="calls"):
        interleaved_times({"f": lambda: None}, repeats=1, calls=0)
