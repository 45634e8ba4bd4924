"""Progress of a scoring run: the :class:`Progress` reports, a ready-made terminal bar, and the
token :class:`Meter` that evaluate, tune and passkey feed after every decoded batch.

A :class:`Progress` is a plain frozen dataclass, so it can cross from the runtime worker to the
parent (:mod:`ropepatch.quality.isolated`)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """Reported after every decoded batch."""

    label: str  # method being scored
    done: int  # tokens decoded so far (all methods)
    total: int  # tokens to decode in all
    tokens_per_s: float
    eta_s: float
    elapsed_s: float


ProgressFn = Callable[[Progress], None]
ESTIMATE_AFTER_S = 5.0  # progress_lines prints its whole-run estimate once this much has run
StepFn = Callable[[str], None]  # on_step: names the phase now starting ("scoring yarn at 16384 tokens")


def progress_bar(stream=None, width: int = 30, every_s: float = 0.5) -> ProgressFn:
    """A ready-made progress callback: one self-overwriting line on ``stream`` (default
    stderr) with a bar, tokens done/total, tokens/s and ETA; a newline when done."""
    out = stream or sys.stderr
    last = [-1.0]

    def cb(p: Progress) -> None:
        finished = p.done >= p.total
        if not finished and p.elapsed_s - last[0] < every_s:
            return
        last[0] = p.elapsed_s
        frac = p.done / p.total if p.total else 1.0
        fill = int(round(width * frac))
        eta = "--" if not math.isfinite(p.eta_s) else f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
        out.write(f"\r{p.label:<10.10} [{'#' * fill}{'.' * (width - fill)}] {p.done}/{p.total} tokens "
                  f"{p.tokens_per_s:6.1f} tok/s ETA {eta} ")
        if finished:
            out.write("\n")
        out.flush()

    return cb


def _clock(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``42 s``, or ``--`` when unknown."""
    if not math.isfinite(seconds):
        return "--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_lines(stream=None, every_s: float = 30.0) -> ProgressFn:
    """A progress callback for a stderr that is NOT a terminal (nohup, a log file, CI): once the
    run has lasted ``ESTIMATE_AFTER_S``, one line with the whole run's estimate; then a whole
    line every ``every_s`` seconds and one when done, with the method, tokens done/total,
    percent, tokens/s and ETA -- so a long run is never silent and never fills a log with
    carriage returns. A run shorter than ``ESTIMATE_AFTER_S`` prints nothing."""
    out = stream or sys.stderr
    last = [0.0]
    estimated = [False]

    def cb(p: Progress) -> None:
        finished = p.done >= p.total
        if not estimated[0] and not finished and p.elapsed_s >= ESTIMATE_AFTER_S and p.tokens_per_s > 0:
            estimated[0] = True
            out.write(f"estimate: {p.total} tokens to decode, about {_clock(p.total / p.tokens_per_s)} in all "
                      f"at {p.tokens_per_s:.0f} tok/s (measured over the first {_clock(p.elapsed_s)})\n")
            out.flush()
        if finished and not estimated[0]:
            return  # a short run: nothing to report
        if not finished and p.elapsed_s - last[0] < every_s:
            return
        last[0] = p.elapsed_s
        pct = 100.0 * p.done / p.total if p.total else 100.0
        out.write(f"progress: {p.label or '-'}: {p.done}/{p.total} tokens ({pct:.1f}%), "
                  f"{p.tokens_per_s:.1f} tok/s, elapsed {_clock(p.elapsed_s)}, "
                  f"ETA {'done' if finished else _clock(p.eta_s)}\n")
        out.flush()

    return cb


class Meter:
    """Token counter feeding a progress callback: call it with the tokens each batch decoded;
    ``label`` names the method being scored."""

    def __init__(self, total: int, progress: ProgressFn | None):
        self.total, self.progress, self.done = total, progress, 0
        self.t0 = time.perf_counter()
        self.label = ""

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is None:
            return
        el = time.perf_counter() - self.t0
        tps = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / tps if tps > 0 else float("inf")
        self.progress(Progress(self.label, self.done, self.total, tps, eta, el))

