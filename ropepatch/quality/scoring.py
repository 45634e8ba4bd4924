"""Scoring one method on a text's windows through llama.cpp: the run-time context settings that
apply a method (no file copies; factor methods: a temporary patched copy, see
:mod:`ropepatch.quality.factor_model`), the sliding-window baseline, the streaming scorer behind
evaluate / tune, and the non-streaming full-logits reference the tests compare against.

Positions: window ``w`` is ``[BOS] + text_tokens[w*(ctx-1) : (w+1)*(ctx-1)]`` (no BOS when
the model does not add one); the token at position ``p`` (1 <= p < ctx) is scored from
positions ``0 .. p-1``. ``ppl_in`` covers positions below the training length L, ``ppl_ext``
the rest.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.patch.gguf import inspect_gguf
from ropepatch.quality import factor_model
from ropepatch.quality.buckets import bucketize, perplexity
from ropepatch.quality.intervals import window_sums
from ropepatch.quality.options import RunOptions
from ropepatch.quality.progress import Meter
from ropepatch.quality.results import MethodResult, num
from ropepatch.quality.specs import UNSCALED, WINDOW, MethodSpec
from ropepatch.rope.methods import get_method, make_plan
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeParams, ScalingType
from ropepatch.rope.runtime_flags import llama_cpp_python_kwargs
from ropepatch.runtime.session import Model


def _window_settings(original: RopeParams) -> tuple[dict, dict]:
    L = original.n_ctx_train
    settings = {
        "n_ctx": L,
        "rope_freq_base": float(original.freq_base),
        "rope_scaling_type": LLAMA_ROPE_SCALING_TYPE[ScalingType.NONE.value],
        "rope_freq_scale": 1.0,
    }
    params = {"method": UNSCALED, "alpha": None, "n_ctx": L, "window": L, "stride": L // 2,
              "freq_base": num(original.freq_base), "freq_scale": 1.0, "scaling_type": ScalingType.NONE.value,
              "runtime": {"n_ctx": L}}
    return settings, params


def runtime_settings_for(original: RopeParams, ctx: int, method: str, alpha: float | None) -> tuple[dict, dict]:
    """``(context settings, params for the report)`` that apply ``method`` at run time.

    The context settings are :func:`llama_cpp_python_kwargs` of the plan, on top of explicit
    values for every RoPE field (base, scaling type, scale) taken from the plan's target, so a
    file that was already patched is still evaluated relative to its ORIGINAL parameters.
    ``window`` is the unscaled model at its training length."""
    if method == WINDOW:
        return _window_settings(original)
    plan = make_plan(original, ctx, method, alpha)
    t = plan.target
    kw = llama_cpp_python_kwargs(plan)
    settings = {
        "rope_freq_base": float(t.freq_base),
        "rope_scaling_type": LLAMA_ROPE_SCALING_TYPE[t.scaling_type.value],
        "rope_freq_scale": float(t.freq_scale),
    }
    if t.scaling_type == ScalingType.YARN:
        settings["yarn_orig_ctx"] = int(t.n_ctx_orig)
    settings.update(kw)
    params = {
        "method": plan.method,
        "alpha": num(plan.alpha) if get_method(plan.method).takes_alpha else None,
        "n_ctx": ctx,
        "freq_base": num(t.freq_base),
        "freq_scale": num(t.freq_scale),
        "scaling_type": t.scaling_type.value,
        "runtime": kw,
    }
    if t.scaling_type == ScalingType.YARN:
        params["orig_ctx"] = int(t.n_ctx_orig)
    return settings, params


def extension_original(model_path: str, ctx: int, original: RopeParams | None = None) -> RopeParams:
    """The model's original RoPE parameters (read from the file unless given), after checking
    that ``ctx`` is a context past its training length: what eval, tune and passkey measure."""
    if not isinstance(ctx, int) or ctx < 2:
        raise UsageError(f"--ctx: expected a number of tokens >= 2, found {ctx}")
    if original is None:
        original = inspect_gguf(model_path).original
    if ctx <= original.n_ctx_train:
        raise UsageError(f"--ctx must be larger than the model's training context "
                         f"{original.n_ctx_train}, found {ctx}")
    return original


# ---- the sliding-window baseline --------------------------------------------------------------


def sliding_windows(n: int, L: int) -> list[tuple[int, int, int]]:
    """``(start, end, score_from)`` windows of length ``L`` over positions ``[0, n)``, stride
    ``L/2``: each position ``1 <= p < n`` is scored exactly once, in the first window, or in a
    later one with at least ``L/2`` tokens of context (``p - start >= L/2``)."""
    if L < 2:
        raise UsageError(f"training length {L} is too short for a sliding window")
    half = L // 2
    out = [(0, min(L, n), 1)]
    done = min(L, n)  # positions < done are scored
    while done < n:
        start = done - half
        end = min(start + L, n)
        out.append((start, end, done))
        done = end
    return out


def method_cost(spec: MethodSpec, ctx: int, L: int, n_windows: int) -> int:
    """Tokens that scoring ``spec`` on ``n_windows`` windows of ``ctx`` decodes (for progress)."""
    if spec.method == WINDOW:
        return n_windows * sum(e - s - 1 for s, e, _ in sliding_windows(ctx, L))
    return n_windows * (ctx - 1)


# ---- one method -------------------------------------------------------------------------------


class _Counter:
    """Counts decoded tokens and passes them on to a meter."""

    def __init__(self, meter: Meter | None):
        self.n, self.meter = 0, meter

    def __call__(self, n: int) -> None:
        self.n += n
        if self.meter is not None:
            self.meter(n)


def _score_sliding(model: Model, c, seq: np.ndarray, L: int, on_batch: _Counter) -> np.ndarray:
    """The window baseline on one window: every position scored with at least L/2 of context."""
    nll = np.full(len(seq), np.nan)
    for s, e, f in sliding_windows(len(seq), L):
        c.clear()
        sub = seq[s:e].copy()
        if s > 0 and model.add_bos:
            sub[0] = model.bos  # every window starts like the text does
        part = c.score(sub, f - s, on_batch=on_batch)
        nll[f:e] = part[f - s:]
    return nll


def _score_direct(c, seq: np.ndarray, L: int, stop_in: Callable[[float], bool] | None,
                  on_batch: _Counter) -> np.ndarray:
    """One window in one pass; ``stop_in(ppl_in)`` is asked once positions < L are scored."""
    c.clear()
    asked = False

    def stop(p_end: int, nll: np.ndarray) -> bool:
        nonlocal asked
        if asked or p_end < L:
            return False
        asked = True
        return bool(stop_in(math.exp(float(np.mean(nll[1:L])))))

    return c.score(seq, 1, on_batch=on_batch, stop=stop if stop_in is not None else None)


def score_method(model: Model, windows: Sequence[np.ndarray], spec: MethodSpec, original: RopeParams,
                 ctx: int, edges: Sequence[int], meter: Meter | None = None,
                 stop_in: Callable[[float], bool] | None = None) -> MethodResult:
    """Score ``windows`` with one method. ``stop_in(ppl_in)`` is asked once all positions below
    the training length are scored (first window only when there is one); True ends the method
    early: ``ppl_ext`` is then NaN (tune's exact in-range pre-check)."""
    L = original.n_ctx_train
    settings, params = runtime_settings_for(original, ctx, spec.method, spec.alpha)
    nll_sum = np.zeros(ctx)
    count = np.zeros(ctx, dtype=np.int64)
    t0 = time.perf_counter()
    if meter is not None:
        meter.label = spec.label
    counter = _Counter(meter)
    stopped = False
    per_window = []
    with factor_model.scoring_model(model, original, ctx, spec.method, spec.alpha, dict(spec.options)) as model, \
            model.context(settings) as c:  # factor methods: a temporary patched copy
        for i, seq in enumerate(windows):
            if meter is not None and len(windows) > 1:
                meter.label = f"{spec.label} {i + 1}/{len(windows)}"
            if spec.method == WINDOW:
                nll = _score_sliding(model, c, seq, L, counter)
            else:
                nll = _score_direct(c, seq, L, stop_in if len(windows) == 1 else None, counter)
                stopped = bool(np.isnan(nll[1:]).any())
            ok = ~np.isnan(nll)
            nll_sum[ok] += nll[ok]
            count[ok] += 1
            if stopped:
                break
            per_window.append(window_sums(nll, L))
        decode_s = c.decode_seconds
    seconds = time.perf_counter() - t0
    ppl_in, n_in = perplexity(nll_sum[:L], count[:L])
    ppl_ext, n_ext = (float("nan"), 0) if stopped else perplexity(nll_sum[L:], count[L:])
    return MethodResult(
        name=spec.label, method=spec.method, alpha=params.get("alpha"), params=params,
        buckets=bucketize(nll_sum, count, edges), ppl_in=ppl_in, ppl_ext=ppl_ext,
        n_in=n_in, n_ext=n_ext, seconds=seconds, decode_seconds=decode_s,
        tokens_decoded=counter.n, nll_sum=nll_sum, count=count, per_window=tuple(per_window),
    )


# ---- the non-streaming reference ----------------------------------------------------------------


def score_full_logits(model_path: str, seq: Sequence[int], settings: Mapping[str, object] | None = None,
                      *, n_threads: int | None = None, model: Model | None = None,
                      n_ubatch: int | None = None) -> np.ndarray:
    """Reference scorer: ONE ``llama_decode`` of the whole ``seq`` with every logit requested
    (``logits_all`` style), the full ``len(seq) x n_vocab`` matrix copied out, and NLLs from a
    float64 log-softmax. Returns the NLL of ``seq[p]`` for p >= 1 (NaN at 0). Only for short
    sequences (memory O(n x vocab)). ``n_ubatch``: llama.cpp's internal compute split (default:
    the whole sequence); equal splits give bit-identical logits to a streaming run."""
    seq = np.asarray(seq, dtype=np.int32)
    n = len(seq)
    with RunOptions(n_threads=n_threads, n_batch=n, model=model).open(model_path) as m:
        st = dict(settings or {})
        st["n_ctx"] = max(int(st.get("n_ctx", n)), n)
        with m.context(st, n_batch=n, n_ubatch=n_ubatch) as c:
            c.clear()
            logits = c.decode(seq, 0, np.ones(n, dtype=bool)).astype(np.float64)  # copy
    mx = logits.max(axis=1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(axis=1, keepdims=True))
    out = np.full(n, np.nan)
    out[1:] = -logp[np.arange(n - 1), seq[1:]]
    return out
