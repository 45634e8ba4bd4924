"""The alpha search of one method (what ``tune --method M`` does for every method that takes an
alpha), given a scorer of candidates on the tune's tokens.

Objective: minimise ``ppl_ext`` (perplexity at positions >= the training length L) subject to
``ppl_in`` (positions < L) staying within ``tolerance`` (default 5%) of the UNSCALED model's
``ppl_in`` on the same tokens (the sliding window's first window: measured once per tune).

Few evaluations:

* every candidate scores the same window of the text;
* each candidate is checked on the first L positions first: once they are scored its
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

import math
from typing import Callable, NamedTuple, Sequence

from ropepatch.quality.results import MethodResult
from ropepatch.quality.specs import MethodSpec
from ropepatch.quality.tune_result import Trial

DEFAULT_TOLERANCE = 0.05
DEFAULT_GRID = (1.0, 1.5, 2.0, 3.0)  # multiples of s = ctx / L
MAX_EXTEND = 2
EXTEND_RATIO = 1.5

# a scorer maps (spec, stop_in) -> MethodResult, or a dict with "result": {"ppl_in", "ppl_ext"}
Scorer = Callable[[MethodSpec, Callable[[float], bool] | None], object]


def measured(r) -> tuple[float, float | None]:
    """``(ppl_in, ppl_ext)`` of what a scorer returned (``ppl_ext`` None when stopped early)."""
    if isinstance(r, MethodResult):
        ext = r.ppl_ext if (r.n_ext and math.isfinite(r.ppl_ext)) else None
        return r.ppl_in, ext
    res = r["result"] if "result" in r else r
    ext = res.get("ppl_ext")
    return float(res["ppl_in"]), (None if ext is None or not r.get("complete", True) else float(ext))


def ext_samples(r, L: int):
    """The samples the paired verdict needs from what a scorer returned: ``(unit, per-block or
    per-window mean NLL over positions >= L)`` of a complete :class:`MethodResult`; None for a
    candidate stopped early or a scorer that returns bare figures."""
    if not isinstance(r, MethodResult) or not (r.n_ext and math.isfinite(r.ppl_ext)):
        return None
    return r.samples("ext", L)


class Measured(NamedTuple):
    """One candidate as a search sees it: ``ppl_in``, ``ppl_ext`` (None when stopped early) and
    the ext samples of the paired verdict (None without them, :func:`ext_samples`)."""

    ppl_in: float
    ppl_ext: float | None
    ext: object = None


def measure_result(r, L: int) -> Measured:
    """:class:`Measured` of what a scorer returned (:func:`measured` and :func:`ext_samples`)."""
    return Measured(*measured(r), ext_samples(r, L))


def label(method: str, alpha: float) -> str:
    return f"{method}@{alpha:.4g}"


class AlphaSearch:
    """One method's search: the scorer, the in-range limit and every trial so far.
    ``baseline_in``: the unscaled model's ppl_in on positions < L (the limit is relative to it)."""

    def __init__(self, scorer: Scorer, method: str, L: int, s: float, tolerance: float, baseline_in: float,
                 say: Callable[[str], None], step: Callable[[str], None]):
        self.scorer, self.method, self.L, self.s, self.tolerance = scorer, method, L, s, tolerance
        self.say, self.step = say, step
        self.tried: dict[float, Trial] = {}
        self.base_in = baseline_in
        self.limit = baseline_in * (1.0 + tolerance)

    def run(self, grid: Sequence[float] | None, refine: int) -> None:
        """Grid, extension, refinement (see the module docstring)."""
        self.grid(grid)
        self.extend()
        self.refine(refine)

    def measure(self, spec: MethodSpec, stop_in: Callable[[float], bool]) -> Measured:
        """One candidate, scored."""
        self.step(f"tuning {self.method}: scoring {spec.label}")
        return measure_result(self.scorer(spec, stop_in), self.L)

    def trial(self, alpha: float, stage: str, note: str = "") -> Trial:
        """Score ``alpha`` (rounded to 4 digits, at least 1) unless it was already tried."""
        alpha = float(f"{max(1.0, alpha):.4g}")
        if alpha in self.tried:
            return self.tried[alpha]
        lab = label(self.method, alpha)
        self.say(f"{stage}: {lab}")
        limit = self.limit
        pin, pext, ext = self.measure(MethodSpec(lab, self.method, alpha), lambda p: p > limit)
        feas = pin <= limit
        t = Trial(alpha, lab, pin, pext if feas else None, feas, stage,
                  note or ("" if feas else f"ppl_in over the limit {limit:.4g}: stopped at {self.L}"),
                  ext=ext if feas else None)
        self.tried[alpha] = t
        self.say(f"  ppl_in {pin:.4g} ppl_ext {'-' if t.ppl_ext is None else f'{t.ppl_ext:.4g}'}"
                 f"{'' if feas else ' (infeasible)'}")
        return t

    def best(self) -> Trial | None:
        ok = [t for t in self.tried.values() if t.feasible and t.ppl_ext is not None]
        return min(ok, key=lambda t: t.ppl_ext) if ok else None

    def table(self) -> tuple[Trial, ...]:
        return tuple(sorted(self.tried.values(), key=lambda t: t.alpha))

    def grid(self, grid: Sequence[float] | None) -> None:
        """The coarse stage, ascending; larger alphas are skipped once one is infeasible."""
        s = self.s
        alphas = sorted({float(f"{max(1.0, a):.4g}") for a in (grid or [s * f for f in DEFAULT_GRID])})
        if grid is None and float(f"{s:.4g}") not in alphas:
            alphas = sorted({*alphas, float(f"{s:.4g}")})
        for i, a in enumerate(alphas):
            if not self.trial(a, "grid").feasible:
                for b in alphas[i + 1:]:
                    self.say(f"grid: skip {label(self.method, b)} (larger than an infeasible alpha)")
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
            nxt = refine_point(sorted(self.tried.values(), key=lambda t: t.alpha), b)
            if nxt is None:
                break
            self.trial(nxt, "refine")

    def tuning_note(self) -> str:
        """What tuning gained over the untuned formula alpha = s."""
        return tuning_note(self.method, self.s, self.table(), self.best(), self.tolerance)


def refine_point(ts: list[Trial], b: Trial) -> float | None:
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


def tuning_note(method: str, s: float, table: Sequence[Trial], w: Trial | None, tol: float) -> str:
    """The tuned alpha against the untuned formula (alpha = s), in one sentence."""
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
