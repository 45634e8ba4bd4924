"""The statistics of eval and passkey, against published values: Student-t quantiles (any
table, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), Wilson score intervals (Wilson 1927; Newcombe
1998, Table I), the interval helpers and the eval/passkey verdicts built on them (synthetic
results, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ropepatch.quality import intervals as I
from ropepatch.quality.stats import mean_interval, normal_quantile, t_quantile, t_two_sided_mass, wilson

# (df, t_0.975, t_0.995) from a standard t table
T_TABLE = [(1, 12.706, 63.657), (2, 4.303, 9.925), (3, 3.182, 5.841), (4, 2.776, 4.604), (5, 2.571, 4.032),
           (6, 2.447, 3.707), (9, 2.262, 3.250), (10, 2.228, 3.169), (15, 2.131, 2.947), (20, 2.086, 2.845),
           (30, 2.042, 2.750), (60, 2.000, 2.660), (100, 1.984, 2.626), (120, 1.980, 2.617)]


@pytest.mark.parametrize("df, t975, t995", T_TABLE)
def test_t_quantiles_match_the_table(df, t975, t995):
    assert round(t_quantile(0.975, df), 3) == t975
    assert round(t_quantile(0.995, df), 3) == t995
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df))
    assert t_two_sided_mass(t_quantile(0.975, df), df) == pytest.approx(0.95, abs=1e-9)


def test_t_quantiles_closed_forms_and_large_df():
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    # the Cornish-Fisher branch (> 1000 df) joins the exact series smoothly and tends to z
    assert t_quantile(0.975, 1001) == pytest.approx(t_quantile(0.975, 1000), abs=1e-5)
    assert t_quantile(0.975, 10**7) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.975) == pytest.approx(1.959963985, abs=1e-9)
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_two_sided_mass(1.0, 0)


@pytest.mark.parametrize("k, n, lo, hi", [
    (8, 10, 0.490, 0.943),   # the brief's check
    (0, 10, 0.0, 0.278),     # never empty at 0/n
    (10, 10, 0.722, 1.0),
    (5, 5, 0.566, 1.0),      # a perfect 5/5 cannot show >= 80%
    (15, 15, 0.796, 1.0),    # nor 15/15 ...
    (16, 16, 0.806, 1.0),    # ... but 16/16 can
    (81, 263, 0.255, 0.366),  # Newcombe 1998, Table I, example (f)
    (1, 29, 0.006, 0.172),   # Newcombe 1998, example (d)
])
def test_wilson_known_values(k, n, lo, hi):
    iv = wilson(k, n)
    assert (round(iv.lo, 3), round(iv.hi, 3)) == (lo, hi)
    assert iv.center == k / n and iv.lo <= k / n <= iv.hi and 0 <= iv.lo and iv.hi <= 1
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_mean_interval():
    xs = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, s = 1.2910, t_0.975(3) = 3.1824
    iv = mean_interval(xs)
    half = 3.182446 * 1.290994 / 2
    assert (iv.lo, iv.hi, iv.n) == pytest.approx((2.5 - half, 2.5 + half, 4), abs=1e-5)
    moved = mean_interval(xs, center=2.4)
    assert moved.hi - moved.lo == pytest.approx(iv.hi - iv.lo) and moved.contains(2.4)
    assert mean_interval([1.0]) is None and mean_interval([1.0, float("nan")]) is None
    assert mean_interval([2.0, 2.0]).lo == mean_interval([2.0, 2.0]).hi == 2.0
    e = iv.map(math.exp)
    assert (e.lo, e.center, e.hi) == pytest.approx((math.exp(iv.lo), math.exp(2.5), math.exp(iv.hi)))


def test_samples_windows_then_blocks():
    L, ctx = 128, 512
    per_window = [(127 * 2.0, 127, 384 * 3.0, 384), (127 * 4.0, 127, 384 * 5.0, 384)]
    assert I.samples(per_window, None, None, "in", L)[0] == "window"
    np.testing.assert_allclose(I.samples(per_window, None, None, "ext", L)[1], [3.0, 5.0])
    # one window: contiguous blocks of the per-position NLL (position 0 never scored)
    nll = np.arange(ctx, dtype=float)
    count = np.ones(ctx, dtype=np.int64)
    count[0], nll[0] = 0, 0.0
    unit, xs = I.samples(per_window[:1], nll, count, "ext", L)
    assert unit == "block" and len(xs) == I.MIN_BLOCKS  # 384 tokens: the minimum of 4 blocks
    np.testing.assert_allclose(xs, [np.mean(b) for b in np.array_split(np.arange(L, ctx), 4)])
    unit, xs = I.samples((), nll, count, "in", L)
    np.testing.assert_allclose(xs, [np.mean(b) for b in np.array_split(np.arange(1, L), 4)])
    assert I.block_count(63) == 0 and I.block_count(64) == 4 and I.block_count(8192) == 16
    assert I.block_count(10**6) == I.MAX_BLOCKS
    # summed over two windows, the per-position arrays cannot be cut into blocks of one window
    assert I.samples((), nll, 2 * count, "in", L) is None


def test_paired_interval_is_the_interval_of_the_differences():
    a = ("window", np.array([3.0, 3.5, 2.5, 3.2]))
    b = ("window", np.array([3.1, 3.55, 2.7, 3.3]))
    iv = I.paired_interval(a, b, float(np.mean(a[1] - b[1])))
    ref = mean_interval(a[1] - b[1])
    assert (iv.lo, iv.hi) == pytest.approx((ref.lo, ref.hi)) and iv.hi < 0
    # unpaired, the two intervals overlap widely: pairing is what shows the difference
    assert mean_interval(a[1]).lo < mean_interval(b[1]).hi
    assert I.paired_interval(a, ("block", b[1]), 0.0) is None
    assert I.ratio_text(0.97, iv.map(math.exp)).startswith("-3.0% [")
    assert I.ratio_text(float("nan"), None) == "-"
