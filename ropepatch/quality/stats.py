"""The statistics behind ``eval --windows K`` and ``passkey --trials K``: small pure functions,
standard library only (no scipy).

- :func:`t_quantile`: Student-t quantiles, exact for integer degrees of freedom (the t CDF's
  closed-form trigonometric series, Abramowitz & Stegun 26.7.3-4, inverted by bisection to
  ~1e-12); a 4-term Cornish-Fisher expansion (A&S 26.7.5) above 1000 df, where it is exact
  to better than 1e-9.
- :func:`mean_interval`: a two-sided Student-t interval for the mean of a few samples
  (n - 1 df): ``m +- t * s / sqrt(n)``.
- :func:`wilson`: the Wilson score interval for a binomial proportion (Wilson 1927), which,
  unlike ``p +- z sqrt(p(1-p)/n)``, stays inside [0, 1] and is not empty at 0/n or n/n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95
_CF_DF = 1000  # above this many df, t_quantile uses the Cornish-Fisher expansion


def normal_quantile(p: float) -> float:
    """The standard normal quantile ``z`` with ``P(Z <= z) = p`` (bisection on ``math.erf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile: expected 0 < p < 1, found {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def t_two_sided_mass(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with an integer ``df >= 1`` (A&S 26.7.3 / 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t distribution: expected integer df >= 1, found {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = 1.0
            for k in range(1, (df - 3) // 2 + 1):  # term_k = term_{k-1} * (2k)/(2k+1) * cos^2
                term *= (2 * k) / (2 * k + 1) * c2
                total += term
            total *= math.sin(theta) * math.cos(theta)
        return (2 / math.pi) * (theta + total)
    total, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):  # term_k = term_{k-1} * (2k-1)/(2k) * cos^2
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile ``t`` with ``P(T <= t) = p`` for ``df`` degrees of freedom
    (e.g. ``t_quantile(0.975, 4) = 2.776``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: expected 0 < p < 1, found {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    if df > _CF_DF:
        x = normal_quantile(p)
        g = [(x**3 + x) / 4, (5 * x**5 + 16 * x**3 + 3 * x) / 96,
             (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / 384,
             (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / 92160]
        return x + sum(gi / df ** (i + 1) for i, gi in enumerate(g))
    mass = 2 * p - 1  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < mass:
        hi *= 2
        if hi > 1e300:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_mass(mid, df) < mass:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """A two-sided interval ``[lo, hi]`` around ``center`` from ``n`` samples."""

    center: float
    lo: float
    hi: float
    n: int
    confidence: float = CONFIDENCE

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def map(self, fn) -> "Interval":
        """The interval of a monotone increasing ``fn`` of the quantity (e.g. ``math.exp``)."""
        return Interval(fn(self.center), fn(self.lo), fn(self.hi), self.n, self.confidence)


def mean_interval(samples: Sequence[float], center: float | None = None,
                  confidence: float = CONFIDENCE) -> Interval | None:
    """The Student-t interval for the mean of ``samples`` (n - 1 df): ``center +- t * s / sqrt(n)``,
    ``s`` the sample standard deviation; ``center`` defaults to the sample mean (pass the exact
    pooled value when the samples are means of equal-sized parts of it). None for n < 2 or a
    non-finite sample."""
    xs = [float(x) for x in samples]
    n = len(xs)
    if n < 2 or not all(math.isfinite(x) for x in xs):
        return None
    m = sum(xs) / n
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * s / math.sqrt(n)
    c = m if center is None else float(center)
    return Interval(c, c - half, c + half, n, confidence)


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval for ``successes`` out of ``trials`` (None when no trials):
    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; ``wilson(8, 10)`` is
    ``[0.490, 0.943]``."""
    if trials < 1:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"wilson: expected 0 <= successes <= trials, found {successes}/{trials}")
    z = normal_quantile(0.5 + confidence / 2)
    n, p = trials, successes / trials
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, mid - half)
    hi = 1.0 if successes == trials else min(1.0, mid + half)
    return Interval(p, lo, hi, n, confidence)
