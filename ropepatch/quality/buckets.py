"""Perplexity by position range: bucket edges (default, a count, or explicit positions) and the
reduction of per-position NLL sums and counts to :class:`Bucket` values."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.quality.results import Bucket, MethodResult

DEFAULT_N_BUCKETS = 8


def default_buckets(ctx: int, n_ctx_train: int, n: int = DEFAULT_N_BUCKETS) -> list[int]:
    """About ``n`` equal buckets over ``[0, ctx)`` with the training length as one edge."""
    if ctx <= n_ctx_train:
        return [round(i * ctx / n) for i in range(n + 1)]
    width = ctx / n
    n_in = min(n - 1, max(1, round(n_ctx_train / width)))
    n_ext = n - n_in
    edges = [round(i * n_ctx_train / n_in) for i in range(n_in)]
    edges += [round(n_ctx_train + i * (ctx - n_ctx_train) / n_ext) for i in range(n_ext + 1)]
    return sorted(set(edges))


def parse_buckets(spec: str | int | Sequence[int] | None, ctx: int, n_ctx_train: int) -> list[int]:
    """Bucket edges from ``None`` (default), a count (``"16"``) or edges (``"0,4096,8192,16384"``;
    0 and ctx are added when missing)."""
    if spec is None or spec == "":
        return default_buckets(ctx, n_ctx_train)
    if isinstance(spec, int):
        return default_buckets(ctx, n_ctx_train, spec)
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            vals = [int(float(p)) for p in parts]
        except (ValueError, OverflowError):  # OverflowError: inf
            raise UsageError(f"--buckets: expected a count or comma-separated positions, found {spec!r}") from None
        if len(vals) == 1:
            if not 1 <= vals[0] <= ctx:  # more buckets than positions: empty buckets (and a long loop)
                raise UsageError(f"--buckets: expected a count from 1 to the context {ctx}, found {vals[0]}")
            return default_buckets(ctx, n_ctx_train, vals[0])
    else:
        vals = [int(v) for v in spec]
    if any(v < 0 or v > ctx for v in vals):
        raise UsageError(f"--buckets: positions must lie in [0, {ctx}], found {vals}")
    edges = sorted(set([0, ctx, *vals]))
    return edges


def bucketize(nll_sum: np.ndarray, count: np.ndarray, edges: Sequence[int]) -> tuple[Bucket, ...]:
    """Per-position NLL sums/counts -> buckets over ``edges``."""
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = int(count[a:b].sum())
        s = float(nll_sum[a:b].sum())
        out.append(Bucket(int(a), int(b), math.exp(s / n) if n else float("nan"), n))
    return tuple(out)


def perplexity(nll_sum: np.ndarray, count: np.ndarray) -> tuple[float, int]:
    """``(exp(mean NLL), scored tokens)`` over the given positions (NaN when none)."""
    n = int(count.sum())
    return (math.exp(float(nll_sum.sum()) / n) if n else float("nan")), n


def rebucket(result: MethodResult, edges: Sequence[int]) -> tuple[Bucket, ...]:
    """The same method's perplexity over other bucket edges (e.g. finer, for a plot)."""
    return bucketize(result.nll_sum, result.count, edges)
