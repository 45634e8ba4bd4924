"""What :func:`ropepatch.quality.evaluate.evaluate` measured: perplexity buckets, per-method
results, timing and the whole result, each with its JSON shape (``ropepatch eval --json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ropepatch.quality.intervals import (
    REGIONS,
    WindowSums,
    describe,
    nll_interval,
    paired_interval,
    ratio_text,
    samples,
)
from ropepatch.quality.specs import WINDOW
from ropepatch.quality.stats import CONFIDENCE, Interval


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
    # per window scored: (NLL sum over positions < L, their count, NLL sum over >= L, their count)
    per_window: tuple[WindowSums, ...] = field(repr=False, compare=False, default=())

    def samples(self, region: str, L: int) -> tuple[str, np.ndarray] | None:
        """Per-window (or, for one window, per-block) mean NLL over ``region`` (see
        :mod:`ropepatch.quality.intervals`)."""
        return samples(self.per_window, self.nll_sum, self.count, region, L)

    def interval(self, region: str, L: int) -> Interval | None:
        """The 95% interval of this method's ppl over ``region`` ("in" or "ext"), or None."""
        ppl = self.ppl_in if region == "in" else self.ppl_ext
        if not math.isfinite(ppl):
            return None
        iv = nll_interval(self.samples(region, L), math.log(ppl))
        return None if iv is None else iv.map(math.exp)

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
    window_spans: tuple[tuple[int, int], ...] = ()  # each window's text tokens [start, end)

    def sampling(self) -> tuple[str | None, int, str]:
        """``(unit, samples, description)`` of the intervals: unit "window" (K >= 2 windows),
        "block" (one window cut into blocks) or None (no interval)."""
        L = self.n_ctx_train
        for m in self.methods.values():
            for region in ("ext", "in"):
                s = m.samples(region, L)
                if s is not None:
                    n_tok = m.n_ext if region == "ext" else m.n_in
                    size = round(n_tok / len(s[1])) if s[0] == "block" else None
                    return s[0], len(s[1]), describe(s[0], len(s[1]), size)
        return None, 0, describe(None, 0)

    def vs_window(self, name: str, region: str, window: str = WINDOW) -> tuple[float, Interval | None]:
        """``(ratio, interval)``: method ``name``'s ppl over ``region`` divided by the window
        baseline's on the same tokens, and the paired 95% interval of that ratio (None when
        there is no baseline, no samples, or the two did not score the same positions)."""
        m, w = self.methods[name], self.methods.get(window)
        a = m.ppl_in if region == "in" else m.ppl_ext
        b = float("nan") if w is None else (w.ppl_in if region == "in" else w.ppl_ext)
        if not (math.isfinite(a) and math.isfinite(b) and b > 0):
            return float("nan"), None
        ratio = a / b
        if m.count is None or w.count is None or not np.array_equal(m.count, w.count):
            return ratio, None
        L = self.n_ctx_train
        iv = paired_interval(m.samples(region, L), w.samples(region, L), math.log(ratio))
        return ratio, None if iv is None else iv.map(math.exp)

    def method_json(self, name: str) -> dict:
        """One method's JSON: :meth:`MethodResult.to_json` plus its intervals, its ratios to the
        window baseline with their paired intervals, and its per-window figures."""
        m = self.methods[name]
        d = m.to_json()
        for region in REGIONS:
            d[f"ppl_{region}_ci"] = _ci(m.interval(region, self.n_ctx_train))
        if WINDOW in self.methods and name != WINDOW:
            d["vs_window"] = {}
            for region in REGIONS:
                ratio, iv = self.vs_window(name, region)
                d["vs_window"][f"ppl_{region}"] = {"ratio": num(ratio), "ci": _ci(iv)}
        d["windows"] = [{"ppl_in": num(math.exp(si / ni)) if ni else None,
                         "ppl_ext": num(math.exp(se / ne)) if ne else None} for si, ni, se, ne in m.per_window]
        return d

    def to_json(self) -> dict:
        """The JSON shape of ``ropepatch eval --json`` (a dict ready for ``json.dumps``)."""
        unit, n, text = self.sampling()
        return {
            "model": self.model,
            "n_ctx_train": self.n_ctx_train,
            "ctx": self.ctx,
            "tokens": self.tokens,
            "windows": [list(s) for s in self.window_spans],
            "intervals": {"confidence": CONFIDENCE, "unit": unit, "samples": n, "method": text},
            "methods": {name: self.method_json(name) for name in self.methods},
            "verdict": verdict(self),
            "timing": self.timing.to_json(),
        }


def _ci(iv: Interval | None) -> list[float | None] | None:
    return None if iv is None else [num(iv.lo), num(iv.hi)]


def format_table(result: EvalResult) -> str:
    """A plain-text table: one row per method, one column per bucket, then ppl_in / ppl_ext; the
    totals line; the intervals table (:func:`format_intervals`); and the verdict (:func:`verdict`)."""
    first = next(iter(result.methods.values()))
    heads = [f"{_k(b.start)}-{_k(b.end)}" for b in first.buckets] + ["ppl_in", "ppl_ext"]
    rows = {name: [_fmt(b.ppl) for b in r.buckets] + [_fmt(r.ppl_in), _fmt(r.ppl_ext)]
            for name, r in result.methods.items()}
    lines = _columns(heads, rows)
    t = result.timing
    lines.append(
        f"{result.tokens} tokens x {len(result.methods)} methods ({t.windows} window(s) of {result.ctx}); "
        f"{t.tokens_decoded} tokens decoded in {t.seconds:.1f} s ({t.tokens_per_s:.1f} tokens/s), "
        f"{100 * t.decode_share:.1f}% inside llama_decode"
    )
    lines += format_intervals(result)
    lines.append(verdict(result))
    return "\n".join(lines)


def format_intervals(result: EvalResult) -> list[str]:
    """The intervals table (ppl_in and ppl_ext with their 95% intervals, and each method's
    ppl_ext / ppl_in against the window baseline with the paired interval) and how they were
    formed; one line when there is no interval."""
    unit, _, text = result.sampling()
    if unit is None:
        return [f"95% intervals: {text}"]
    L = result.n_ctx_train
    has_window = WINDOW in result.methods
    heads = ["ppl_in [95%]", "ppl_ext [95%]"] + (["ppl_in vs window", "ppl_ext vs window"] if has_window else [])
    rows = {}
    for name, m in result.methods.items():
        cells = [_with_ci(m.ppl_in, m.interval("in", L)), _with_ci(m.ppl_ext, m.interval("ext", L))]
        if has_window:
            cells += ["" if name == WINDOW else ratio_text(*result.vs_window(name, r)) for r in REGIONS]
        rows[name] = cells
    return _columns(heads, rows) + [f"95% intervals: {text}; vs window: paired, method minus window on "
                                    f"the same {'windows' if unit == 'window' else 'blocks'}"]


def verdict(result: EvalResult, window: str = WINDOW) -> str:
    """One line: does the best method (lowest ppl_ext) beat the ``window`` baseline on ppl_ext
    (the same tokens), and what does it cost on ppl_in (against the baseline's, the unscaled
    model's)? With intervals, "beats" means the paired 95% interval of the ppl_ext ratio lies
    entirely below 1 (every window, or block, taken into account), "does not pay" entirely
    above, and anything else is a tie; without an interval (too few tokens, no per-position
    data) the point estimates decide, and the line says there is no interval."""
    base = result.methods.get(window)
    scored = {n: r for n, r in result.methods.items() if n != window and math.isfinite(r.ppl_ext)}
    if base is None or not scored or not math.isfinite(base.ppl_ext):
        return "verdict: no window baseline to compare with (run without --no-window)"
    name, best = min(scored.items(), key=lambda kv: kv[1].ppl_ext)
    r_ext, iv = result.vs_window(name, "ext", window)
    r_in, iv_in = result.vs_window(name, "in", window)
    cost = f"ppl_in {_fmt(best.ppl_in)}, {ratio_text(r_in, iv_in)} vs the unscaled {_fmt(base.ppl_in)}"
    unit, n, _ = result.sampling()
    pair = f"{_fmt(best.ppl_ext)} vs {_fmt(base.ppl_ext)}, {ratio_text(r_ext, iv)}"
    if iv is None:
        pair += " (no interval: use --windows 2 or more)"
    else:
        pair += f" paired over {n} {'windows' if unit == 'window' else 'blocks of one window, a rough guide'}"
    beats = iv.hi < 1 if iv is not None else r_ext < 1
    if beats:
        return f"verdict: {name} beats the window baseline on ppl_ext: {pair}; at {cost}"
    if iv is None or iv.lo > 1:
        return (f"verdict: no method beats the window baseline on ppl_ext (best {name}: {pair}; {cost}): "
                f"extension does not pay on this text; a sliding window of the training length does better")
    return (f"verdict: no method is distinguishable from the window baseline on ppl_ext (best {name}: {pair}, "
            f"an interval that includes 0%; {cost}): a tie on this text; more windows (--windows) would narrow it")


def _columns(heads: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A header and one line per row: the name left-aligned, the cells right-aligned >= 2 apart."""
    cw = 2 + max(len(c) for c in heads + [c for cells in rows.values() for c in cells])
    w = max(8, max(len(n) for n in rows) + 1)
    lines = [f"{'method':<{w}}" + "".join(f"{h:>{cw}}" for h in heads)]
    return lines + [f"{name:<{w}}" + "".join(f"{c:>{cw}}" for c in cells) for name, cells in rows.items()]


def _with_ci(x: float, iv: Interval | None) -> str:
    return _fmt(x) if iv is None else f"{_fmt(x)} [{_fmt(iv.lo)}, {_fmt(iv.hi)}]"


def _k(x: int) -> str:
    return f"{x // 1024}k" if x % 1024 == 0 and x >= 1024 else str(x)


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.4g}" if x < 1e4 else f"{x:.3e}"
