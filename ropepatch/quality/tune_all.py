"""tune's runner: the measurements every method shares, one search per method through a small
dispatch table, and ``--method all`` (every tunable method on the same tokens, the overall winner).

Measured ONCE per run, whatever the number of methods:

* the text, tokenized once: every candidate of every method scores the same ``ctx`` window;
* ``window``: the unscaled model scoring that window through a sliding window of its training
  length L (stride L/2; :func:`ropepatch.quality.scoring.score_method`, as ``eval`` does). Its
  first window is the unscaled model on positions < L, so its ``ppl_in`` IS the baseline the
  ``ppl_in`` tolerance is relative to: no separate baseline run.

Dispatch (:func:`searches`): a method maps to a :data:`SearchFn` ``search(shared, method) ->
TuneResult``. A method whose candidates are set by alpha alone (ntk, dynamic, linear, yarn, and
ntk-parts, whose candidates :func:`~ropepatch.quality.scoring.score_method` scores on a temporary
patched copy, :mod:`ropepatch.quality.factor_model`) uses :func:`search_alpha`, the alpha search
of :mod:`ropepatch.quality.tune_alpha`. A method whose search is something else (``factors``:
per-pair control points) PLUGS IN through :func:`plugin_searches` (see there); a plug-in may
also replace the alpha search of any method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ropepatch.errors import RopepatchError, UsageError
from ropepatch.quality import factor_model
from ropepatch.quality.buckets import default_buckets
from ropepatch.quality.options import RunOptions
from ropepatch.quality.progress import Meter, ProgressFn
from ropepatch.quality.scoring import extension_original, method_cost, score_method
from ropepatch.quality.specs import WINDOW, MethodSpec
from ropepatch.quality.text import text_windows
from ropepatch.quality.tune_alpha import AlphaSearch, Scorer, measure_result
from ropepatch.quality.tune_result import Trial, TuneAllResult, TuneResult, WindowRow, pay_verdict
from ropepatch.rope.methods import METHODS, make_plan
from ropepatch.rope.params import RopeParams
from ropepatch.runtime.session import Model

TUNABLE = tuple(name for name, m in METHODS.items() if m.takes_alpha)  # registry order
ALL = "all"  # --method all
PLUGIN_MODULE = "ropepatch.quality.tune_factors"  # where searches other than alpha's plug in
PLUGIN_ONLY = ("factors",)  # searched over more than alpha: only through a plug-in


@dataclass(frozen=True)
class TuneShared:
    """What every method's search shares (measured once), handed to each :data:`SearchFn`."""

    model_path: str
    ctx: int
    original: RopeParams  # the file's ORIGINAL RoPE parameters (n_ctx_train = L)
    tolerance: float
    window: WindowRow  # the sliding-window baseline; window.ppl_in = the unscaled ppl_in
    scorer: Scorer  # scores a MethodSpec (with its options) on the tokens, window included
    windows: tuple[np.ndarray, ...] | None  # the ctx-token window(s) scored; None with a caller's scorer
    run: RunOptions  # n_threads, n_gpu_layers, flash_attn, progress, on_step (model=None: load your own)
    log: Callable[[str], None]
    grid: Sequence[float] | None  # explicit coarse alphas, or None (s x DEFAULT_GRID)
    refine: int  # refinement steps
    step: Callable[[str], None]  # on_step, naming the method's place in --method all
    text: str | bytes | None = None  # what the caller gave (tokens: the text's ids without BOS)
    tokens: np.ndarray | None = None
    budget_min: float | None = None  # --budget MINUTES: a time limit for searches that take one (factors)

    @property
    def L(self) -> int:
        return self.original.n_ctx_train

    @property
    def s(self) -> float:
        return self.ctx / self.L

    @property
    def baseline_ppl_in(self) -> float:
        return self.window.ppl_in

    @property
    def limit(self) -> float:
        return self.baseline_ppl_in * (1.0 + self.tolerance)

    def finish(self, method: str, tried: Sequence[Trial], winner: Trial | None, tuning: str) -> TuneResult:
        """A method's :class:`TuneResult`: its trials and winner, with the window and the verdict."""
        pays, verdict = pay_verdict(self.window, winner, method)
        return TuneResult(os.path.basename(self.model_path), method, self.ctx, self.L, self.tolerance,
                          self.baseline_ppl_in, self.s, tuple(tried), winner, verdict, tuning, self.window, pays)


SearchFn = Callable[[TuneShared, str], TuneResult]


def search_alpha(shared: TuneShared, method: str, scorer: Scorer | None = None) -> TuneResult:
    """The alpha search (:class:`AlphaSearch`) of ``method`` with ``scorer`` (default the
    shared, run-time one): grid, extension, refinement."""
    search = AlphaSearch(scorer or shared.scorer, method, shared.L, shared.s, shared.tolerance,
                         shared.baseline_ppl_in, shared.log, shared.step)
    search.run(shared.grid, shared.refine)
    return shared.finish(method, search.table(), search.best(), search.tuning_note())


def plugin_searches() -> dict[str, SearchFn]:
    """THE PLUG-IN POINT for searches other than alpha's (``factors``' control points; it may
    also replace any method's). When the module :data:`PLUGIN_MODULE` exists, its ``SEARCHES``
    dict (method -> :data:`SearchFn`) is used: each search gets the :class:`TuneShared`
    (window, baseline, ``limit``, ``scorer`` -- ``scorer(MethodSpec(label, method, alpha,
    options), stop_in)`` scores any candidate on the shared tokens, factor methods on the run's
    temporary patched copy --, ``run`` options, ``log``/``step``, ``grid``/``refine``) and
    returns ``shared.finish(method, trials, best, note)``; the winner Trial's ``options`` (e.g.
    ``(("points", (...)),)``) are what ``--apply`` writes with its method and alpha."""
    try:
        mod = importlib.import_module(PLUGIN_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PLUGIN_MODULE:  # the plug-in exists but is broken: say so
            raise
        return {}
    return dict(getattr(mod, "SEARCHES", {}))


def searches() -> dict[str, SearchFn]:
    """method -> its search, for every tunable method that has one (registry order)."""
    plug = plugin_searches()
    table: dict[str, SearchFn] = {}
    for name in TUNABLE:
        if name in plug:
            table[name] = plug[name]
        elif name not in PLUGIN_ONLY:
            table[name] = search_alpha
    return table


def _unavailable(name: str) -> str:
    return f"its search (over more than alpha) plugs in from {PLUGIN_MODULE}, which is not available"


def plan_methods(method: str, tolerance: float, budget_min: float | None = None
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """``(methods to search, [(skipped method, why)])`` for ``--method``; UsageError when bad."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and 0 <= tolerance < 10):
        raise UsageError(f"--tolerance: expected a fraction like 0.05, found {tolerance}")
    if budget_min is not None and not (math.isfinite(budget_min) and budget_min > 0):
        raise UsageError(f"--budget: expected a number of minutes > 0, found {budget_min:g}")
    table = searches()
    if method == ALL:
        return [m for m in TUNABLE if m in table], [(m, _unavailable(m)) for m in TUNABLE if m not in table]
    if method not in TUNABLE:
        raise UsageError(f"--method: tune searches one of {', '.join(TUNABLE)} or all, found {method!r}")
    if method not in table:
        raise UsageError(f"--method {method}: tune cannot search it here: {_unavailable(method)}; "
                         f"tune one of {', '.join(table)} or all")
    return [method], []


def _plannable(original: RopeParams, ctx: int, names: Sequence[str], skipped: Sequence[tuple[str, str]]
               ) -> tuple[list[str], list[tuple[str, str]]]:
    """``--method all``: the methods this model can take (a method the file refuses, e.g. per-pair
    factors on an architecture that does not load them, is skipped with its reason)."""
    ok, out = [], list(skipped)
    for name in names:
        try:
            make_plan(original, ctx, name)
        except RopepatchError as e:
            out.append((name, str(e)))
        else:
            ok.append(name)
    if not ok:
        raise UsageError(f"--method all: no method can extend this model: {'; '.join(f'{m}: {w}' for m, w in out)}")
    order = {m: i for i, m in enumerate(TUNABLE)}
    return ok, sorted(out, key=lambda mw: order[mw[0]])


def model_scorer(model: Model, ctx: int, windows: Sequence[np.ndarray], original: RopeParams,
                 progress: ProgressFn | None) -> Scorer:
    """The built-in scorer: each spec scored on ``windows`` by :func:`score_method` (as eval)."""
    L = original.n_ctx_train
    edges = default_buckets(ctx, L)

    def scorer(spec: MethodSpec, stop_in=None):
        meter = Meter(method_cost(spec, ctx, L, len(windows)), progress)
        return score_method(model, list(windows), spec, original, ctx, edges, meter, stop_in=stop_in)

    return scorer


def measure_window(scorer: Scorer, L: int, ctx: int, say: Callable[[str], None],
                   step: Callable[[str], None]) -> WindowRow:
    """The sliding-window baseline on the tune's tokens (its ppl_in is the unscaled baseline)."""
    say(f"window: the unscaled model through a sliding window of {L} (stride {L // 2}); "
        f"its positions < {L} are the ppl_in baseline")
    step(f"tune: scoring window at {ctx} tokens")
    m = measure_result(scorer(MethodSpec(WINDOW, WINDOW), None), L)
    say(f"  ppl_in {m.ppl_in:.4g} ppl_ext {'-' if m.ppl_ext is None else f'{m.ppl_ext:.4g}'}")
    return WindowRow(m.ppl_in, math.nan if m.ppl_ext is None else m.ppl_ext, L, L // 2, m.ext)


def combine(shared: TuneShared, results: Sequence[TuneResult], skipped: Sequence[tuple[str, str]]) -> TuneAllResult:
    """``--method all``: the overall winner (lowest ppl_ext of the feasible winners; the first
    in registry order on a tie) and its verdict against the window."""
    won = [r for r in results if r.winner is not None and r.winner.ppl_ext is not None]
    best = min(won, key=lambda r: r.winner.ppl_ext) if won else None
    winner = best.winner if best else None
    pays, verdict = pay_verdict(shared.window, winner, "any method")
    return TuneAllResult(os.path.basename(shared.model_path), shared.ctx, shared.L, shared.tolerance,
                         shared.baseline_ppl_in, shared.window, tuple(results), tuple(skipped),
                         best.method if best else None, winner, pays, verdict)


def run_tune(model_path: str, ctx: int, text, tokens, method: str, tolerance: float,
             grid: Sequence[float] | None, refine: int, log: Callable[[str], None] | None,
             scorer: Scorer | None, opts: RunOptions, budget_min: float | None = None
             ) -> TuneResult | TuneAllResult:
    """The search behind :func:`ropepatch.quality.tune.tune`: the window once, then each
    method's search on the same tokens."""
    names, skipped = plan_methods(method, tolerance, budget_min)
    original = extension_original(model_path, ctx, opts.original)
    if method == ALL:
        names, skipped = _plannable(original, ctx, names, skipped)
    else:  # a factor method the file refuses (qwen2), or no room for its copy: one line, before scoring
        factor_model.check_specs(model_path, original, ctx, [MethodSpec(method, method)])
    say = log or (lambda _m: None)
    with contextlib.ExitStack() as held:
        windows = None
        if scorer is None:
            m = held.enter_context(opts.open(model_path))
            tokens, ws = text_windows(m, ctx, text, tokens, 1, "tune")
            windows = tuple(ws)
            scorer = model_scorer(m, ctx, windows, original, opts.progress)
        window = measure_window(scorer, original.n_ctx_train, ctx, say, opts.step)
        shared = TuneShared(model_path, ctx, original, tolerance, window, scorer, windows,
                            dataclasses.replace(opts, model=None), say, grid, refine, opts.step, text, tokens,
                            budget_min)
        table, results = searches(), []
        for i, name in enumerate(names, start=1):
            where = f" (method {i} of {len(names)})" if len(names) > 1 else ""
            say(f"== {name}{where}")
            one = dataclasses.replace(shared, step=lambda what, w=where: opts.step(what + w))
            results.append(table[name](one, name))
    if method != ALL:
        return results[0]
    return combine(shared, results, skipped)
