"""95% intervals for ``eval``: what the samples are, and the per-method and paired intervals.

The quantity is the mean NLL per token over a region (``in``: positions < L, ``ext``: >= L);
perplexity is its exp, so an interval ``[lo, hi]`` of mean NLL is ``[exp(lo), exp(hi)]`` of
perplexity, and an interval of a DIFFERENCE of mean NLLs is an interval of a perplexity RATIO.

- ``--windows K`` with K >= 2: one sample per window (its mean NLL over the region), a
  Student-t interval over the K samples (K - 1 df). Windows are consecutive, non-overlapping
  stretches of one text: the interval says how much the figure moves from stretch to stretch.
- K = 1: the one window's region is cut into contiguous blocks (about ``BLOCK`` tokens each,
  ``MIN_BLOCKS`` to ``MAX_BLOCKS`` of them) and the t interval is taken over the block means.
  Neighbouring blocks of one text are correlated, so this interval is usually too narrow: it is
  flagged as a rough guide (use ``--windows 2`` or more for the real thing).
- Paired: a method and the ``window`` baseline score the SAME tokens, so their difference is
  taken sample by sample (method minus window, same window or block) and the t interval is
  over those differences: much tighter than comparing two separate intervals, because what
  the text itself makes hard or easy cancels out.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ropepatch.quality.stats import CONFIDENCE, Interval, mean_interval

BLOCK = 512  # target tokens per block (K = 1)
MIN_BLOCKS = 4
MAX_BLOCKS = 32
MIN_BLOCK_TOKENS = 16  # fewer tokens per block than this: no interval
REGIONS = ("in", "ext")

# per window: (sum of NLL over positions < L, their count, sum over positions >= L, their count)
WindowSums = tuple[float, int, float, int]


def region_bounds(region: str, L: int, ctx: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of ``region`` (``in`` or ``ext``) in a window of ``ctx``."""
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {REGIONS}, found {region!r}")
    return (0, L) if region == "in" else (L, ctx)


def window_sums(nll: np.ndarray, L: int) -> WindowSums:
    """One window's per-position NLL (NaN where not scored) reduced to :data:`WindowSums`."""
    a, b = nll[:L], nll[L:]
    ok_a, ok_b = ~np.isnan(a), ~np.isnan(b)
    return float(a[ok_a].sum()), int(ok_a.sum()), float(b[ok_b].sum()), int(ok_b.sum())


def block_count(n_tokens: int) -> int:
    """How many blocks a region of ``n_tokens`` scored tokens is cut into (0: too few)."""
    if n_tokens < MIN_BLOCKS * MIN_BLOCK_TOKENS:
        return 0
    return max(MIN_BLOCKS, min(MAX_BLOCKS, n_tokens // BLOCK))


def samples(per_window: Sequence[WindowSums], nll_sum: np.ndarray | None, count: np.ndarray | None,
            region: str, L: int) -> tuple[str, np.ndarray] | None:
    """``(unit, per-sample mean NLL)`` for ``region``: one per window when there are >= 2
    (``unit`` "window"), else contiguous blocks of the one window (``unit`` "block", from the
    per-position sums); None when there is nothing to take an interval over."""
    i = 0 if region == "in" else 2
    if len(per_window) >= 2:
        if any(w[i + 1] == 0 for w in per_window):
            return None
        return "window", np.array([w[i] / w[i + 1] for w in per_window])
    if nll_sum is None or count is None or count.max(initial=0) > 1:
        return None
    lo, hi = region_bounds(region, L, len(nll_sum))
    c = count[lo:hi]
    x = nll_sum[lo:hi][c > 0]
    nb = block_count(len(x))
    if nb == 0:
        return None
    return "block", np.array([b.mean() for b in np.array_split(x, nb)])


def nll_interval(s: tuple[str, np.ndarray] | None, center: float,
                 confidence: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean NLL around the pooled ``center`` (None without samples)."""
    return None if s is None else mean_interval(s[1], center, confidence)


def paired_interval(a: tuple[str, np.ndarray] | None, b: tuple[str, np.ndarray] | None, center: float,
                    confidence: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean of ``a - b`` sample by sample (the same windows or blocks),
    around ``center`` (the pooled difference); None unless both have the same samples."""
    if a is None or b is None or a[0] != b[0] or len(a[1]) != len(b[1]):
        return None
    return mean_interval(a[1] - b[1], center, confidence)


def describe(unit: str | None, n: int, block_tokens: int | None = None) -> str:
    """How the intervals were formed, in words (the table's footnote, the JSON's ``method``)."""
    if unit == "window":
        return f"Student t over {n} windows ({n - 1} df) of the per-window mean NLL"
    if unit == "block":
        size = f" of about {block_tokens} tokens" if block_tokens else ""
        return (f"Student t over {n} contiguous blocks{size} within one window: blocks are correlated, "
                f"a rough guide (use --windows 2 or more)")
    return "n/a (use --windows 2 or more)"


def ratio_text(point: float, iv: Interval | None) -> str:
    """``-3.0% [-4.1%, -1.9%]`` for a ratio (point and its interval), ``-3.0%`` without one."""
    if not math.isfinite(point):
        return "-"
    p = f"{100 * (point - 1):+.1f}%"
    return p if iv is None else f"{p} [{100 * (iv.lo - 1):+.1f}%, {100 * (iv.hi - 1):+.1f}%]"
