"""Confidence intervals, paired comparisons and Pareto sets for result tables.

The one place tome_lab computes uncertainty; plots, notebooks and tables call it.

- :func:`wilson`: the Wilson score interval of a proportion from (correct, n) (Wilson, 1927),
  which needs only a result's ``top1`` and ``n_images``.
- :func:`bootstrap`: a percentile bootstrap interval of a mean, resampling images, from a
  per-image 0/1 vector (Efron & Tibshirani, 1993). For 0/1 outcomes a resample is fully
  described by its counts, so the counts are drawn (binomial, multinomial for paired
  differences) and memory does not grow with the number of images.
- :func:`paired_bootstrap` and :func:`mcnemar`: two settings scored on the same images,
  compared image by image (the difference's interval; McNemar's exact test on the discordant
  images), which is sharper than comparing two separate intervals.
- :func:`pareto_mask`: the non-dominated points (cheapest for their accuracy);
  :func:`pareto_set` the same for any number of objectives (the search's frontier).
- :func:`add_intervals`: adds ``top1_low`` / ``top1_high`` columns to a results DataFrame.

Accuracies are fractions in [0, 1] in the low-level functions and percent in the DataFrame
helpers, as ``tome_lab.evaluate`` reports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval.

    Attributes:
        estimate: the point estimate.
        low: lower bound.
        high: upper bound.
        level: the confidence level (0.95 for a 95% interval).
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share any value (then a ranking is not supported)."""
        return self.low <= other.high and other.low <= self.high

    def scaled(self, factor: float) -> Interval:
        """The same interval multiplied by ``factor`` (e.g. 100 for percent)."""
        return Interval(self.estimate * factor, self.low * factor, self.high * factor,
                        self.level)


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    return level


def z_value(level: float = 0.95) -> float:
    """The two-sided standard normal quantile for ``level`` (1.959964 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2)


def wilson(correct: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of the proportion ``correct / n``.

    ``centre = (p + z^2 / 2n) / (1 + z^2 / n)``, ``half = z / (1 + z^2 / n) *
    sqrt(p (1 - p) / n + z^2 / 4n^2)``. Unlike the normal approximation it stays inside
    [0, 1] and is not empty at 0 or n correct.

    Args:
        correct: number of correct images (an integer between 0 and n).
        n: number of images (> 0).
        level: confidence level.

    Returns:
        The interval of the fraction correct (estimate ``correct / n``).

    Raises:
        ValueError: n <= 0, or correct outside 0..n or not a whole number.
    """
    if (isinstance(n, float) and not n.is_integer()) or n <= 0:
        raise ValueError(f"n must be a positive whole number of images; got {n!r}")
    if (isinstance(correct, float) and not correct.is_integer()) or not 0 <= correct <= n:
        raise ValueError(f"correct must be a whole number in 0..n={n}; got {correct!r}")
    z = z_value(level)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), level)


def wilson_percent(top1: float, n: int, level: float = 0.95) -> Interval:
    """Wilson interval, in percent, of an accuracy reported in percent over ``n`` images.

    Args:
        top1: accuracy in percent (``100 * correct / n``).
        n: number of images.
        level: confidence level.

    Raises:
        ValueError: ``top1 * n / 100`` is not (within rounding) a whole number of images.
    """
    correct = top1 * n / 100.0
    if abs(correct - round(correct)) > 1e-6 * max(1.0, n):
        raise ValueError(f"top1={top1}% of n={n} images is not a whole number of images "
                         f"({correct:.4f}); is n the number of images scored?")
    return wilson(int(round(correct)), int(n), level).scaled(100.0)


def _hits(hits: Sequence[float] | np.ndarray, name: str = "hits") -> np.ndarray:
    arr = np.asarray(hits, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D per-image vector; got shape "
                         f"{arr.shape}")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (one per image: wrong / right)")
    return arr


def bootstrap(hits: Sequence[float] | np.ndarray, level: float = 0.95, resamples: int = 10_000,
              seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the accuracy, resampling images with replacement.

    Args:
        hits: [n] 1 where the image was classified correctly, else 0.
        level: confidence level.
        resamples: bootstrap resamples.
        seed: seed of the resampling (the result is deterministic for a seed).

    Returns:
        The interval of the fraction correct (estimate: the mean of ``hits``).
    """
    arr = _hits(hits)
    _check_level(level)
    rng = np.random.default_rng(seed)
    # Resampling n 0/1 outcomes with replacement draws Bin(n, mean) ones: draw the counts, not
    # a (resamples, n) index matrix (4 GB at 10,000 x 50,000 ImageNet images).
    means = rng.binomial(arr.size, arr.mean(), size=resamples) / arr.size  # (resamples,)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(arr.mean()), float(low), float(high), level)


def paired_bootstrap(hits_a: Sequence[float] | np.ndarray, hits_b: Sequence[float] | np.ndarray,
                     level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Interval of accuracy(a) - accuracy(b) for two settings scored on the same images.

    Images are resampled together, so the image-to-image variation that both settings share
    cancels: the interval is narrower than the two separate intervals suggest.

    Args:
        hits_a: [n] per-image 0/1 of setting a.
        hits_b: [n] per-image 0/1 of setting b, same images in the same order.
        level: confidence level.
        resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        The interval of the difference of fractions correct (a minus b).
    """
    a, b = _hits(hits_a, "hits_a"), _hits(hits_b, "hits_b")
    if a.size != b.size:
        raise ValueError(f"a paired comparison needs the same images: {a.size} vs {b.size}")
    _check_level(level)
    diff = a - b  # (n,) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    # Resampling the n differences draws multinomial counts of -1, 0 and +1; the mean is
    # (count(+1) - count(-1)) / n, with memory O(resamples) rather than O(resamples x n).
    probs = [np.mean(diff == -1), np.mean(diff == 0), np.mean(diff == 1)]
    counts = rng.multinomial(diff.size, probs, size=resamples)  # (resamples, 3)
    means = (counts[:, 2] - counts[:, 0]) / diff.size
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(diff.mean()), float(low), float(high), level)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two settings on the same images.

    Attributes:
        only_a: images a gets right and b gets wrong.
        only_b: images b gets right and a gets wrong.
        p_value: two-sided exact binomial p-value of ``only_a`` among the discordant images
            under "both settings are equally accurate" (1.0 when none are discordant).
    """

    only_a: int
    only_b: int
    p_value: float


def mcnemar(hits_a: Sequence[float] | np.ndarray, hits_b: Sequence[float] | np.ndarray
            ) -> McNemar:
    """McNemar's exact test: only the images the two settings disagree on carry information.

    Args:
        hits_a: [n] per-image 0/1 of setting a.
        hits_b: [n] per-image 0/1 of setting b, same images in the same order.
    """
    a, b = _hits(hits_a, "hits_a"), _hits(hits_b, "hits_b")
    if a.size != b.size:
        raise ValueError(f"a paired comparison needs the same images: {a.size} vs {b.size}")
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    m = only_a + only_b
    if m == 0:
        return McNemar(0, 0, 1.0)
    k = min(only_a, only_b)
    # P(X <= k), X ~ Bin(m, 1/2), in exact integers: 2.0 ** m overflows a float past m = 1023
    tail = sum(math.comb(m, i) for i in range(k + 1)) / (1 << m)
    return McNemar(only_a, only_b, min(1.0, 2.0 * tail))


# --------------------------------------------------------------------------- Pareto sets

def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm, Scand. J. Stat. 1979).

    The i-th smallest of m p-values is multiplied by m - i (i from 0), the products are made
    non-decreasing in that order and capped at 1. Rejecting where the adjusted value is below
    alpha controls the family-wise error rate at alpha for any dependence between the tests.

    Returns:
        The adjusted p-values, in the order given.
    """
    p = [float(v) for v in p_values]
    if any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def pareto_mask(cost: Sequence[float] | np.ndarray, value: Sequence[float] | np.ndarray
                ) -> np.ndarray:
    """Which points are non-dominated when ``cost`` is minimised and ``value`` maximised.

    A point is dominated when another costs no more, is worth no less, and is strictly better
    in one of the two. Exact ties are all kept. NaN points are never on the front.

    Args:
        cost: [n] e.g. GFLOPs.
        value: [n] e.g. top-1.

    Returns:
        [n] boolean mask of the non-dominated points.
    """
    c, v = np.asarray(cost, dtype=float), np.asarray(value, dtype=float)
    if c.shape != v.shape or c.ndim != 1:
        raise ValueError(f"cost and value must be 1-D of one length; got {c.shape}, {v.shape}")
    ok = ~(np.isnan(c) | np.isnan(v))
    mask = np.zeros(c.shape, dtype=bool)
    idx = np.flatnonzero(ok)
    # Sweep by cost, then by value descending: a point is on the front iff its value beats
    # the best value seen at any strictly lower cost, or equals the best among its cost ties.
    order = idx[np.lexsort((-v[idx], c[idx]))]
    best = -np.inf
    i = 0
    while i < order.size:
        j = i
        while j < order.size and c[order[j]] == c[order[i]]:
            j += 1
        group = order[i:j]
        top = v[group].max()
        if top > best:
            mask[group[v[group] == top]] = True
            best = top
        i = j
    return mask


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether objective vector ``a`` Pareto-dominates ``b`` under ``directions``: no worse in
    every objective and better in one (``directions``: ``"maximize"`` or ``"minimize"`` each)."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def pareto_set(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]
               ) -> np.ndarray:
    """Which of ``n`` points with ``k`` objectives no other point dominates (:func:`dominates`).

    One or two objectives go through :func:`pareto_mask` (the first of two as its cost, each
    turned to be maximised), more compare every pair. Exact ties are all kept; a point with a
    NaN objective is never on the front.

    Args:
        values: [n, k] objective vectors.
        directions: [k] ``"maximize"`` or ``"minimize"`` per objective.

    Returns:
        [n] boolean mask of the non-dominated points.

    Raises:
        ValueError: a direction that is neither, or ``values`` not of shape [n, k].
    """
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad or not directions:
        raise ValueError(f"directions must be 'maximize' or 'minimize' each, got "
                         f"{list(directions)!r}")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        v = v.reshape(0, len(directions))
    if v.ndim != 2 or v.shape[1] != len(directions):
        raise ValueError(f"values must be [n, {len(directions)}], got shape {v.shape}")
    up = v * np.array([1.0 if d == "maximize" else -1.0 for d in directions])  # all maximised
    if up.shape[1] == 1:
        return pareto_mask(np.zeros(len(up)), up[:, 0])
    if up.shape[1] == 2:
        return pareto_mask(-up[:, 0], up[:, 1])
    ok = ~np.isnan(up).any(axis=1)
    mask = ok.copy()
    for i in np.flatnonzero(ok):
        others = up[ok]
        mask[i] = not ((others >= up[i]).all(axis=1) & (others > up[i]).any(axis=1)).any()
    return mask


def pareto_front(df: pd.DataFrame, x: str = "gflops", y: str = "top1",
                 minimize_x: bool = True) -> pd.DataFrame:
    """The non-dominated rows of ``df`` (``x`` minimised, ``y`` maximised), sorted by ``x``.

    Args:
        df: a results table.
        x: the cost column (``gflops``), or a speed column with ``minimize_x=False``
            (``img_per_s``: more is better).
        y: the accuracy column.
        minimize_x: whether less ``x`` is better.

    Raises:
        KeyError: a column is missing (the message lists those there are).
    """
    for col in (x, y):
        if col not in df.columns:
            raise KeyError(f"no column {col!r}; columns: {', '.join(map(str, df.columns))}")
    cost = df[x].to_numpy(float) * (1.0 if minimize_x else -1.0)
    mask = pareto_mask(cost, df[y].to_numpy(float))
    return df[mask].sort_values(x)


# --------------------------------------------------------------------------- tables

def add_intervals(df: pd.DataFrame, y: str = "top1", n: str = "n_images",
                  level: float = 0.95) -> pd.DataFrame:
    """A copy of ``df`` with Wilson ``<y>_low`` / ``<y>_high`` columns (percent).

    Rows without ``y`` or ``n`` (failed points) get NaN bounds.

    Args:
        df: a results table with accuracy in percent (``top1``) and images scored.
        y: the accuracy column.
        n: the column holding the number of images.
        level: confidence level.

    Raises:
        KeyError: ``y`` or ``n`` is not a column.
    """
    for col in (y, n):
        if col not in df.columns:
            raise KeyError(f"no column {col!r} for intervals; columns: "
                           f"{', '.join(map(str, df.columns))}")
    out = df.copy()
    lows, highs = [], []
    for acc, count in zip(out[y], out[n], strict=True):
        if _missing(acc) or _missing(count):
            lows.append(math.nan), highs.append(math.nan)
            continue
        ci = wilson_percent(float(acc), int(count), level)
        lows.append(ci.low), highs.append(ci.high)
    out[f"{y}_low"], out[f"{y}_high"] = lows, highs
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def distinguishable(a: Interval, b: Interval) -> bool:
    """Whether two separate intervals do not overlap (a conservative "they differ")."""
    return not a.overlaps(b)
