"""Find the best alpha/factor for a method on the user's model and text.

Objective: minimise ``ppl_ext`` (perplexity at positions >= the training length L) subject to
``ppl_in`` (positions < L) staying within ``tolerance`` (default 5%) of the UNSCALED model's
``ppl_in`` on the same tokens.

Few evaluations:

* the text is tokenized once and every candidate scores the same window;
* the unscaled baseline needs only the first L positions (causal: positions < L of a longer
  run are exactly the L-context model's), so it costs L tokens, not ctx;
* each candidate is checked on that same prefix first: once positions < L are scored its
  ``ppl_in`` is EXACT, and a candidate over the tolerance is stopped there (its ``ppl_ext``
  is not measured). That is the only prefix shortcut taken: ``ppl_ext`` on a shorter window
  would favour too-small alphas (the far positions are where they fail), so it is always
  measured on the whole window;
* search on a log scale: a coarse grid of multiples of s = ctx / L (s itself, the untuned
  formula, always included), ascending; larger alphas are skipped once one is infeasible
  (``ppl_in`` grows with alpha for these methods); while the best point is at an edge of what
  was tried, the grid is extended past it (up; or down toward 1 when a feasible larger alpha
  was measured worse); then a few refinement steps
  (parabolic interpolation of log ppl_ext against log alpha through the best point and its
  neighbours, falling back to a log-midpoint / golden-section step, or a bisection of the
  feasibility boundary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.patch.gguf import PatchResult, patch_gguf
from ropepatch.quality.buckets import default_buckets
from ropepatch.quality.options import RunOptions
from ropepatch.quality.progress import Meter, ProgressFn
from ropepatch.quality.results import MethodResult, num
from ropepatch.quality.scoring import extension_original, score_method
from ropepatch.quality.specs import UNSCALED, MethodSpec
from ropepatch.quality.text import text_windows
from ropepatch.rope.methods import METHODS
from ropepatch.rope.params import RopeParams
from ropepatch.runtime.session import Model

TUNABLE = tuple(name for name, m in METHODS.items() if m.takes_alpha)  # registry order
DEFAULT_TOLERANCE = 0.05
DEFAULT_GRID = (1.0, 1.5, 2.0, 3.0)  # multiples of s = ctx / L
MAX_EXTEND = 2
EXTEND_RATIO = 1.5


@dataclass(frozen=True)
class Trial:
    alpha: float
    label: str  # e.g. "ntk@2.5"
    ppl_in: float
    ppl_ext: float | None  # None: stopped after the in-range check
    feasible: bool
    stage: str  # "grid" | "extend" | "refine"
    note: str = ""

    def to_json(self) -> dict:
        return {"alpha": num(self.alpha), "label": self.label, "ppl_in": num(self.ppl_in),
                "ppl_ext": None if self.ppl_ext is None else num(self.ppl_ext),
                "feasible": self.feasible, "stage": self.stage, "note": self.note}


@dataclass(frozen=True)
class TuneResult:
    model: str
    method: str
    ctx: int
    n_ctx_train: int
    tolerance: float
    baseline_ppl_in: float
    default_alpha: float  # s = ctx / L: the untuned formula
    tried: tuple[Trial, ...]
    winner: Trial | None
    verdict: str
    applied: PatchResult | None = None  # set by apply_tune

    @property
    def limit(self) -> float:
        return self.baseline_ppl_in * (1.0 + self.tolerance)

    def to_json(self) -> dict:
        d = {
            "model": self.model, "method": self.method, "ctx": self.ctx, "n_ctx_train": self.n_ctx_train,
            "tolerance": self.tolerance, "baseline_ppl_in": num(self.baseline_ppl_in),
            "ppl_in_limit": num(self.limit), "default_alpha": num(self.default_alpha),
            "tried": [t.to_json() for t in self.tried],
            "winner": self.winner.to_json() if self.winner else None,
            "verdict": self.verdict,
        }
        if self.applied is not None:
            d["applied"] = {"path": self.applied.out, "mode": self.applied.mode, "alpha": num(self.winner.alpha)}
        return d


# a scorer maps (spec, stop_in) -> MethodResult, or a dict with "result": {"ppl_in", "ppl_ext"}
Scorer = Callable[[MethodSpec, Callable[[float], bool] | None], object]


def _measured(r) -> tuple[float, float | None]:
    if isinstance(r, MethodResult):
        ext = r.ppl_ext if (r.n_ext and math.isfinite(r.ppl_ext)) else None
        return r.ppl_in, ext
    res = r["result"] if "result" in r else r
    ext = res.get("ppl_ext")
    return float(res["ppl_in"]), (None if ext is None or not r.get("complete", True) else float(ext))


def _label(method: str, alpha: float) -> str:
    return f"{method}@{alpha:.4g}"


class _Search:
    """The search's state: the scorer, the in-range limit and every trial so far."""

    def __init__(self, scorer: Scorer, method: str, L: int, s: float, tolerance: float,
                 say: Callable[[str], None], step: Callable[[str], None]):
        self.scorer, self.method, self.L, self.s, self.tolerance = scorer, method, L, s, tolerance
        self.say, self.step = say, step
        self.tried: dict[float, Trial] = {}
        self.base_in = self.limit = float("nan")

    def measure(self, spec: MethodSpec, stop_in: Callable[[float], bool]) -> tuple[float, float | None]:
        self.step(f"tuning {self.method}: scoring {spec.label}")
        return _measured(self.scorer(spec, stop_in))

    def baseline(self) -> None:
        """The unscaled model's ppl_in (positions < L only) and the limit derived from it."""
        self.say(f"baseline: unscaled model on positions < {self.L}")
        self.base_in, _ = self.measure(MethodSpec(UNSCALED, UNSCALED), lambda _p: True)
        self.limit = self.base_in * (1.0 + self.tolerance)
        self.say(f"  ppl_in {self.base_in:.4g}; limit {self.limit:.4g} (+{self.tolerance:.0%})")

    def trial(self, alpha: float, stage: str, note: str = "") -> Trial:
        """Score ``alpha`` (rounded to 4 digits, at least 1) unless it was already tried."""
        alpha = float(f"{max(1.0, alpha):.4g}")
        if alpha in self.tried:
            return self.tried[alpha]
        lab = _label(self.method, alpha)
        self.say(f"{stage}: {lab}")
        limit = self.limit
        pin, pext = self.measure(MethodSpec(lab, self.method, alpha), lambda p: p > limit)
        feas = pin <= limit
        t = Trial(alpha, lab, pin, pext if feas else None, feas, stage,
                  note or ("" if feas else f"ppl_in over the limit {limit:.4g}: stopped at {self.L}"))
        self.tried[alpha] = t
        self.say(f"  ppl_in {pin:.4g} ppl_ext {'-' if t.ppl_ext is None else f'{t.ppl_ext:.4g}'}"
                 f"{'' if feas else ' (infeasible)'}")
        return t

    def best(self) -> Trial | None:
        ok = [t for t in self.tried.values() if t.feasible and t.ppl_ext is not None]
        return min(ok, key=lambda t: t.ppl_ext) if ok else None

    def grid(self, grid: Sequence[float] | None) -> None:
        """The coarse stage, ascending; larger alphas are skipped once one is infeasible."""
        s = self.s
        alphas = sorted({float(f"{max(1.0, a):.4g}") for a in (grid or [s * f for f in DEFAULT_GRID])})
        if grid is None and float(f"{s:.4g}") not in alphas:
            alphas = sorted({*alphas, float(f"{s:.4g}")})
        for i, a in enumerate(alphas):
            if not self.trial(a, "grid").feasible:
                for b in alphas[i + 1:]:
                    self.say(f"grid: skip {_label(self.method, b)} (larger than an infeasible alpha)")
                break

    def extend(self) -> None:
        """Step down toward alpha = 1 while nothing is feasible; then extend the grid while the
        best is at its edge: upward while still feasible, downward (toward alpha = 1) when the
        smallest alpha tried is the best."""
        tried = self.tried
        for _ in range(MAX_EXTEND):
            if self.best() is not None or min(tried) <= 1.0:
                break
            self.trial(max(1.0, min(tried) / EXTEND_RATIO ** 2), "extend")
        for _ in range(MAX_EXTEND):
            b = self.best()
            if b is not None and b.alpha == max(tried):
                self.trial(b.alpha * EXTEND_RATIO, "extend")
            elif (b is not None and b.alpha == min(tried) and b.alpha > 1.0
                  and any(t.alpha > b.alpha and t.ppl_ext is not None for t in tried.values())):
                # measured evidence that ppl_ext gets worse above the best: look below it
                self.trial(b.alpha / EXTEND_RATIO, "extend")
            else:
                break

    def refine(self, steps: int) -> None:
        for _ in range(max(0, steps)):
            b = self.best()
            if b is None:
                break
            nxt = _refine_point(sorted(self.tried.values(), key=lambda t: t.alpha), b)
            if nxt is None:
                break
            self.trial(nxt, "refine")

    def result(self, model_path: str, ctx: int) -> TuneResult:
        w = self.best()
        table = tuple(sorted(self.tried.values(), key=lambda t: t.alpha))
        verdict = _verdict(self.method, self.s, table, w, self.tolerance)
        return TuneResult(os.path.basename(model_path), self.method, ctx, self.L, self.tolerance,
                          self.base_in, self.s, table, w, verdict)


def _model_scorer(model: Model, ctx: int, text, tokens, original: RopeParams,
                  progress: ProgressFn | None) -> Scorer:
    """The built-in scorer: one window of the text, each spec scored by :func:`score_method`."""
    _, windows = text_windows(model, ctx, text, tokens, 1, "tune")
    edges = default_buckets(ctx, original.n_ctx_train)

    def scorer(spec: MethodSpec, stop_in=None) -> MethodResult:
        meter = Meter(ctx - 1, progress)
        meter.label = spec.label
        return score_method(model, windows, spec, original, ctx, edges, meter, stop_in=stop_in)

    return scorer


def _check_tune_args(method: str, tolerance: float) -> None:
    if method not in TUNABLE:
        raise UsageError(f"--method: tune searches one of {', '.join(TUNABLE)}, found {method!r}")
    if not (math.isfinite(tolerance) and 0 <= tolerance < 10):
        raise UsageError(f"--tolerance: expected a fraction like 0.05, found {tolerance}")


def tune(
    model_path: str,
    ctx: int,
    text: str | bytes | None = None,
    *,
    tokens: np.ndarray | None = None,
    method: str = "ntk",
    tolerance: float = DEFAULT_TOLERANCE,
    grid: Sequence[float] | None = None,
    refine: int = 2,
    apply: bool = False,
    log: Callable[[str], None] | None = None,
    scorer: Scorer | None = None,
    **run,
) -> TuneResult:
    """Search ``method``'s alpha for ``ctx`` on ``text`` (see the module docstring).

    ``grid``: explicit alphas for the coarse stage (default: s x (1, 1.5, 2, 3), at least 1).
    ``apply``: patch the file with the winner (:func:`apply_tune`). ``log(str)``: the search's
    narration. ``scorer``: replaces the built-in scoring (used by the bench to cache runs).
    ``run``: the :class:`~ropepatch.quality.options.RunOptions` fields (``on_step`` is told when
    the load and each candidate's scoring start)."""
    opts = RunOptions(**run)
    _check_tune_args(method, tolerance)
    original = extension_original(model_path, ctx, opts.original)
    L = original.n_ctx_train
    with contextlib.ExitStack() as held:
        if scorer is None:
            m = held.enter_context(opts.open(model_path))
            scorer = _model_scorer(m, ctx, text, tokens, original, opts.progress)
        search = _Search(scorer, method, L, ctx / L, tolerance, log or (lambda _m: None), opts.step)
        search.baseline()
        search.grid(grid)
        search.extend()
        search.refine(refine)
    result = search.result(model_path, ctx)
    return apply_tune(model_path, result) if apply else result


def apply_tune(model_path: str, result: TuneResult) -> TuneResult:
    """Patch ``model_path`` with the winner of ``result`` (``patch_gguf``; the provenance records
    it as ``ropepatch.alpha``): ``result`` with ``applied`` set. UsageError when nothing won."""
    if result.winner is None:
        raise UsageError(f"{model_path}: tune found no {result.method} alpha within the ppl_in tolerance; "
                         f"nothing applied (try a larger --tolerance)")
    applied = patch_gguf(model_path, result.ctx, result.method, result.winner.alpha)
    return dataclasses.replace(result, applied=applied)


def _refine_point(ts: list[Trial], b: Trial) -> float | None:
    """The next alpha to try around the best trial ``b`` (log scale), or None when converged."""
    i = next(k for k, t in enumerate(ts) if t.alpha == b.alpha)
    lo = ts[i - 1] if i > 0 else None
    hi = ts[i + 1] if i + 1 < len(ts) else None
    x = math.log(b.alpha)
    cands: list[float] = []
    if lo is not None and hi is not None and lo.ppl_ext is not None and hi.ppl_ext is not None:
        # parabola through (log a, log ppl_ext) of the three points
        x0, x1, x2 = math.log(lo.alpha), x, math.log(hi.alpha)
        y0, y1, y2 = math.log(lo.ppl_ext), math.log(b.ppl_ext), math.log(hi.ppl_ext)
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        A = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den if den else 0.0
        B = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den if den else 0.0
        if A > 0:
            v = -B / (2 * A)
            if x0 < v < x2:
                cands.append(v)
    # fallback: a golden-section step into the wider side, or a bisection toward an infeasible
    # neighbour (the feasibility boundary)
    sides = [(x - math.log(t.alpha), t) for t in (lo,) if t is not None]
    sides += [(math.log(t.alpha) - x, t) for t in (hi,) if t is not None]
    if sides:
        _, t = max(sides, key=lambda w: w[0])
        frac = 0.5 if t.ppl_ext is None else 0.381966  # 2 - golden ratio
        cands.append(x + frac * (math.log(t.alpha) - x))
    for v in cands:
        a = float(f"{math.exp(v):.4g}")
        if all(abs(math.log(a) - math.log(t.alpha)) > 0.02 for t in ts) and a >= 1.0:
            return a
    return None


def _verdict(method: str, s: float, table: Sequence[Trial], w: Trial | None, tol: float) -> str:
    d = next((t for t in table if abs(t.alpha - float(f"{s:.4g}")) < 1e-9), None)
    if w is None:
        return (f"no {method} alpha kept ppl_in within {tol:.0%} of the unscaled model's; "
                f"the smallest tried was {table[0].alpha:g}" if table else "nothing tried")
    if d is None:
        return f"best {method} alpha {w.alpha:g}: ppl_ext {w.ppl_ext:.4g}"
    if not d.feasible:
        return (f"the untuned formula (alpha = ctx/L = {s:g}) breaks the ppl_in tolerance "
                f"(ppl_in {d.ppl_in:.4g}); tuned alpha {w.alpha:g} keeps it: ppl_ext {w.ppl_ext:.4g}")
    if w.alpha == d.alpha:
        return (f"the untuned formula (alpha = ctx/L = {s:g}) is already the best value tried "
                f"(ppl_ext {d.ppl_ext:.4g}); tuning found nothing better within the tolerance")
    gain = 100 * (1 - w.ppl_ext / d.ppl_ext)
    return (f"tuned alpha {w.alpha:g} beats the untuned formula (alpha = ctx/L = {s:g}) on ppl_ext: "
            f"{w.ppl_ext:.4g} vs {d.ppl_ext:.4g} ({gain:.1f}% lower), ppl_in {w.ppl_in:.4g} vs {d.ppl_in:.4g}")


def format_tune(r: TuneResult) -> str:
    """The table of tried values and the winner, as the CLI prints it."""
    lines = [f"{r.model}: tuning {r.method} for {r.ctx} tokens (trained at {r.n_ctx_train}); "
             f"unscaled ppl_in {r.baseline_ppl_in:.4g}, limit {r.limit:.4g} (+{r.tolerance:.0%})",
             f"{'alpha':>8} {'ppl_in':>10} {'ppl_ext':>10}  {'stage':<7} note"]
    for t in r.tried:
        mark = "*" if r.winner is not None and t.alpha == r.winner.alpha else " "
        ext = "-" if t.ppl_ext is None else f"{t.ppl_ext:.4g}"
        note = t.note + (" (ctx/L)" if abs(t.alpha - float(f"{r.default_alpha:.4g}")) < 1e-9 else "")
        lines.append(f"{mark}{t.alpha:>7.4g} {t.ppl_in:>10.4g} {ext:>10}  {t.stage:<7} {note}".rstrip())
    lines.append(f"winner: {r.winner.label}" if r.winner else "winner: none")
    lines.append(r.verdict)
    if r.applied is not None:
        lines.append(f"applied: {r.applied.out} patched with {r.method} alpha {r.winner.alpha:g} ({r.applied.mode})")
    return "\n".join(lines)
