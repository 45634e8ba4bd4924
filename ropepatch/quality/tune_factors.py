"""``tune --method factors``: a LongRoPE-style search for a monotone per-pair profile.

The candidate is a profile of K control points (:func:`ropepatch.rope.factors.profile_factors`:
per-pair divisors from the highest to the lowest frequency, never decreasing, interpolated in
log space; K = 8, or d/2 when that is smaller) plus an attention temperature M (``attn_factor``:
cos and sin times M, written as rope.scaling.attn_factor; in [0.5, 2]). Objective and constraint are tune's: minimise
``ppl_ext`` subject to ``ppl_in`` within the tolerance of the unscaled model's ``ppl_in`` on the
same tokens; a candidate whose ``ppl_in`` (exact once positions < L are scored) is over the
limit is stopped there -- the sound prefix evaluation -- and its ``ppl_ext`` is not measured.

Stages, each candidate scored once (a profile already tried is not scored again):

1. ``start``: first "yarn as factors" -- the ntk-parts ramp for alpha = s = ctx / L with
   YaRN's temperature M = 1 + 0.1 ln s, which is YaRN itself (docs/methods.md), the best known
   point --; then the same ramp with no temperature (M = 1), the NTK base change written as
   factors (``s^(2i/(d-2))``) and linear interpolation (every divisor s), each read off at the K
   control points;
2. ``shrink``, only when no starting profile keeps ppl_in within the tolerance (at ctx = 4L
   on SmolLM2 none does): yarn as factors at the scales s^(7/8), s^(6/8), .., s^(1/8), largest
   first, up to the first that keeps it (positions < L see only the profile, never ctx, so
   this is the largest yarn ramp the tolerance allows at any ctx; each one over it costs L
   tokens); the walk below would otherwise spend its budget on one point at a time;
3. ``coord``: coordinate search from the best candidate: for each control point (lowest
   frequency first) try multiplying it by r and by 1/r (the points after it raised, or the ones
   before it lowered, so the profile stays monotone; every divisor >= 1), then M by r^(1/4) and
   r^(-1/4) (clamped to [0.5, 2]), and keep the first that improves; when a whole pass improves
   nothing, r shrinks to sqrt(r) (1.2 down to 1.02);
4. ``evolve``: a few rounds of uniform crossover of the best candidates plus log-normal
   mutation (made monotone again; M taken from one parent), then one more short coordinate
   pass when they improved.

"Improves": a feasible candidate with a lower ``ppl_ext``; while nothing is feasible, a lower
``ppl_in`` (the search walks toward feasibility). ``--budget MINUTES`` (default 30) stops the
search before the next candidate once spent (the candidate being scored finishes; the first
starting profile always runs) and returns the best so far. Every candidate is scored on the
run's temporary patched copy of the model, re-patched in place per candidate
(:mod:`ropepatch.quality.factor_model`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ropepatch.quality import factor_model
from ropepatch.quality.specs import MethodSpec
from ropepatch.quality.tune_alpha import Measured, Scorer, measure_result
from ropepatch.quality.tune_result import Trial, TuneResult
from ropepatch.rope import factors as ff
from ropepatch.rope.params import RopeParams

if TYPE_CHECKING:
    from ropepatch.quality.tune_all import TuneShared

METHOD = "factors"
DEFAULT_BUDGET = 30.0  # minutes
R_START, R_MIN = 1.2, 1.02  # coordinate step ratios (1.2: see docs/methods.md, "the search")
EVOLVE_ROUNDS, CHILDREN, PARENTS, SIGMA = 2, 4, 4, 0.15
SHRINK_STEPS = 8  # the shrink stage's scales s^(k/8), k = 7 .. 1
MAX_DIVISOR = 1e6
ATTN_MIN, ATTN_MAX = 0.5, 2.0  # the attn_factor range (rope.factors.check_attn_factor)

# measure(points, stop_in, attn_factor) -> Measured(ppl_in, ppl_ext or None when stopped, ext
# samples of the paired verdict or None); a bare (ppl_in, ppl_ext) pair is read as one too
Measure = Callable[[tuple[float, ...], Callable[[float], bool], float], Measured | tuple[float, float | None]]
# a candidate: (control points, attn_factor)
Candidate = tuple[tuple[float, ...], float]


class OutOfBudget(Exception):
    """The search's time (or trial) budget is spent."""


def round_points(points: Sequence[float]) -> tuple[float, ...]:
    """``points`` made a valid profile: 4 significant digits, each in [1, 1e6], never decreasing."""
    out, top = [], 1.0
    for p in points:
        top = max(top, min(MAX_DIVISOR, float(f"{max(1.0, p):.4g}")))
        out.append(top)
    return tuple(out)


def round_attn(m: float) -> float:
    """An attn_factor made valid: 4 significant digits, clamped to [0.5, 2]."""
    return min(ATTN_MAX, max(ATTN_MIN, float(f"{m:.4g}")))


def points_label(points: Sequence[float], attn: float = 1.0) -> str:
    """``factors[1,1,1.2,...]`` (``@M`` added for an attn_factor M != 1): a candidate's name
    (unique per candidate, so caches keyed on it work)."""
    return f"{METHOD}[{','.join(f'{p:g}' for p in points)}]" + ("" if attn == 1.0 else f"@{attn:g}")


def points_of(t: Trial) -> tuple[float, ...]:
    """The control points a factors trial carries."""
    return tuple(dict(t.options)["points"])


def attn_of(t: Trial) -> float:
    """The attn_factor a factors trial carries (1 = none)."""
    return float(dict(t.options).get("attn_factor", 1.0))


def cand_of(t: Trial) -> Candidate:
    return points_of(t), attn_of(t)


def cand_text(c: Candidate) -> str:
    """``1,1,1.2,2`` or ``1,1,1.2,2 attn_factor 1.069``: a candidate for notes and the table."""
    pts = ",".join(f"{p:g}" for p in c[0])
    return pts if c[1] == 1.0 else f"{pts} attn_factor {c[1]:g}"


def start_profiles(original: RopeParams, ctx: int, count: int = ff.DEFAULT_POINTS
                   ) -> list[tuple[str, tuple[float, ...], float]]:
    """The starting candidates (name, points, attn_factor) for alpha = s = ctx / L, the best
    known first (see the module docstring)."""
    d, n, L = original.rope_dim, original.rope_dim // 2, original.n_ctx_train
    s = ctx / L
    k = max(2, min(count, n))
    ntk = [s ** (2 * i / (d - 2)) for i in range(n)] if d > 2 else [s] * n
    ramp, attn = yarn_profile(original, s, count)
    return [
        ("yarn as factors", ramp, attn),
        ("ntk-parts ramp", ramp, 1.0),
        ("ntk as factors", round_points(ff.sample_points(ntk, k)), 1.0),
        ("linear", round_points([s] * k), 1.0),
    ]


def yarn_profile(original: RopeParams, s: float, count: int = ff.DEFAULT_POINTS) -> Candidate:
    """YaRN at scale ``s`` as a candidate: the ntk-parts ramp read off at the control points,
    with YaRN's temperature 1 + 0.1 ln s."""
    d, L = original.rope_dim, original.n_ctx_train
    k = max(2, min(count, d // 2))
    ramp = ff.ntk_parts_factors(d, original.freq_base, L, s)
    return round_points(ff.sample_points(ramp, k)), round_attn(ff.yarn_attn_factor(s))


def shrink_profiles(original: RopeParams, ctx: int, count: int = ff.DEFAULT_POINTS
                    ) -> list[tuple[str, tuple[float, ...], float]]:
    """The ``shrink`` stage's candidates: yarn as factors at the smaller scales s^(k/N),
    k = N-1 .. 1 (N = :data:`SHRINK_STEPS`), largest first. Positions < L see only the
    profile, not ctx, so a ppl_in over the limit at ctx / L is over it at any ctx: the first
    of these within the limit is the largest yarn that keeps ppl_in, and the search goes on
    from there (LongRoPE's progressive extension, in one step)."""
    s = ctx / original.n_ctx_train
    out = []
    for k in range(SHRINK_STEPS - 1, 0, -1):
        sk = s ** (k / SHRINK_STEPS)
        if sk > 1.0 + 1e-9:
            out.append((f"yarn as factors at s = {sk:.3g}", *yarn_profile(original, sk, count)))
    return out


def start_cand(start: Sequence) -> Candidate:
    """A start (name, points[, attn_factor]) as a candidate (attn_factor 1 when not given)."""
    return round_points(start[1]), round_attn(start[2] if len(start) > 2 else 1.0)


def move(points: tuple[float, ...], j: int, ratio: float) -> tuple[float, ...]:
    """Point ``j`` times ``ratio``, the profile kept monotone: raising it raises the points after
    it that fall below; lowering it lowers the points before it that rise above."""
    p = list(points)
    p[j] = max(1.0, p[j] * ratio)
    for i in range(len(p)):
        p[i] = max(p[i], p[j]) if i > j else (min(p[i], p[j]) if i < j else p[i])
    return round_points(p)


class FactorSearch:
    """The search's state: every trial so far, the limit, the budget."""

    def __init__(self, measure: Measure, L: int, limit: float, *, budget_s: float | None = None,
                 max_trials: int | None = None, say: Callable[[str], None] = lambda _m: None,
                 clock: Callable[[], float] = time.monotonic, seed: int = 0):
        self.measure, self.L, self.limit = measure, L, limit
        self.budget_s, self.max_trials, self.say, self.clock = budget_s, max_trials, say, clock
        self.rng = random.Random(seed)
        self.tried: dict[Candidate, Trial] = {}
        self.t0 = clock()
        self.out_of_budget = False

    # -- one candidate
    def _check_budget(self) -> None:
        if not self.tried:
            return  # the first starting profile always runs
        if self.max_trials is not None and len(self.tried) >= self.max_trials:
            raise OutOfBudget
        if self.budget_s is not None and self.clock() - self.t0 >= self.budget_s:
            raise OutOfBudget

    def trial(self, points: Sequence[float], stage: str, note: str = "", attn: float = 1.0) -> Trial:
        """Score the profile ``points`` with attn_factor ``attn`` unless that candidate was
        already tried (OutOfBudget when spent)."""
        pts, attn = round_points(points), round_attn(attn)
        if (pts, attn) in self.tried:
            return self.tried[(pts, attn)]
        self._check_budget()
        lab = points_label(pts, attn)
        self.say(f"{stage}: {lab}")
        limit = self.limit
        m = Measured(*self.measure(pts, lambda p: p > limit, attn))
        feas = m.ppl_in <= limit
        t = Trial(profile_alpha(pts), lab, m.ppl_in, m.ppl_ext if feas else None, feas, stage,
                  note or ("" if feas else f"ppl_in over the limit {limit:.4g}: stopped at {self.L}"),
                  options=(("points", pts), ("attn_factor", attn)), ext=m.ext if feas else None)
        self.tried[(pts, attn)] = t
        self.say(f"  ppl_in {m.ppl_in:.4g} ppl_ext {'-' if t.ppl_ext is None else f'{t.ppl_ext:.4g}'}"
                 f"{'' if feas else ' (infeasible)'}")
        return t

    # -- ranking
    @staticmethod
    def key(t: Trial) -> tuple[int, float]:
        """Feasible (by ppl_ext) before infeasible (by ppl_in)."""
        if t.feasible and t.ppl_ext is not None:
            return 0, t.ppl_ext
        return 1, t.ppl_in

    def leader(self) -> Trial:
        return min(self.tried.values(), key=self.key)

    def best(self) -> Trial | None:
        """The feasible trial with the lowest ppl_ext (None when nothing was feasible)."""
        t = self.leader() if self.tried else None
        return t if t is not None and self.key(t)[0] == 0 else None

    def table(self) -> tuple[Trial, ...]:
        return tuple(self.tried.values())  # in the order they were scored

    # -- stages
    def run(self, starts: Sequence[Sequence], *, shrink: Sequence[Sequence] = (), r_start: float = R_START,
            evolve_rounds: int = EVOLVE_ROUNDS) -> None:
        """Every stage, until done or out of budget (then ``out_of_budget`` is set); ``starts``
        and ``shrink``: (name, points[, attn_factor]) each; ``shrink`` is scored in order, only
        while no candidate is feasible, up to the first feasible one."""
        try:
            for start in starts:
                pts, attn = start_cand(start)
                self.trial(pts, "start", start[0], attn)
            for cand in shrink:
                if self.best() is not None:
                    break
                pts, attn = start_cand(cand)
                self.trial(pts, "shrink", cand[0], attn)
            self.coordinate(r_start)
            if self.evolve(evolve_rounds):
                self.coordinate(math.sqrt(r_start))
        except OutOfBudget:
            self.out_of_budget = True
            self.say(f"budget spent after {len(self.tried)} candidates: the best so far wins")

    def coordinate(self, r: float, r_min: float = R_MIN) -> None:
        """Multiply one control point at a time by r or 1/r, then the attn_factor by r^(1/4) or
        r^(-1/4); shrink r when a pass gains nothing."""
        while r >= r_min:
            improved = False
            for j in [*reversed(range(len(points_of(self.leader())))), -1]:  # -1: the attn_factor
                for ratio in ((r, 1.0 / r) if j >= 0 else (r ** 0.25, r ** -0.25)):
                    lead = self.leader()
                    pts, attn = cand_of(lead)
                    cand = (move(pts, j, ratio), attn) if j >= 0 else (pts, round_attn(attn * ratio))
                    if cand == (pts, attn):
                        continue
                    what = f"point {j + 1}" if j >= 0 else "attn_factor"
                    if self.key(self.trial(cand[0], "coord", f"{what} x{ratio:.3g}", cand[1])) < self.key(lead):
                        improved = True
                        break
            if not improved:
                r = math.sqrt(r)

    def evolve(self, rounds: int, children: int = CHILDREN) -> bool:
        """Crossover + mutation rounds over the best profiles; True when one improved the leader."""
        before = self.key(self.leader())
        for _ in range(max(0, rounds)):
            parents = sorted(self.tried.values(), key=self.key)[:PARENTS]
            if len(parents) < 2:
                break
            for _ in range(children):
                ta, tb = self.rng.sample(parents, 2)
                a, b = points_of(ta), points_of(tb)
                child = [x if self.rng.random() < 0.5 else y for x, y in zip(a, b)]
                child = [p * math.exp(self.rng.gauss(0.0, SIGMA)) if self.rng.random() < 2 / len(child) else p
                         for p in child]
                attn = attn_of(ta if self.rng.random() < 0.5 else tb)
                self.trial(round_points(child), "evolve", attn=attn)
        return self.key(self.leader()) < before


def spec_measure(scorer: Scorer, L: int, step: Callable[[str], None] = lambda _w: None) -> Measure:
    """A :data:`Measure` from tune's scorer of method specs: each candidate is the spec
    ``factors`` with the options ``points`` and ``attn_factor`` (scored on the run's temporary
    patched copy)."""

    def measure(points: tuple[float, ...], stop_in: Callable[[float], bool], attn: float = 1.0) -> Measured:
        spec = MethodSpec(points_label(points, attn), METHOD, profile_alpha(points),
                          (("points", points), ("attn_factor", attn)))
        step(f"tuning {METHOD}: scoring {spec.label}")
        return measure_result(scorer(spec, stop_in), L)

    return measure


def profile_alpha(points: Sequence[float]) -> float:
    """The alpha a profile is recorded with: its largest divisor (the lowest frequencies'
    interpolation factor, as ntk-parts' alpha)."""
    return max(points)


def budget_note(search: FactorSearch, budget_min: float | None) -> str:
    """One sentence on how the search ended."""
    n = len(search.tried)
    if search.out_of_budget:
        what = f"the --budget of {budget_min:g} min" if budget_min is not None else "the trial budget"
        return f"{n} profiles scored; the search stopped at {what}: the best so far wins"
    return f"{n} profiles scored; the search converged (coordinate steps down to x{R_MIN:g})"


def tuning_note(search: FactorSearch, starts: Sequence[Sequence], budget_min: float | None) -> str:
    """The best candidate against the untuned first start (yarn as factors for alpha = s)."""
    names = {start_cand(st): st[0] for st in starts}
    start, first = start_cand(starts[0]), starts[0][0]
    w, d = search.best(), search.tried.get(start)
    won_start = w is not None and cand_of(w) in names
    what = f"the {names[cand_of(w)]} starting profile" if won_start else "the searched profile"
    if w is None:
        head = "no factors profile kept ppl_in within the tolerance"
    elif d is None or not d.feasible or d.ppl_ext is None:
        head = f"best profile {cand_text(cand_of(w))}: ppl_ext {w.ppl_ext:.4g}"
        found = next((t for t in search.tried.values() if t.stage == "shrink" and t.feasible), None)
        if found is not None:  # the shrink stage stops at its first feasible candidate
            head = (f"no starting profile (alpha = ctx/L) kept ppl_in within the tolerance; the search went on from "
                    f"the largest yarn that did, {found.note}; {head}")
    elif cand_of(w) == start:
        head = f"the {first} start (alpha = ctx/L) is already the best profile tried (ppl_ext {w.ppl_ext:.4g})"
    else:
        head = (f"{what} beats the {first} start (alpha = ctx/L) on ppl_ext: {w.ppl_ext:.4g} vs "
                f"{d.ppl_ext:.4g} ({100 * (1 - w.ppl_ext / d.ppl_ext):.1f}% lower)")
    return f"{head}; {budget_note(search, budget_min)}"


def _shown(t: Trial, name: str) -> Trial:
    """``t`` with its control points and attn_factor (and the starting profile's name) in the
    note, for the table."""
    pts = cand_text(cand_of(t))
    extra = "; ".join(x for x in (name, t.note if not t.feasible else "") if x)
    return dataclasses.replace(t, note=f"{pts}" + (f" ({extra})" if extra else ""))


def search_factors(shared: TuneShared, method: str = METHOD) -> TuneResult:
    """tune's plug-in search for ``factors`` (:func:`ropepatch.quality.tune_all.plugin_searches`):
    the window and baseline are the shared ones; ``shared.budget_min`` limits it (default
    :data:`DEFAULT_BUDGET` minutes)."""
    budget = DEFAULT_BUDGET if shared.budget_min is None else shared.budget_min
    factor_model.check_specs(shared.model_path, shared.original, shared.ctx, [MethodSpec(method, method)])
    starts = start_profiles(shared.original, shared.ctx)
    shrink = shrink_profiles(shared.original, shared.ctx)
    search = FactorSearch(spec_measure(shared.scorer, shared.L, shared.step), shared.L, shared.limit,
                          budget_s=60.0 * budget, say=shared.log)
    shared.log(f"factors: {len(starts[0][1])} control points, budget {budget:g} min")
    search.run(starts, shrink=shrink)
    names = {start_cand(st): st[0] for st in [*shrink, *starts]}
    table = [_shown(t, names.get(cand_of(t), "")) for t in search.table()]
    best = search.best()
    winner = next((t for t in table if best is not None and cand_of(t) == cand_of(best)), None)
    return shared.finish(method, table, winner, tuning_note(search, starts, budget))


SEARCHES = {METHOD: search_factors}  # tune_all's plug-in table
