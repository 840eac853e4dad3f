"""tome_lab.stats: intervals against published and hand computations, Pareto sets by brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tome_lab import stats


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score interval without continuity correction), 95%.
@pytest.mark.parametrize("correct, n, low, high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(correct, n, low, high):
    ci = stats.wilson(correct, n)
    assert ci.estimate == pytest.approx(correct / n)
    assert ci.low == pytest.approx(low, abs=1e-4)
    assert ci.high == pytest.approx(high, abs=1e-4)


def test_wilson_hand_computation_8_of_10():
    # z = 1.959964, z^2 = 3.841459; centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.716740;
    # half = z / 1.3841459 * sqrt(0.016 + z^2/400) = 0.226582.
    z = 1.959964
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z / denom * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    ci = stats.wilson(8, 10)
    assert (ci.low, ci.high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert (ci.low, ci.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_wilson_percent_from_a_result_record():
    ci = stats.wilson_percent(97.9, 1000)
    ref = stats.wilson(979, 1000)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx(
        (97.9, 100 * ref.low, 100 * ref.high))
    assert ci.low < 97.9 < ci.high


def test_wilson_narrows_with_n_and_widens_with_level():
    w = lambda ci: ci.high - ci.low  # noqa: E731
    assert w(stats.wilson(490, 500)) > w(stats.wilson(980, 1000))
    assert w(stats.wilson(980, 1000, level=0.99)) > w(stats.wilson(980, 1000, level=0.95))


@pytest.mark.parametrize("correct, n", [(-1, 10), (11, 10), (3, 0), (2.5, 10)])
def test_wilson_rejects_bad_counts(correct, n):
    with pytest.raises(ValueError, match="must be"):
        stats.wilson(correct, n)


def test_wilson_percent_rejects_a_fraction_of_an_image():
    with pytest.raises(ValueError, match="not a whole number of images"):
        stats.wilson_percent(97.95, 1000)


def test_bad_level_is_refused():
    with pytest.raises(ValueError, match="level"):
        stats.wilson(5, 10, level=95)


def test_bootstrap_agrees_with_the_normal_approximation_for_large_n():
    hits = np.r_[np.ones(900), np.zeros(100)]
    ci = stats.bootstrap(hits, resamples=20_000, seed=1)
    half = 1.959964 * math.sqrt(0.9 * 0.1 / 1000)  # 0.0186
    assert ci.estimate == pytest.approx(0.9)
    assert ci.low == pytest.approx(0.9 - half, abs=0.003)
    assert ci.high == pytest.approx(0.9 + half, abs=0.003)
    assert stats.bootstrap(hits, seed=3) == stats.bootstrap(hits, seed=3)


def test_bootstrap_rejects_non_binary_vectors():
    with pytest.raises(ValueError, match="only 0 and 1"):
        stats.bootstrap([0, 1, 2])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.bootstrap([])


def test_paired_bootstrap_of_identical_settings_is_zero():
    a = np.random.default_rng(0).integers(0, 2, 300)
    ci = stats.paired_bootstrap(a, a)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_narrower_than_separate_intervals():
    rng = np.random.default_rng(0)
    b = (rng.random(1000) < 0.9).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:15]] = 1  # a fixes 15 of b's errors and breaks nothing
    d = stats.paired_bootstrap(a, b, seed=0)
    assert d.estimate == pytest.approx(0.015)
    assert d.low > 0  # paired: a is better, the interval excludes 0
    # separately, the two intervals overlap: the unpaired view cannot tell them apart
    assert stats.bootstrap(a).overlaps(stats.bootstrap(b))


def _index_bootstrap(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The textbook bootstrap: resample the items themselves, (resamples, n) indices."""
    idx = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    return values[idx].mean(axis=1)


def test_count_bootstraps_match_resampling_the_images():
    rng = np.random.default_rng(4)
    a = (rng.random(400) < 0.8).astype(float)
    b = np.where(rng.random(400) < 0.1, 1.0 - a, a)  # b flips 10% of a's outcomes
    q = [0.025, 0.5, 0.975]
    ref = np.quantile(_index_bootstrap(a, 20_000, 1), q)
    ci = stats.bootstrap(a, resamples=20_000, seed=2)
    assert [ci.low, ci.high] == pytest.approx([ref[0], ref[2]], abs=0.006)
    ref_d = np.quantile(_index_bootstrap(a - b, 20_000, 1), q)
    d = stats.paired_bootstrap(a, b, resamples=20_000, seed=2)
    assert d.estimate == pytest.approx(np.mean(a - b))
    assert [d.low, d.high] == pytest.approx([ref_d[0], ref_d[2]], abs=0.006)
    # the sign of the paired difference is a minus b
    assert stats.paired_bootstrap(b, a, seed=2).estimate == pytest.approx(-d.estimate)


def test_bootstraps_at_imagenet_scale_stay_small():
    import tracemalloc

    rng = np.random.default_rng(0)
    a = (rng.random(50_000) < 0.8).astype(float)
    b = np.where(rng.random(50_000) < 0.05, 1.0 - a, a)
    tracemalloc.start()
    try:
        stats.bootstrap(a, resamples=10_000)
        stats.paired_bootstrap(a, b, resamples=10_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # an index matrix would be 10,000 x 50,000 x 8 bytes = 4 GB; counts need well under 50 MB
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"


def test_paired_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        stats.paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="same images"):
        stats.mcnemar([1, 0], [1])


@pytest.mark.parametrize("only_a, only_b, p", [
    (6, 0, 2 / 64),             # 2 * P(X <= 0), X ~ Bin(6, 1/2)
    (3, 1, 2 * 5 / 16),         # 2 * (1 + 4) / 16
    (10, 10, 1.0),
    (0, 0, 1.0),
])
def test_mcnemar_exact_p_value(only_a, only_b, p):
    both = 50
    a = [1] * only_a + [0] * only_b + [1] * both
    b = [0] * only_a + [1] * only_b + [1] * both
    res = stats.mcnemar(a, b)
    assert (res.only_a, res.only_b) == (only_a, only_b)
    assert res.p_value == pytest.approx(p)


@pytest.mark.parametrize("only_a, only_b", [(600, 540), (1000, 100), (1100, 0), (700, 700)])
def test_mcnemar_with_more_than_1023_disagreements(only_a, only_b):
    # 2.0 ** m overflows past m = 1023; the reference here sums the binomial in log space
    m, k = only_a + only_b, min(only_a, only_b)
    logs = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) - m * math.log(2)
            for i in range(k + 1)]
    top = max(logs)
    want = min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))
    a = [1] * only_a + [0] * only_b
    b = [0] * only_a + [1] * only_b
    res = stats.mcnemar(a, b)
    assert res.p_value == pytest.approx(want, rel=1e-9, abs=1e-300)


def _brute_front(cost, value):
    n = len(cost)
    keep = []
    for i in range(n):
        dominated = any(cost[j] <= cost[i] and value[j] >= value[i]
                        and (cost[j] < cost[i] or value[j] > value[i]) for j in range(n))
        keep.append(not dominated)
    return np.array(keep)


@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    cost = rng.integers(0, 8, 40).astype(float)  # many ties on purpose
    value = rng.integers(0, 8, 40).astype(float)
    np.testing.assert_array_equal(stats.pareto_mask(cost, value), _brute_front(cost, value))


def test_pareto_mask_known_case_and_nan():
    cost = [1.0, 2.0, 2.0, 3.0, 0.5, np.nan]
    value = [90.0, 95.0, 94.0, 95.0, 80.0, 99.0]
    assert stats.pareto_mask(cost, value).tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize("directions", [("maximize",), ("maximize", "minimize"),
                                        ("minimize", "minimize"),
                                        ("maximize", "minimize", "maximize")])
@pytest.mark.parametrize("seed", range(3))
def test_pareto_set_equals_pairwise_dominance(directions, seed):
    """The search's frontier (any number of objectives) is the pairwise definition."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, (40, len(directions))).astype(float)  # ties on purpose
    want = [not any(stats.dominates(o, v, directions) for o in values) for v in values]
    assert stats.pareto_set(values, directions).tolist() == want
    assert stats.pareto_set(np.empty((0, len(directions))), directions).tolist() == []
    with pytest.raises(ValueError, match="maximize"):
        stats.pareto_set(values, ["max"] * len(directions))


def test_pareto_front_on_a_table_and_speed_axis():
    df = pd.DataFrame({"gflops": [1.0, 2.0, 3.0], "img_per_s": [300, 200, 100],
                       "top1": [90.0, 89.0, 95.0]})
    assert stats.pareto_front(df).index.tolist() == [0, 2]
    fast = stats.pareto_front(df, x="img_per_s", minimize_x=False)
    assert sorted(fast.index.tolist()) == [0, 2]
    with pytest.raises(KeyError, match="no column 'gflop'"):
        stats.pareto_front(df, x="gflop")


def test_add_intervals_uses_n_images_and_skips_failed_rows():
    df = pd.DataFrame({"top1": [98.0, 97.2, None], "n_images": [1000, 500, None]})
    out = stats.add_intervals(df)
    ref = stats.wilson(486, 500)
    assert out.loc[1, "top1_low"] == pytest.approx(100 * ref.low)
    assert out.loc[1, "top1_high"] == pytest.approx(100 * ref.high)
    assert math.isnan(out.loc[2, "top1_low"])
    with pytest.raises(KeyError, match="n_images"):
        stats.add_intervals(df.drop(columns="n_images"))


def test_overlap_and_distinguishable():
    a, b, c = stats.Interval(0.5, 0.4, 0.6), stats.Interval(0.65, 0.55, 0.75), \
        stats.Interval(0.8, 0.7, 0.9)
    assert a.overlaps(b) and not stats.distinguishable(a, b)
    assert stats.distinguishable(a, c)


def _tables_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analysis" / "tables.py"
    spec = importlib.util.spec_from_file_location("analysis_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analysis_tables_print_wilson_intervals():
    tables = _tables_module()
    df = pd.DataFrame({"name": ["a", "b"], "status": ["ok", "failed"], "top1": [97.2, None],
                       "n_images": [500, None], "gflops": [0.0833, None],
                       "finished": ["2026-01-01T00:00:01", "2026-01-01T00:00:02"]})
    text = tables.markdown(df)
    ci = stats.wilson_percent(97.2, 500)
    header, _, row_a, row_b = text.splitlines()
    assert header == "| point | top-1 | 95% CI | GFLOPs | images | status |"
    assert row_a == f"| `a` | 97.20 | [{ci.low:.1f}, {ci.high:.1f}] | 0.0833 | 500 | ok |"
    assert row_b == "| `b` | - | - | - | - | failed |"


def test_holm_matches_a_worked_example_and_is_monotone():
    """Four p-values worked by hand: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 give 0.04,
    0.06, 0.06, 0.04 -> made non-decreasing: 0.04, 0.06, 0.06, 0.06."""
    from tome_lab.stats import holm

    got = holm([0.03, 0.01, 0.04, 0.02])
    assert got == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])
