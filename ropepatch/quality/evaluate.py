"""Perplexity by position, method by method, through llama.cpp itself.

:func:`evaluate` tokenizes a text once with the model's own tokenizer and scores the same
``ctx``-token window(s) with each context-extension method applied at RUN time (context
parameters from :func:`ropepatch.runtime_flags.llama_cpp_python_kwargs`: no file copies), plus
the honest baseline ``window``: the UNSCALED model scoring the same tokens through a sliding
window of its training length L (stride L/2, every scored token sees at least L/2 tokens of
context, the KV cache cleared per window).

Scoring is streaming: the sequence is decoded in batches of ``n_batch`` tokens through
llama-cpp-python's low-level API (``llama_batch_init`` / ``llama_decode`` /
``llama_get_logits``) with logits requested only for positions whose next token is scored, and
each batch's logits are reduced to per-token negative log-likelihoods at once (log-softmax in
numpy, float64 accumulation). Memory is O(n_batch x n_vocab), never O(ctx x n_vocab).
:func:`score_full_logits` is the non-streaming reference (one decode, every logit kept) that
the tests compare against.

Positions: window ``w`` is ``[BOS] + text_tokens[w*(ctx-1) : (w+1)*(ctx-1)]`` (no BOS when
the model does not add one); the token at position ``p`` (1 <= p < ctx) is scored from
positions ``0 .. p-1``. Bucket ``[start, end)`` holds the scored positions in that range,
summed over windows; ``ppl_in`` covers positions below the training length L, ``ppl_ext``
the rest.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, ScalingType
from ropepatch.rope.methods import METHODS, make_plan
from ropepatch.rope.params import RopeParams
from ropepatch.rope.runtime_flags import llama_cpp_python_kwargs
from ropepatch.runtime.binding import default_threads
from ropepatch.runtime.session import DEFAULT_N_BATCH, Context, Model, token_nll

WINDOW = "window"  # the sliding-window baseline's method name
DEFAULT_METHODS = ("none", "linear", "ntk", "dynamic", "yarn")
DEFAULT_N_BUCKETS = 8


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """Perplexity over the scored positions ``start <= p < end`` (all windows)."""

    start: int
    end: int
    ppl: float
    n: int  # scored tokens in the bucket (windows x positions)

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "ppl": _num(self.ppl)}


@dataclass(frozen=True)
class MethodResult:
    """One method's perplexity by position."""

    name: str  # the label in the report ("ntk", "ntk@2.5", "window")
    method: str  # registry name, or "window"
    alpha: float | None  # None for none/window
    params: Mapping[str, object]  # what was applied (JSON-ready)
    buckets: tuple[Bucket, ...]
    ppl_in: float
    ppl_ext: float
    n_in: int
    n_ext: int
    seconds: float  # wall time of this method's scoring
    decode_seconds: float  # of which inside llama_decode (+ synchronize)
    tokens_decoded: int
    # per-position NLL sums and counts over windows (index = position); for re-bucketing/plots
    nll_sum: np.ndarray = field(repr=False, compare=False, default=None)
    count: np.ndarray = field(repr=False, compare=False, default=None)

    def to_json(self) -> dict:
        return {
            "params": dict(self.params),
            "buckets": [b.to_json() for b in self.buckets],
            "ppl_in": _num(self.ppl_in),
            "ppl_ext": _num(self.ppl_ext),
        }


@dataclass(frozen=True)
class Timing:
    """Where the time went: inside llama.cpp's decode versus everything else."""

    seconds: float
    decode_seconds: float
    tokens_decoded: int
    windows: int
    text_tokens: int
    n_batch: int
    n_threads: int

    @property
    def decode_share(self) -> float:
        return self.decode_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_decoded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "decode_seconds": round(self.decode_seconds, 3),
            "other_seconds": round(self.seconds - self.decode_seconds, 3),
            "decode_share": round(self.decode_share, 4),
            "tokens_decoded": self.tokens_decoded,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "windows": self.windows,
            "text_tokens": self.text_tokens,
            "n_batch": self.n_batch,
            "n_threads": self.n_threads,
        }


@dataclass(frozen=True)
class EvalResult:
    """Everything :func:`evaluate` measured."""

    model: str
    n_ctx_train: int
    ctx: int
    tokens: int  # scored tokens per method (windows x (ctx - 1))
    methods: Mapping[str, MethodResult]
    timing: Timing

    def to_json(self) -> dict:
        """The JSON shape of ``ropepatch eval --json`` (a dict ready for ``json.dumps``)."""
        return {
            "model": self.model,
            "n_ctx_train": self.n_ctx_train,
            "ctx": self.ctx,
            "tokens": self.tokens,
            "methods": {name: r.to_json() for name, r in self.methods.items()},
            "timing": self.timing.to_json(),
        }


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


def progress_bar(stream=None, width: int = 30, every_s: float = 0.5) -> ProgressFn:
    """A ready-made progress callback: one self-overwriting line on ``stream`` (default
    stderr) with a bar, tokens done/total, tokens/s and ETA; a newline when done."""
    import sys  # noqa: PLC0415

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


def _num(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None), rounded to a readable precision."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


# ---- method specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A method to evaluate: ``label`` is how it is reported."""

    label: str
    method: str  # a registry name or "window"
    alpha: float | None = None


def parse_methods(spec: str | Sequence[str] | None, alphas: Mapping[str, float] | float | None = None,
                  ) -> list[MethodSpec]:
    """``"none,ntk,ntk@2.5,yarn"`` -> specs. ``alphas``: one value for every scaled method, or
    a mapping method -> alpha (for methods given without ``@alpha``)."""
    if spec is None:
        items: list[str] = list(DEFAULT_METHODS)
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip() for s in spec]
    if not items:
        raise UsageError("--methods: expected a comma-separated list of methods, found nothing")
    out: list[MethodSpec] = []
    for item in items:
        name, _, a = item.partition("@")
        name = name.strip().lower()
        if name != WINDOW and name not in METHODS:
            raise UsageError(
                f"--methods: unknown method {name!r}: expected some of {', '.join([*METHODS, WINDOW])}"
            )
        alpha: float | None = None
        if a:
            try:
                alpha = float(a)
            except ValueError:
                raise UsageError(f"--methods: {item!r}: expected METHOD@ALPHA with a number") from None
        elif isinstance(alphas, Mapping):
            alpha = alphas.get(name)
        elif alphas is not None:
            alpha = float(alphas)
        if name in (WINDOW, "none"):
            alpha = None
        if alpha is not None and not (math.isfinite(alpha) and alpha >= 1.0):
            raise UsageError(f"--alpha for {name}: expected a finite number >= 1, found {alpha}")
        label = item.strip().lower() if a else name
        if any(s.label == label for s in out):
            continue
        out.append(MethodSpec(label, name, alpha))
    return out


def parse_alphas(spec: str | None) -> float | dict[str, float] | None:
    """``--alpha 2.5`` (every scaled method) or ``--alpha ntk=2.5,yarn=2``."""
    if spec is None or str(spec).strip() == "":
        return None
    s = str(spec)
    if "=" not in s:
        try:
            return float(s)
        except ValueError:
            raise UsageError(f"--alpha: expected a number or METHOD=A[,METHOD=A...], found {s!r}") from None
    out: dict[str, float] = {}
    for part in s.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip().lower()] = float(v)
        except ValueError:
            raise UsageError(f"--alpha: {part!r}: expected METHOD=NUMBER") from None
    return out


# ---- buckets ----------------------------------------------------------------------------------


def default_buckets(ctx: int, n_ctx_train: int, n: int = DEFAULT_N_BUCKETS) -> list[int]:
    """About ``n`` equal buckets over ``[0, ctx)`` with the training length as one edge."""
    if ctx <= n_ctx_train:
        return [round(i * ctx / n) for i in range(n + 1)]
    width = ctx / n
    n_in = min(n - 1, max(1, round(n_ctx_train / width)))
    n_ext = n - n_in
    edges = [round(i * n_ctx_train / n_in) for i in range(n_in)]
    edges += [round(n_ctx_train + i * (ctx - n_ctx_train) / n_ext) for i in range(n_ext + 1)]
    return sorted(set(edges))


def parse_buckets(spec: str | int | Sequence[int] | None, ctx: int, n_ctx_train: int) -> list[int]:
    """Bucket edges from ``None`` (default), a count (``"16"``) or edges (``"0,4096,8192,16384"``;
    0 and ctx are added when missing)."""
    if spec is None or spec == "":
        return default_buckets(ctx, n_ctx_train)
    if isinstance(spec, int):
        return default_buckets(ctx, n_ctx_train, spec)
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            vals = [int(float(p)) for p in parts]
        except ValueError:
            raise UsageError(f"--buckets: expected a count or comma-separated positions, found {spec!r}") from None
        if len(vals) == 1:
            if vals[0] < 1:
                raise UsageError(f"--buckets: expected a count >= 1, found {vals[0]}")
            return default_buckets(ctx, n_ctx_train, vals[0])
    else:
        vals = [int(v) for v in spec]
    if any(v < 0 or v > ctx for v in vals):
        raise UsageError(f"--buckets: positions must lie in [0, {ctx}], found {vals}")
    edges = sorted(set([0, ctx, *vals]))
    return edges


def bucketize(nll_sum: np.ndarray, count: np.ndarray, edges: Sequence[int]) -> tuple[Bucket, ...]:
    """Per-position NLL sums/counts -> buckets over ``edges``."""
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = int(count[a:b].sum())
        s = float(nll_sum[a:b].sum())
        out.append(Bucket(int(a), int(b), math.exp(s / n) if n else float("nan"), n))
    return tuple(out)


def _ppl(nll_sum: np.ndarray, count: np.ndarray) -> tuple[float, int]:
    n = int(count.sum())
    return (math.exp(float(nll_sum.sum()) / n) if n else float("nan")), n


# ---- run-time settings ---------------------------------------------------------------------


def runtime_settings_for(original: RopeParams, ctx: int, method: str, alpha: float | None) -> tuple[dict, dict]:
    """``(context settings, params for the report)`` that apply ``method`` at run time.

    The context settings are :func:`llama_cpp_python_kwargs` of the plan, on top of explicit
    values for every RoPE field (base, scaling type, scale) taken from the plan's target, so a
    file that was already patched is still evaluated relative to its ORIGINAL parameters.
    ``window`` is the unscaled model at its training length."""
    if method == WINDOW:
        L = original.n_ctx_train
        settings = {
            "n_ctx": L,
            "rope_freq_base": float(original.freq_base),
            "rope_scaling_type": LLAMA_ROPE_SCALING_TYPE["none"],
            "rope_freq_scale": 1.0,
        }
        params = {"method": "none", "alpha": None, "n_ctx": L, "window": L, "stride": L // 2,
                  "freq_base": _num(original.freq_base), "freq_scale": 1.0, "scaling_type": "none",
                  "runtime": {"n_ctx": L}}
        return settings, params
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
        "alpha": None if plan.method == "none" else _num(plan.alpha),
        "n_ctx": ctx,
        "freq_base": _num(t.freq_base),
        "freq_scale": _num(t.freq_scale),
        "scaling_type": t.scaling_type.value,
        "runtime": kw,
    }
    if t.scaling_type == ScalingType.YARN:
        params["orig_ctx"] = int(t.n_ctx_orig)
    return settings, params


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


# ---- evaluate ---------------------------------------------------------------------------------


def load_text(path: str) -> str:
    """A text file as str (UTF-8, undecodable bytes replaced)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"{path}: cannot read the text: {e.strerror}") from None


def make_windows(text_tokens: np.ndarray, ctx: int, bos: int | None, max_windows: int | None = None
                 ) -> list[np.ndarray]:
    """Non-overlapping ``ctx``-token windows of the text (each starting with ``bos`` when given)."""
    body = ctx - 1 if bos is not None else ctx
    n_fit = len(text_tokens) // body
    if n_fit < 1:
        raise UsageError(
            f"the text has {len(text_tokens)} tokens; scoring a window of {ctx} needs at least "
            f"{body}: pass a longer --text or a smaller --ctx"
        )
    k = n_fit if max_windows is None else max(1, min(n_fit, int(max_windows)))
    out = []
    for w in range(k):
        chunk = text_tokens[w * body:(w + 1) * body]
        out.append(np.concatenate([[bos], chunk]).astype(np.int32) if bos is not None else chunk.astype(np.int32))
    return out


class _Meter:
    """Token counter feeding a progress callback."""

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


def _method_cost(spec: MethodSpec, ctx: int, L: int, n_windows: int) -> int:
    if spec.method == WINDOW:
        return n_windows * sum(e - s - 1 for s, e, _ in sliding_windows(ctx, L))
    return n_windows * (ctx - 1)


def score_method(model: Model, windows: Sequence[np.ndarray], spec: MethodSpec, original: RopeParams,
                 ctx: int, edges: Sequence[int], meter: _Meter | None = None,
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
    on_batch = meter
    tokens_decoded = 0

    def counting(n: int) -> None:
        nonlocal tokens_decoded
        tokens_decoded += n
        if on_batch is not None:
            on_batch(n)

    stopped = False
    with model.context(settings) as c:
        for seq in windows:
            if spec.method == WINDOW:
                nll = np.full(len(seq), np.nan)
                for s, e, f in sliding_windows(len(seq), L):
                    c.clear()
                    sub = seq[s:e].copy()
                    if s > 0 and model.add_bos:
                        sub[0] = model.bos  # every window starts like the text does
                    part = c.score(sub, f - s, on_batch=counting)
                    nll[f:e] = part[f - s:]
            else:
                c.clear()
                asked = [False]

                def stop(p_end: int, nll: np.ndarray) -> bool:
                    if stop_in is None or asked[0] or p_end < L:
                        return False
                    asked[0] = True
                    return bool(stop_in(math.exp(float(np.mean(nll[1:L])))))

                nll = c.score(seq, 1, on_batch=counting, stop=stop if len(windows) == 1 else None)
                stopped = bool(np.isnan(nll[1:]).any())
            ok = ~np.isnan(nll)
            nll_sum[ok] += nll[ok]
            count[ok] += 1
            if stopped:
                break
        decode_s = c.decode_seconds
    seconds = time.perf_counter() - t0
    ppl_in, n_in = _ppl(nll_sum[:L], count[:L])
    ppl_ext, n_ext = _ppl(nll_sum[L:], count[L:])
    if stopped:
        ppl_ext, n_ext = float("nan"), 0
    return MethodResult(
        name=spec.label, method=spec.method, alpha=params.get("alpha"), params=params,
        buckets=bucketize(nll_sum, count, edges), ppl_in=ppl_in, ppl_ext=ppl_ext,
        n_in=n_in, n_ext=n_ext, seconds=seconds, decode_seconds=decode_s,
        tokens_decoded=tokens_decoded, nll_sum=nll_sum, count=count,
    )


def extension_original(model_path: str, ctx: int, original: RopeParams | None = None) -> RopeParams:
    """The model's original RoPE parameters (read from the file unless given), after checking
    that ``ctx`` is a context past its training length: what eval, tune and passkey measure."""
    from ropepatch.patch.gguf import inspect_gguf  # noqa: PLC0415 - avoid an import cycle at load time

    if not isinstance(ctx, int) or ctx < 2:
        raise UsageError(f"--ctx: expected a number of tokens >= 2, found {ctx}")
    if original is None:
        original = inspect_gguf(model_path).original
    if ctx <= original.n_ctx_train:
        raise UsageError(f"--ctx must be larger than the model's training context "
                         f"{original.n_ctx_train}, found {ctx}")
    return original


def evaluate(
    model_path: str,
    ctx: int,
    text: str | bytes | None = None,
    *,
    tokens: np.ndarray | None = None,
    methods: str | Sequence[str] | Sequence[MethodSpec] | None = None,
    alphas: Mapping[str, float] | float | None = None,
    buckets: str | int | Sequence[int] | None = None,
    window: bool = True,
    max_windows: int | None = 1,
    n_batch: int = DEFAULT_N_BATCH,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    progress: ProgressFn | None = None,
    model: Model | None = None,
    original: RopeParams | None = None,
    flash_attn: bool | None = None,
) -> EvalResult:
    """Perplexity by position of the model at ``model_path`` over ``ctx``-token windows of
    ``text`` (or of pre-computed ``tokens``: the text's token ids WITHOUT a BOS, from
    :meth:`Model.tokenize`), for each method (default none, linear, ntk, dynamic, yarn; labels
    like ``"ntk@2.5"`` pin an alpha) plus the ``window`` baseline unless ``window=False``.

    ``max_windows``: how many non-overlapping windows to average (None = as many as the text
    holds). ``model``: an already-loaded :class:`Model` to reuse (e.g. by tune).
    """
    original = extension_original(model_path, ctx, original)
    L = original.n_ctx_train
    if methods and not isinstance(methods, str) and all(isinstance(m, MethodSpec) for m in methods):
        specs = list(methods)
    else:
        specs = parse_methods(methods, alphas)
    if window and not any(s.method == WINDOW for s in specs):
        specs.append(MethodSpec(WINDOW, WINDOW))
    edges = parse_buckets(buckets, ctx, L)

    own = model is None
    if own:
        model = Model(model_path, n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_batch=n_batch,
                      flash_attn=flash_attn)
    try:
        if tokens is None:
            if text is None:
                raise UsageError("evaluate: give a text or its tokens")
            tokens = model.tokenize(text)
        windows = make_windows(np.asarray(tokens, dtype=np.int32), ctx,
                               model.bos if model.add_bos else None, max_windows)
        total = sum(_method_cost(s, ctx, L, len(windows)) for s in specs)
        meter = _Meter(total, progress)
        results: dict[str, MethodResult] = {}
        for spec in specs:
            results[spec.label] = score_method(model, windows, spec, original, ctx, edges, meter)
    finally:
        if own:
            model.close()
    seconds = sum(r.seconds for r in results.values())
    timing = Timing(
        seconds=seconds,
        decode_seconds=sum(r.decode_seconds for r in results.values()),
        tokens_decoded=sum(r.tokens_decoded for r in results.values()),
        windows=len(windows),
        text_tokens=int(len(tokens)),
        n_batch=model.n_batch,
        n_threads=model.n_threads,
    )
    return EvalResult(
        model=os.path.basename(model_path), n_ctx_train=L, ctx=ctx,
        tokens=len(windows) * (ctx - 1), methods=results, timing=timing,
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
    own = model is None
    if own:
        model = Model(model_path, n_threads=n_threads, n_batch=n)
    try:
        st = dict(settings or {})
        st["n_ctx"] = max(int(st.get("n_ctx", n)), n)
        with model.context(st, n_batch=n, n_ubatch=n_ubatch) as c:
            c.clear()
            logits = c.decode(seq, 0, np.ones(n, dtype=bool)).astype(np.float64)  # copy
    finally:
        if own:
            model.close()
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    out = np.full(n, np.nan)
    out[1:] = -logp[np.arange(n - 1), seq[1:]]
    return out


def rebucket(result: MethodResult, edges: Sequence[int]) -> tuple[Bucket, ...]:
    """The same method's perplexity over other bucket edges (e.g. finer, for a plot)."""
    return bucketize(result.nll_sum, result.count, edges)


def format_table(result: EvalResult) -> str:
    """A plain-text table: one row per method, one column per bucket, then ppl_in / ppl_ext."""
    first = next(iter(result.methods.values()))
    heads = [f"{_k(b.start)}-{_k(b.end)}" for b in first.buckets]
    w = max(8, max(len(n) for n in result.methods) + 1)
    lines = [f"{'method':<{w}}" + "".join(f"{h:>10}" for h in heads) + f"{'ppl_in':>10}{'ppl_ext':>10}"]
    for name, r in result.methods.items():
        cells = "".join(f"{_fmt(b.ppl):>10}" for b in r.buckets)
        lines.append(f"{name:<{w}}" + cells + f"{_fmt(r.ppl_in):>10}{_fmt(r.ppl_ext):>10}")
    t = result.timing
    lines.append(
        f"{result.tokens} tokens x {len(result.methods)} methods ({t.windows} window(s) of {result.ctx}); "
        f"{t.tokens_decoded} tokens decoded in {t.seconds:.1f} s ({t.tokens_per_s:.1f} tokens/s), "
        f"{100 * t.decode_share:.1f}% inside llama_decode"
    )
    return "\n".join(lines)


def _k(x: int) -> str:
    return f"{x // 1024}k" if x % 1024 == 0 and x >= 1024 else str(x)


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.4g}" if x < 1e4 else f"{x:.3e}"
