"""What :func:`ropepatch.quality.passkey.passkey` measured, with its statistics: per depth and
per method, the retrieval accuracy and its 95% Wilson score interval
(:func:`ropepatch.quality.stats.wilson`), the verdict, the table and the JSON shape
(``ropepatch passkey --json``).

What the verdict claims, per method (the ``window`` baseline is shown, never judged: it cannot
see keys placed more than L tokens back): with ``PASS_RATE`` = 80%,

- ``passes``: the Wilson interval of the accuracy pooled over the depths lies at or above 80%
  (its lower bound >= 0.8) and no depth's own interval lies entirely below 80%;
- ``fails``: the pooled interval, or some depth's interval, lies entirely below 80%;
- ``undecided``: anything else (the data are consistent with both; more ``--trials`` decide).

A perfect score needs enough trials to count: 15/15 (3 depths x 5 trials) gives [79.6%, 100%],
still ``undecided``; 16/16 gives [80.6%, 100%]. The pooled interval treats trials as
independent; the same keys are used at every depth, so it is a slightly optimistic summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ropepatch.quality.results import num
from ropepatch.quality.specs import WINDOW
from ropepatch.quality.stats import CONFIDENCE, Interval, wilson

PASS_RATE = 0.8
PASSES, FAILS, UNDECIDED = "passes", "fails", "undecided"


def _ci(iv: Interval | None) -> list[float] | None:
    return None if iv is None else [round(iv.lo, 4), round(iv.hi, 4)]


def _pct(iv: Interval | None) -> str:
    """``[79-100%]``: whole percents rounded outward, so the shown interval never claims more."""
    if iv is None:
        return ""
    return f"[{math.floor(100 * iv.lo + 1e-9):.0f}-{math.ceil(100 * iv.hi - 1e-9):.0f}%]"


@dataclass(frozen=True)
class DepthResult:
    depth: float
    position: int  # token index where the key line starts (mean over trials)
    visible: bool  # False: the key is outside what this method can attend to (window only)
    trials: int
    correct: int
    accuracy: float | None  # None when not visible
    key_nll: float | None  # mean NLL per key token over the trials
    greedy: tuple[str, ...]  # per trial: the argmax at each answer position (teacher-forced)

    @property
    def ci(self) -> Interval | None:
        """The 95% Wilson interval of the accuracy (None when not visible)."""
        return wilson(self.correct, self.trials) if self.visible else None

    def to_json(self) -> dict:
        return {"depth": self.depth, "position": self.position, "visible": self.visible,
                "trials": self.trials, "correct": self.correct,
                "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
                "ci": _ci(self.ci),
                "key_nll": num(self.key_nll) if self.key_nll is not None else None,
                "greedy": list(self.greedy)}


@dataclass(frozen=True)
class MethodPasskey:
    name: str
    params: Mapping[str, object]
    depths: tuple[DepthResult, ...]

    @property
    def correct(self) -> int:
        return sum(d.correct for d in self.depths if d.visible)

    @property
    def trials(self) -> int:
        """Trials over the depths it could see (all of them but for the window baseline)."""
        return sum(d.trials for d in self.depths if d.visible)

    @property
    def ci(self) -> Interval | None:
        """The 95% Wilson interval of the accuracy pooled over the visible depths."""
        return wilson(self.correct, self.trials)

    def status(self, rate: float = PASS_RATE) -> str:
        """:data:`PASSES`, :data:`FAILS` or :data:`UNDECIDED` against ``rate`` (module docstring)."""
        iv = self.ci
        if iv is None:
            return UNDECIDED
        if iv.hi < rate or any(d.ci is not None and d.ci.hi < rate for d in self.depths):
            return FAILS
        return PASSES if iv.lo >= rate else UNDECIDED

    def to_json(self) -> dict:
        n = self.trials
        return {"params": dict(self.params), "depths": [d.to_json() for d in self.depths],
                "overall": {"trials": n, "correct": self.correct,
                            "accuracy": round(self.correct / n, 4) if n else None,
                            "ci": _ci(self.ci), "status": self.status()}}


@dataclass(frozen=True)
class PasskeyResult:
    model: str
    n_ctx_train: int
    ctx: int
    tokens: int  # prompt + answer length (max over trials)
    trials: int
    seed: int
    keys: tuple[str, ...]
    methods: Mapping[str, MethodPasskey]
    seconds: float
    decode_seconds: float
    tokens_decoded: int

    def to_json(self) -> dict:
        return {
            "model": self.model, "n_ctx_train": self.n_ctx_train, "ctx": self.ctx,
            "tokens": self.tokens, "trials": self.trials, "seed": self.seed,
            "keys": list(self.keys), "confidence": CONFIDENCE, "pass_rate": PASS_RATE,
            "methods": {k: m.to_json() for k, m in self.methods.items()},
            "verdict": passkey_verdict(self),
            "timing": {"seconds": round(self.seconds, 3), "decode_seconds": round(self.decode_seconds, 3),
                       "decode_share": round(self.decode_seconds / self.seconds, 4) if self.seconds else 0.0,
                       "tokens_decoded": self.tokens_decoded,
                       "tokens_per_s": round(self.tokens_decoded / self.seconds, 2) if self.seconds else 0.0},
        }


def _overall(m: MethodPasskey) -> str:
    n = m.trials
    return f"{m.correct}/{n} {_pct(m.ci)}" if n else "-"


def passkey_verdict(r: PasskeyResult, rate: float = PASS_RATE) -> str:
    """One line: which methods are shown to retrieve the key at >= ``rate`` (95% Wilson), or
    the best one's figures and why it is not (see the module docstring)."""
    judged = {k: m for k, m in r.methods.items() if k != WINDOW and m.trials}
    if not judged:
        return "verdict: no method to judge (the window baseline alone is not judged)"
    target = f">= {100 * rate:.0f}% (95% Wilson interval)"
    passing = [k for k, m in judged.items() if m.status(rate) == PASSES]
    if passing:
        return "verdict: retrieves the key at " + target + ": " + ", ".join(
            f"{k} ({_overall(judged[k])})" for k in passing)
    name, best = max(judged.items(), key=lambda kv: (kv[1].ci.lo, kv[1].correct / kv[1].trials))
    if best.status(rate) == UNDECIDED:
        return (f"verdict: no method is shown to retrieve the key at {target}; best {name} {_overall(best)}: "
                f"consistent with {100 * rate:.0f}% but not established (more --trials would decide)")
    low = [f"{d.depth:g}" for d in best.depths if d.ci is not None and d.ci.hi < rate]
    where = f" at depth {', '.join(low)}" if low else " overall"
    return (f"verdict: no method retrieves the key at {target}; best {name} {_overall(best)} is below "
            f"{100 * rate:.0f}%{where} with 95% confidence")


def format_passkey(r: PasskeyResult) -> str:
    """Plain-text table: one row per method, one column per depth (correct/trials, its 95%
    Wilson interval, key NLL), the pooled accuracy and the status; the totals; the verdict."""
    first = next(iter(r.methods.values()))
    heads = [f"depth {d.depth:g}" for d in first.depths] + ["overall", "status"]
    rows = {}
    for name, m in r.methods.items():
        cells = [f"{d.correct}/{d.trials} {_pct(d.ci)} NLL {d.key_nll:.2f}" if d.accuracy is not None
                 else "not in view" for d in m.depths]
        rows[name] = cells + [_overall(m), "(baseline)" if name == WINDOW else m.status()]
    cw = 2 + max(len(c) for c in heads + [c for cs in rows.values() for c in cs])
    w = max(8, max(len(k) for k in r.methods) + 1)
    lines = [f"{'method':<{w}}" + "".join(f"{h:>{cw}}" for h in heads)]
    lines += [f"{name:<{w}}" + "".join(f"{c:>{cw}}" for c in cells) for name, cells in rows.items()]
    tps = r.tokens_decoded / r.seconds if r.seconds else 0.0
    lines.append(f"{r.trials} trial(s) per depth, prompts of {r.tokens} tokens, seed {r.seed}; "
                 f"{r.tokens_decoded} tokens decoded in {r.seconds:.1f} s ({tps:.1f} tokens/s); "
                 f"[a-b%]: 95% Wilson interval of the accuracy")
    lines.append(passkey_verdict(r))
    return "\n".join(lines)
