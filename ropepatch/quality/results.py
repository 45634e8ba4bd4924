"""What :func:`ropepatch.quality.evaluate.evaluate` measured: perplexity buckets, per-method
results, timing and the whole result, each with its JSON shape (``ropepatch eval --json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ropepatch.quality.specs import WINDOW


def num(x: float | None) -> float | None:
    """JSON-safe float (NaN/inf -> None), rounded to a readable precision."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class Bucket:
    """Perplexity over the scored positions ``start <= p < end`` (all windows)."""

    start: int
    end: int
    ppl: float
    n: int  # scored tokens in the bucket (windows x positions)

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "ppl": num(self.ppl)}


@dataclass(frozen=True)
class MethodResult:
    """One method's perplexity by position."""

    name: str  # the label in the report ("ntk", "ntk@2.5", "window")
    method: str  # registry name, or "window"
    alpha: float | None  # None for none/window
    params: Mapping[str, object]  # what was applied (JSON-ready)
    buckets: tuple[Bucket, ...]
    ppl_in: float
    ppl_ext: float
    n_in: int
    n_ext: int
    seconds: float  # wall time of this method's scoring
    decode_seconds: float  # of which inside llama_decode (+ synchronize)
    tokens_decoded: int
    # per-position NLL sums and counts over windows (index = position); for re-bucketing/plots
    nll_sum: np.ndarray = field(repr=False, compare=False, default=None)
    count: np.ndarray = field(repr=False, compare=False, default=None)

    def to_json(self) -> dict:
        return {
            "params": dict(self.params),
            "buckets": [b.to_json() for b in self.buckets],
            "ppl_in": num(self.ppl_in),
            "ppl_ext": num(self.ppl_ext),
        }


@dataclass(frozen=True)
class Timing:
    """Where the time went: inside llama.cpp's decode versus everything else."""

    seconds: float
    decode_seconds: float
    tokens_decoded: int
    windows: int
    text_tokens: int
    n_batch: int
    n_threads: int

    @property
    def decode_share(self) -> float:
        return self.decode_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_decoded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "decode_seconds": round(self.decode_seconds, 3),
            "other_seconds": round(self.seconds - self.decode_seconds, 3),
            "decode_share": round(self.decode_share, 4),
            "tokens_decoded": self.tokens_decoded,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "windows": self.windows,
            "text_tokens": self.text_tokens,
            "n_batch": self.n_batch,
            "n_threads": self.n_threads,
        }


@dataclass(frozen=True)
class EvalResult:
    """Everything :func:`evaluate` measured."""

    model: str
    n_ctx_train: int
    ctx: int
    tokens: int  # scored tokens per method (windows x (ctx - 1))
    methods: Mapping[str, MethodResult]
    timing: Timing

    def to_json(self) -> dict:
        """The JSON shape of ``ropepatch eval --json`` (a dict ready for ``json.dumps``)."""
        return {
            "model": self.model,
            "n_ctx_train": self.n_ctx_train,
            "ctx": self.ctx,
            "tokens": self.tokens,
            "methods": {name: r.to_json() for name, r in self.methods.items()},
            "timing": self.timing.to_json(),
        }


def format_table(result: EvalResult) -> str:
    """A plain-text table: one row per method, one column per bucket, then ppl_in / ppl_ext; the
    totals line; and the verdict (:func:`verdict`)."""
    first = next(iter(result.methods.values()))
    heads = [f"{_k(b.start)}-{_k(b.end)}" for b in first.buckets] + ["ppl_in", "ppl_ext"]
    rows = {name: [_fmt(b.ppl) for b in r.buckets] + [_fmt(r.ppl_in), _fmt(r.ppl_ext)]
            for name, r in result.methods.items()}
    cw = 2 + max(len(c) for c in heads + [c for cells in rows.values() for c in cells])  # >= 2 spaces apart
    w = max(8, max(len(n) for n in result.methods) + 1)
    lines = [f"{'method':<{w}}" + "".join(f"{h:>{cw}}" for h in heads)]
    lines += [f"{name:<{w}}" + "".join(f"{c:>{cw}}" for c in cells) for name, cells in rows.items()]
    t = result.timing
    lines.append(
        f"{result.tokens} tokens x {len(result.methods)} methods ({t.windows} window(s) of {result.ctx}); "
        f"{t.tokens_decoded} tokens decoded in {t.seconds:.1f} s ({t.tokens_per_s:.1f} tokens/s), "
        f"{100 * t.decode_share:.1f}% inside llama_decode"
    )
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: EvalResult, window: str = WINDOW) -> str:
    """One line: does the best method beat the ``window`` baseline on ppl_ext (the same tokens),
    and what does it cost on ppl_in (against the baseline's, the unscaled model's)?"""
    base = result.methods.get(window)
    scored = {n: r for n, r in result.methods.items() if n != window and math.isfinite(r.ppl_ext)}
    if base is None or not scored or not math.isfinite(base.ppl_ext):
        return "verdict: no window baseline to compare with (run without --no-window)"
    name, best = min(scored.items(), key=lambda kv: kv[1].ppl_ext)
    d_ext = 100 * (best.ppl_ext / base.ppl_ext - 1)
    d_in = 100 * (best.ppl_in / base.ppl_in - 1) if math.isfinite(base.ppl_in) and base.ppl_in else float("nan")
    cost = f"ppl_in {_fmt(best.ppl_in)} ({d_in:+.1f}% vs the unscaled {_fmt(base.ppl_in)})"
    if best.ppl_ext < base.ppl_ext:
        return (f"verdict: {name} beats the window baseline on ppl_ext: {_fmt(best.ppl_ext)} vs "
                f"{_fmt(base.ppl_ext)} ({d_ext:+.1f}%), at {cost}")
    return (f"verdict: no method beats the window baseline on ppl_ext (best {name} {_fmt(best.ppl_ext)} vs "
            f"{_fmt(base.ppl_ext)}, {d_ext:+.1f}%; {cost}): extension does not pay on this text; "
            f"a sliding window of the training length does better")


def _k(x: int) -> str:
    return f"{x // 1024}k" if x % 1024 == 0 and x >= 1024 else str(x)


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.4g}" if x < 1e4 else f"{x:.3e}"
