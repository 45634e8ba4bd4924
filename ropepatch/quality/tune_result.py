"""What ``tune`` found: the trials, the sliding-window row, the verdict (does extension pay?),
their JSON shape (``ropepatch tune --json``) and the text tables.

"Extension pays" when the best candidate whose ``ppl_in`` stays within the tolerance BEATS
``window`` (the unscaled model scoring the same tokens through a sliding window of its training
length L, stride L/2) on ``ppl_ext``: the 95% interval of the ratio winner / window, PAIRED on
the same tokens (:func:`ropepatch.quality.intervals.paired_interval`: block by block within the
one window tune scores, a rough guide as in ``eval --windows 1``), lies wholly below 1 -- the
rule ``eval``'s verdict uses. A tie (an interval that includes 1) does not pay, nor does a worse
winner. Without samples (a caller's scorer that returns bare figures) the point estimates
decide, and the verdict says so. When extension does not pay, the honest advice is to use a
sliding window, and ``tune --apply`` refuses to write such a winner unless forced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ropepatch.patch.gguf import PatchResult
from ropepatch.quality.intervals import paired_interval, ratio_text
from ropepatch.quality.results import num
from ropepatch.quality.stats import Interval

# (unit, per-sample mean NLL over positions >= L): "block"s of the one window, or "window"s
ExtSamples = tuple[str, np.ndarray]


@dataclass(frozen=True)
class Trial:
    """One candidate: a method at one alpha (plus its options, e.g. the points of ``factors``)."""

    alpha: float
    label: str  # e.g. "ntk@2.5"
    ppl_in: float
    ppl_ext: float | None  # None: stopped after the in-range check
    feasible: bool
    stage: str  # "grid" | "extend" | "refine" (a plug-in search may name its own)
    note: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # method options to write with it (factor methods)
    ext: ExtSamples | None = field(default=None, compare=False, repr=False)  # for the paired verdict

    def to_json(self) -> dict:
        d = {"alpha": num(self.alpha), "label": self.label, "ppl_in": num(self.ppl_in),
             "ppl_ext": None if self.ppl_ext is None else num(self.ppl_ext),
             "feasible": self.feasible, "stage": self.stage, "note": self.note}
        if self.options:
            d["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}
        return d


@dataclass(frozen=True)
class WindowRow:
    """The sliding-window baseline on the tune's tokens. Its ``ppl_in`` (positions < L, the
    first window) is the unscaled model's: the baseline the tolerance is relative to."""

    ppl_in: float
    ppl_ext: float
    length: int  # L
    stride: int  # L / 2
    ext: ExtSamples | None = field(default=None, compare=False, repr=False)  # for the paired verdict

    @property
    def note(self) -> str:
        return f"sliding window of {self.length}, stride {self.stride}"

    def to_json(self) -> dict:
        return {"label": "window", "ppl_in": num(self.ppl_in), "ppl_ext": num(self.ppl_ext),
                "window": self.length, "stride": self.stride}


def vs_window(window: WindowRow, winner: Trial) -> tuple[float, Interval | None]:
    """``(ratio, interval)``: the winner's ppl_ext over the window's on the same tokens, and
    the paired 95% interval of that ratio (None without matching samples)."""
    x, y = window.ppl_ext, winner.ppl_ext
    if y is None or not (math.isfinite(x) and x > 0 and math.isfinite(y)):
        return math.nan, None
    ratio = y / x
    iv = paired_interval(winner.ext, window.ext, math.log(ratio))
    return ratio, None if iv is None else iv.map(math.exp)


def _paired_words(window: WindowRow, iv: Interval | None) -> str:
    if iv is None:
        return "no interval, point estimates"
    unit = window.ext[0] if window.ext else "block"
    return f"paired over {iv.n} {'windows' if unit == 'window' else 'blocks of one window, a rough guide'}"


def pay_verdict(window: WindowRow, winner: Trial | None, what: str) -> tuple[bool, str]:
    """``(pays, verdict)``: does the best feasible candidate ``winner`` (of ``what``: a method
    name, or "any method") BEAT the sliding window on ``ppl_ext``: the paired 95% interval of
    the ratio wholly below 1 (the point estimate when there is no interval)? Ties do not pay."""
    x = window.ppl_ext
    if winner is None or winner.ppl_ext is None:
        return False, (f"extension does not pay here: use a sliding window (window ppl_ext {x:.4g}; "
                       f"no {what} candidate kept ppl_in within the tolerance)")
    y = winner.ppl_ext
    ratio, iv = vs_window(window, winner)
    how = f"{ratio_text(ratio, iv)}, {_paired_words(window, iv)}"
    if math.isfinite(ratio) and (iv.hi < 1 if iv is not None else ratio < 1):
        return True, (f"extension pays: {winner.label} beats the sliding window on ppl_ext "
                      f"({y:.4g} vs window {x:.4g}, {how})")
    if iv is not None and iv.lo <= 1:
        return False, (f"extension does not pay here: use a sliding window ({winner.label} ties with it on "
                       f"ppl_ext: {y:.4g} vs window {x:.4g}, {how}; the interval includes 0%, more text "
                       f"would narrow it: eval --windows 2 or more)")
    return False, (f"extension does not pay here: use a sliding window (window ppl_ext {x:.4g} vs best "
                   f"{y:.4g}, {winner.label}{'' if not math.isfinite(ratio) else ': ' + how})")


def _vs_window_json(window: WindowRow | None, winner: Trial | None) -> dict | None:
    """The winner's ppl_ext against the window, for ``--json``: the ratio and its paired interval."""
    if window is None or winner is None or winner.ppl_ext is None:
        return None
    ratio, iv = vs_window(window, winner)
    return {"ppl_ext_ratio": num(ratio), "ci": None if iv is None else [num(iv.lo), num(iv.hi)],
            "paired_over": None if iv is None else f"{iv.n} {window.ext[0]}s"}


@dataclass(frozen=True)
class TuneResult:
    """One method's search (``tune --method M``), or one method's part of ``--method all``."""

    model: str
    method: str
    ctx: int
    n_ctx_train: int
    tolerance: float
    baseline_ppl_in: float
    default_alpha: float  # s = ctx / L: the untuned formula
    tried: tuple[Trial, ...]
    winner: Trial | None
    verdict: str  # does extension pay (vs window)?
    tuning: str = ""  # what tuning gained over the untuned formula
    window: WindowRow | None = None
    pays: bool = False
    warnings: tuple[str, ...] = ()
    applied: PatchResult | None = None  # set by apply_tune

    @property
    def limit(self) -> float:
        return self.baseline_ppl_in * (1.0 + self.tolerance)

    @property
    def winner_method(self) -> str | None:
        return self.method if self.winner is not None else None

    def to_json(self) -> dict:
        d = {
            "model": self.model, "method": self.method, "ctx": self.ctx, "n_ctx_train": self.n_ctx_train,
            "tolerance": self.tolerance, "baseline_ppl_in": num(self.baseline_ppl_in),
            "ppl_in_limit": num(self.limit), "default_alpha": num(self.default_alpha),
            "tried": [t.to_json() for t in self.tried],
            "window": self.window.to_json() if self.window else None,
            "winner": {**self.winner.to_json(), "method": self.method} if self.winner else None,
            "pays": self.pays, "verdict": self.verdict, "tuning": self.tuning,
            "vs_window": _vs_window_json(self.window, self.winner),
        }
        return _finish_json(self, d)


@dataclass(frozen=True)
class TuneAllResult:
    """``tune --method all``: each method's search on the same tokens, one window, one baseline."""

    model: str
    ctx: int
    n_ctx_train: int
    tolerance: float
    baseline_ppl_in: float
    window: WindowRow
    results: tuple[TuneResult, ...]  # registry order
    skipped: tuple[tuple[str, str], ...]  # (method, why)
    winner_method: str | None
    winner: Trial | None
    pays: bool
    verdict: str
    warnings: tuple[str, ...] = ()
    applied: PatchResult | None = None

    method = "all"

    @property
    def limit(self) -> float:
        return self.baseline_ppl_in * (1.0 + self.tolerance)

    def to_json(self) -> dict:
        d = {
            "model": self.model, "method": "all", "ctx": self.ctx, "n_ctx_train": self.n_ctx_train,
            "tolerance": self.tolerance, "baseline_ppl_in": num(self.baseline_ppl_in),
            "ppl_in_limit": num(self.limit), "window": self.window.to_json(),
            "methods": {r.method: r.to_json() for r in self.results},
            "skipped": dict(self.skipped),
            "winner": {**self.winner.to_json(), "method": self.winner_method} if self.winner else None,
            "pays": self.pays, "verdict": self.verdict,
            "vs_window": _vs_window_json(self.window, self.winner),
        }
        return _finish_json(self, d)


def _finish_json(r: TuneResult | TuneAllResult, d: dict) -> dict:
    d["warnings"] = list(r.warnings)
    if r.applied is not None:
        d["applied"] = {"path": r.applied.out, "mode": r.applied.mode, "method": r.winner_method,
                        "alpha": num(r.winner.alpha)}
    return d


# ---- text ---------------------------------------------------------------------------------------


def _row(mark: str, method: str | None, alpha: str, pin: float, pext: float | None, stage: str, note: str) -> str:
    ext = "-" if pext is None else f"{pext:.4g}"
    head = f"{mark}{method:<10}" if method is not None else mark
    width = 7 if method is None else 8
    return f"{head}{alpha:>{width}} {pin:>10.4g} {ext:>10}  {stage:<8} {note}".rstrip()


def _rows(r: TuneResult, mark_winner: Trial | None, with_method: bool) -> list[str]:
    out = []
    for t in r.tried:
        mark = "*" if mark_winner is not None and t == mark_winner else " "
        note = t.note + (" (ctx/L)" if abs(t.alpha - float(f"{r.default_alpha:.4g}")) < 1e-9 else "")
        out.append(_row(mark, r.method if with_method else None, f"{t.alpha:.4g}", t.ppl_in, t.ppl_ext, t.stage,
                        note))
    return out


def _window_row(w: WindowRow | None, with_method: bool) -> list[str]:
    if w is None:
        return []
    if with_method:
        return [_row(" ", "window", "-", w.ppl_in, w.ppl_ext, "baseline", w.note)]
    return [_row(" ", None, "window", w.ppl_in, w.ppl_ext, "baseline", w.note)]


def _tail(r: TuneResult | TuneAllResult) -> list[str]:
    lines = [r.verdict]
    if r.applied is not None:
        lines.append(f"applied: {r.applied.out} patched with {r.winner_method} alpha {r.winner.alpha:g} "
                     f"({r.applied.mode})")
    return lines


def format_tune(r: TuneResult | TuneAllResult) -> str:
    """The table of tried values, the window row and the verdict, as the CLI prints it."""
    if isinstance(r, TuneAllResult):
        return format_tune_all(r)
    lines = [f"{r.model}: tuning {r.method} for {r.ctx} tokens (trained at {r.n_ctx_train}); "
             f"unscaled ppl_in {r.baseline_ppl_in:.4g}, limit {r.limit:.4g} (+{r.tolerance:.0%})",
             f"{'alpha':>8} {'ppl_in':>10} {'ppl_ext':>10}  {'stage':<8} note"]
    lines += _rows(r, r.winner, False) + _window_row(r.window, False)
    lines.append(f"winner: {r.winner.label}" if r.winner else "winner: none")
    if r.tuning:
        lines.append(r.tuning)
    return "\n".join(lines + _tail(r))


def format_tune_all(r: TuneAllResult) -> str:
    """``--method all``: one table, a method column, each method's rows then the window."""
    names = ", ".join(x.method for x in r.results)
    lines = [f"{r.model}: tuning every method ({names}) for {r.ctx} tokens (trained at {r.n_ctx_train}); "
             f"unscaled ppl_in {r.baseline_ppl_in:.4g}, limit {r.limit:.4g} (+{r.tolerance:.0%})",
             f" {'method':<10}{'alpha':>8} {'ppl_in':>10} {'ppl_ext':>10}  {'stage':<8} note"]
    for x in r.results:
        lines += _rows(x, r.winner if x.method == r.winner_method else None, True)
    lines += _window_row(r.window, True)
    for m, why in r.skipped:
        lines.append(f"skipped {m}: {why}")
    best = [f"{x.winner.label} {x.winner.ppl_ext:.4g}" if x.winner else f"{x.method} none" for x in r.results]
    lines.append("best per method (ppl_ext): " + ", ".join(best))
    lines.append(f"winner: {r.winner.label}" if r.winner else "winner: none")
    return "\n".join(lines + _tail(r))
