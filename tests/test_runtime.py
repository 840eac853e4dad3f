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


def test_interleaved_times_repeats_calls_within_a_round_and_divides(monkeypatch):
    from types import SimpleNamespace

    from tome_lab import runtime

    clock, calls = [0.0], []

    def work(name, seconds):  # advances a fake clock: the timings are exact, not measured
        def fn():
            calls.append(name)
            clock[0] += seconds
        return fn

    monkeypatch.setattr(runtime, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    times = interleaved_times({"s": work("s", 0.5), "f": work("f", 0.125)}, repeats=2,
                              warmup=0, calls=3)
    assert calls == ["s"] * 3 + ["f"] * 3 + ["s"] * 3 + ["f"] * 3
    assert times == {"s": [0.5, 0.5], "f": [0.125, 0.125]}  # per call, not per round of 3
    with pytest.raises(ValueError, match="calls"):
        interleaved_times({"f": lambda: None}, repeats=1, calls=0)
