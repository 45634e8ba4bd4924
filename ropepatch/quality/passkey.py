"""Passkey retrieval (Mohtashami & Jaggi 2023, as used in the YaRN paper, arXiv:2309.00071):
can the model USE distant context at all?

A random 5-digit key is stated once, at a chosen depth, inside ``ctx`` tokens of repetitive
filler, and asked for at the end. For each method and depth, over K trials (seeded keys, the
same for every method), we report the greedy retrieval accuracy with its 95% Wilson score
interval, and the mean negative log-likelihood of the key's tokens; per method, the accuracy
pooled over the depths with its Wilson interval, and a verdict that claims ">= 80%" only when
the interval shows it (:mod:`ropepatch.quality.passkey_results`). The default is 5 trials
(keys) per depth.

One decode per trial gives both: the answer ``" 12345"`` (its tokens as the model's tokenizer
splits them, leading space included) is appended to the prompt and scored with teacher
forcing. Greedy decoding continues the prompt with exactly the answer iff the argmax at every
answer position is the answer's next token (the earlier ones being right), which is what
teacher forcing checks; this is stricter than "the digits appear somewhere in the output".
``key_nll`` is the mean NLL over the answer's tokens.

Shared prefixes are decoded once per method: the filler before the key is identical across
the trials of one depth, and a shallower depth's prefix is the start of a deeper one's, so the
depths run deepest first and the KV cache is cut back to the next prefix instead of cleared.

The ``window`` baseline (the unscaled model, seeing only the last L tokens) cannot see a key
placed more than L tokens before the end: such depths are reported as ``visible: false`` with
no accuracy (not run); depths whose key falls inside its view are measured.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.quality import factor_model
from ropepatch.quality.options import RunOptions
from ropepatch.quality.passkey_results import (
    PASS_RATE,
    DepthResult,
    MethodPasskey,
    PasskeyResult,
    format_passkey,
    passkey_verdict,
)
from ropepatch.quality.progress import Meter, Progress
from ropepatch.quality.scoring import extension_original, runtime_settings_for
from ropepatch.quality.specs import WINDOW, MethodSpec, resolve_specs
from ropepatch.rope.params import RopeParams
from ropepatch.runtime.session import Model

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
         "it. I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class _Prompt:
    prefix: np.ndarray  # BOS + intro + filler before the key (shared by a depth's trials)
    rest: np.ndarray  # key line + filler + question + answer
    answer_len: int
    key_at: int  # index of the key line's first token

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate([self.prefix, self.rest])


def make_keys(trials: int, seed: int) -> list[str]:
    """``trials`` random 5-digit keys (10000..99999) from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [str(int(k)) for k in rng.integers(10000, 100000, size=trials)]


def parse_depths(spec: str | Sequence[float] | None) -> list[float]:
    if spec is None:
        return list(DEFAULT_DEPTHS)
    vals = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        out = [float(v) for v in vals if str(v).strip()]
    except ValueError:
        raise UsageError(f"--depths: expected comma-separated fractions in [0, 1], found {spec!r}") from None
    if not out or any(not (0.0 <= d <= 1.0) for d in out):
        raise UsageError(f"--depths: expected fractions in [0, 1], found {spec!r}")
    return out


def build_prompts(model: Model, ctx: int, depths: Sequence[float], keys: Sequence[str]
                  ) -> dict[float, list[_Prompt]]:
    """Prompts of at most ``ctx`` tokens: the same filler length for every depth and trial."""
    tok = model.tokenize
    head = tok(INTRO, add_bos=True)
    unit = tok(FILLER)
    question = tok(QUESTION)
    key_lines = [tok(KEY_LINE.format(key=k)) for k in keys]
    answers = [tok(ANSWER.format(key=k)) for k in keys]
    fixed = len(head) + len(question) + max(len(k) for k in key_lines) + max(len(a) for a in answers)
    n_units = (ctx - fixed) // len(unit)
    if n_units < 1:
        raise UsageError(f"--ctx {ctx} is too short for the passkey prompt (needs more than {fixed} tokens)")
    out: dict[float, list[_Prompt]] = {}
    for d in depths:
        a = int(round(d * n_units))
        prefix = np.concatenate([head, np.tile(unit, a)]).astype(np.int32)
        after = np.tile(unit, n_units - a)
        out[d] = [
            _Prompt(prefix, np.concatenate([kl, after, question, ans]).astype(np.int32), len(ans), len(prefix))
            for kl, ans in zip(key_lines, answers)
        ]
    return out


def passkey(
    model_path: str,
    ctx: int,
    *,
    methods: str | Sequence[str] | Sequence[MethodSpec] | None = None,
    alphas: Mapping[str, float] | float | None = None,
    depths: str | Sequence[float] | None = None,
    trials: int = 5,
    seed: int = 0,
    window: bool = True,
    **run,
) -> PasskeyResult:
    """The passkey test for each method (default: none, linear, ntk, dynamic, yarn) plus the
    ``window`` baseline, at each depth (fraction of the filler before the key), ``trials``
    keys each. ``run``: the :class:`~ropepatch.quality.options.RunOptions` fields."""
    opts = RunOptions(**run)
    if trials < 1:
        raise UsageError(f"--trials: expected a number >= 1, found {trials}")
    original = extension_original(model_path, ctx, opts.original)
    L = original.n_ctx_train
    dl = parse_depths(depths)
    specs = resolve_specs(methods, alphas, window, empty_ok=True)
    factor_model.check_specs(model_path, original, ctx, specs)
    keys = make_keys(trials, seed)
    with opts.open(model_path) as m:
        t_start = time.perf_counter()
        prompts = build_prompts(m, ctx, dl, keys)
        meter = Meter(_passkey_cost(specs, prompts, L), opts.progress)
        runs = [_run_method(m, spec, prompts, original, ctx, dl, meter, opts.step) for spec in specs]
    return PasskeyResult(
        model=os.path.basename(model_path), n_ctx_train=L, ctx=ctx,
        tokens=max(len(p.prefix) + len(p.rest) for ps in prompts.values() for p in ps), trials=trials,
        seed=seed, keys=tuple(keys), methods={r.name: r for r, _ in runs},
        seconds=time.perf_counter() - t_start, decode_seconds=sum(s for _, s in runs),
        tokens_decoded=meter.done,
    )


def _passkey_cost(specs: Sequence[MethodSpec], prompts: dict[float, list[_Prompt]], L: int) -> int:
    """Tokens the run decodes (for progress): every trial's rest, each method's deepest prefix
    once (see :func:`_run_depth`), the window baseline's visible views."""
    total = 0
    for s in specs:
        for ps in prompts.values():
            if s.method == WINDOW:
                total += sum(min(L, len(p.prefix) + len(p.rest)) - 1 for p in ps if _visible(p, L))
            else:
                total += sum(len(p.rest) - 1 for p in ps)
        if s.method != WINDOW:
            total += max(len(ps[0].prefix) for ps in prompts.values())  # fed once (see _run_depth)
    return total


def _run_method(model: Model, spec: MethodSpec, prompts: dict[float, list[_Prompt]], original: RopeParams,
                ctx: int, depths: Sequence[float], meter: Meter, step: Callable[[str], None]
                ) -> tuple[MethodPasskey, float]:
    """One method at every depth: its result and the seconds spent inside llama_decode."""
    step(f"passkey: {spec.label} at {ctx} tokens")
    meter.label = spec.label
    settings, params = runtime_settings_for(original, ctx, spec.method, spec.alpha)
    rows: dict[float, DepthResult] = {}
    with factor_model.scoring_model(model, original, ctx, spec.method, spec.alpha, dict(spec.options)) as model, \
            model.context(settings) as c:  # factor methods: a temporary patched copy
        cached = None  # tokens known to sit at positions 0.. of the cache
        for d in sorted(set(depths), reverse=True):  # deepest first: prefixes nest
            rows[d], cached = _run_depth(model, c, spec, prompts[d], d, original.n_ctx_train, meter, cached)
        decode_s = c.decode_seconds
    return MethodPasskey(spec.label, params, tuple(rows[d] for d in depths)), decode_s


def _visible(p: _Prompt, L: int) -> bool:
    """Is the whole key line inside the last L tokens (the window baseline's view)?"""
    n = len(p.prefix) + len(p.rest)
    return p.key_at >= n - L + 1  # +1: the first token of the view is replaced by BOS


def _run_depth(model: Model, c, spec: MethodSpec, prompts: list[_Prompt], depth: float, L: int, count,
               cached: np.ndarray | None = None) -> tuple[DepthResult, np.ndarray | None]:
    """Score one depth's trials. ``cached``: tokens already at positions 0.. of ``c``'s cache
    (None: unknown). Returns the result and the tokens left at the start of the cache."""
    pos = int(round(np.mean([p.key_at for p in prompts])))
    if spec.method == WINDOW:
        if not all(_visible(p, L) for p in prompts):
            return DepthResult(depth, pos, False, len(prompts), 0, None, None, ()), cached
        correct, nlls, greedy = 0, [], []
        for p in prompts:
            seq = p.tokens[-L:].copy()
            if model.add_bos:
                seq[0] = model.bos
            c.clear()
            ok, nll, g = _score_answer(model, c, seq, p.answer_len, 0, count)
            correct += ok
            nlls.append(nll)
            greedy.append(g)
        return DepthResult(depth, pos, True, len(prompts), correct, correct / len(prompts),
                           float(np.mean(nlls)), tuple(greedy)), None
    prefix = prompts[0].prefix
    if cached is not None and len(cached) >= len(prefix) and np.array_equal(cached[:len(prefix)], prefix):
        c.truncate(len(prefix))  # a deeper depth left this prefix in the cache
    else:
        c.clear()
        c.feed(prefix, 0, count)
    correct, nlls, greedy = 0, [], []
    for p in prompts:
        c.truncate(len(prefix))
        ok, nll, g = _score_answer(model, c, p.tokens, p.answer_len, len(prefix), count)
        correct += ok
        nlls.append(nll)
        greedy.append(g)
    return DepthResult(depth, pos, True, len(prompts), correct, correct / len(prompts),
                       float(np.mean(nlls)), tuple(greedy)), prefix


def _score_answer(model: Model, c, seq: np.ndarray, answer_len: int, start: int, count
                  ) -> tuple[bool, float, str]:
    n = len(seq)
    first = n - answer_len
    am = np.full(n, -1, dtype=np.int64)
    nll = c.score(seq, first, start=start, on_batch=count, argmax=am)
    want = seq[first:]
    got = am[first:]
    ok = bool(np.array_equal(want, got))
    text = b"".join(model.piece(int(t)) for t in got).decode("utf-8", errors="replace").strip()
    return ok, float(np.mean(nll[first:])), text


__all__ = ["passkey", "PasskeyResult", "MethodPasskey", "DepthResult", "make_keys", "build_prompts",
           "parse_depths", "format_passkey", "passkey_verdict", "PASS_RATE", "Progress"]
