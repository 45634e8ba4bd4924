"""Find the best alpha for a method -- or across methods -- on the user's model and text, and
say plainly when extending does not pay.

Objective: minimise ``ppl_ext`` (perplexity at positions >= the training length L) subject to
``ppl_in`` (positions < L) staying within ``tolerance`` (default 5%) of the UNSCALED model's
``ppl_in`` on the same tokens. Every run also measures ``window`` -- the unscaled model scoring
the same tokens through a sliding window of L, stride L/2, as ``eval`` does -- and compares the
winner with it: when no feasible candidate has a lower ``ppl_ext`` than the window, the verdict
is "extension does not pay here: use a sliding window", and :func:`apply_tune` refuses to write
that winner unless forced.

The modules: :mod:`ropepatch.quality.tune_alpha` (one method's alpha search and its evaluation
budget), :mod:`ropepatch.quality.tune_all` (the shared window/baseline, the per-method
dispatch, ``method="all"``), :mod:`ropepatch.quality.tune_result` (results, verdict, tables).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.patch.gguf import patch_gguf
from ropepatch.quality.options import RunOptions
from ropepatch.quality.tune_all import ALL, TUNABLE, run_tune
from ropepatch.quality.tune_alpha import DEFAULT_GRID, DEFAULT_TOLERANCE, Scorer
from ropepatch.quality.tune_result import Trial, TuneAllResult, TuneResult, WindowRow, format_tune, pay_verdict
from ropepatch.safeio.paths import shown

__all__ = ["tune", "apply_tune", "ApplyRefused", "format_tune", "pay_verdict", "Trial", "TuneResult",
           "TuneAllResult", "WindowRow", "TUNABLE", "ALL", "DEFAULT_TOLERANCE", "DEFAULT_GRID", "Scorer"]


class ApplyRefused(UsageError):
    """``--apply`` would write a winner that is missing or does not pay (one line, nothing written)."""

    reported = False  # the CLI sets it once the result (with the refusal) was printed


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
    force: bool = False,
    budget: float | None = None,
    log: Callable[[str], None] | None = None,
    scorer: Scorer | None = None,
    **run,
) -> TuneResult | TuneAllResult:
    """Search ``method``'s alpha for ``ctx`` on ``text`` (or its ``tokens``, the ids without a
    BOS); ``method="all"``: every tunable method on the same tokens, one window and baseline
    measurement for all (a :class:`TuneAllResult` with the overall winner).

    ``grid``: explicit alphas for the coarse stage (default: s x (1, 1.5, 2, 3), at least 1).
    ``apply``: patch the file with the winner (:func:`apply_tune`; ``force``: even when the
    window beats it). ``budget``: minutes for searches that take a time limit
    (``factors``). ``log(str)``: the search's narration. ``scorer``: replaces the built-in
    scoring (used by the bench to cache runs; it is also asked for the ``window`` spec).
    ``run``: the :class:`~ropepatch.quality.options.RunOptions` fields (``on_step`` is told when
    the load and each candidate's scoring start; ``progress`` after every decoded batch)."""
    opts = RunOptions(**run)
    result = run_tune(model_path, ctx, text, tokens, method, tolerance, grid, refine, log, scorer, opts, budget)
    return apply_tune(model_path, result, force=force) if apply else result


def apply_tune(model_path: str, result: TuneResult | TuneAllResult, force: bool = False
               ) -> TuneResult | TuneAllResult:
    """Patch ``model_path`` with the winner of ``result`` (its method, alpha and options;
    ``patch_gguf``, whose provenance records them): ``result`` with ``applied`` set.

    :class:`ApplyRefused` (nothing written) when nothing was feasible, or when the winner does
    not beat the sliding window on ppl_ext unless ``force`` (then a warning is recorded)."""
    w = result.winner
    what = "candidate of any method" if result.method == ALL else f"{result.method} alpha"
    if w is None:
        raise ApplyRefused(f"{shown(model_path)}: tune found no {what} within the ppl_in tolerance; "
                           f"nothing written (use a sliding window, or try a larger --tolerance)")
    warnings = result.warnings
    if not result.pays:
        x = result.window.ppl_ext if result.window is not None else float("nan")
        if not force:
            raise ApplyRefused(f"{shown(model_path)}: extension does not pay here: the sliding window's ppl_ext "
                               f"{x:.4g} beats the winner {w.label}'s {w.ppl_ext:.4g}; nothing written (use a "
                               f"sliding window, or pass --force to apply {w.label} anyway)")
        warnings += (f"--force: applied {w.label} although extension does not pay here: the sliding "
                     f"window's ppl_ext {x:.4g} beats its {w.ppl_ext:.4g}",)
    options = {k: v for k, v in w.options}
    kw = {"options": options} if options else {}
    applied = patch_gguf(model_path, result.ctx, result.winner_method, w.alpha, **kw)
    return dataclasses.replace(result, applied=applied, warnings=warnings)
