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

