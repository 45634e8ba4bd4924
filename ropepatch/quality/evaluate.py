"""Perplexity by position, method by method, through llama.cpp itself.

:func:`evaluate` tokenizes a text once with the model's own tokenizer and scores the same
``ctx``-token window(s) with each context-extension method applied at RUN time (context
parameters from :func:`ropepatch.rope.runtime_flags.llama_cpp_python_kwargs`: no file copies;
the per-pair factor methods ntk-parts and factors are scored on a temporary patched copy,
:mod:`ropepatch.quality.factor_model`), plus the honest baseline ``window``: the UNSCALED model
scoring the same tokens through a sliding window of its training length L (stride L/2, every
scored token sees at least L/2 tokens of context, the KV cache cleared per window).

Scoring is streaming (:class:`ropepatch.runtime.session.Context`): the sequence is decoded in
batches of ``n_batch`` tokens with logits requested only for positions whose next token is
scored, and each batch's logits are reduced to per-token negative log-likelihoods at once
(log-softmax in numpy, float64 accumulation). Memory is O(n_batch x n_vocab), never
O(ctx x n_vocab). :func:`score_full_logits` is the non-streaming reference (one decode, every
logit kept) that the tests compare against.

Positions and buckets: see :mod:`ropepatch.quality.scoring`; bucket ``[start, end)`` holds the
scored positions in that range, summed over windows.

This module also re-exports the names the CLI, the tests and ``tools/bench_quality.py`` use
from the rest of :mod:`ropepatch.quality`.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from ropepatch.quality import factor_model
from ropepatch.quality.buckets import DEFAULT_N_BUCKETS, bucketize, default_buckets, parse_buckets, rebucket
from ropepatch.quality.options import RunOptions
from ropepatch.quality.progress import Meter, Progress, ProgressFn, StepFn, progress_bar
from ropepatch.quality.results import Bucket, EvalResult, MethodResult, Timing, format_table
from ropepatch.quality.scoring import (
    extension_original,
    method_cost,
    runtime_settings_for,
    score_full_logits,
    score_method,
    sliding_windows,
)
from ropepatch.quality.specs import (
    DEFAULT_METHODS,
    WINDOW,
    MethodSpec,
    parse_alphas,
    parse_methods,
    resolve_specs,
)
from ropepatch.quality.text import load_text, make_windows, text_windows, window_spans
from ropepatch.runtime.binding import default_threads
from ropepatch.runtime.session import DEFAULT_N_BATCH, Model

__all__ = [
    "evaluate", "EvalResult", "MethodResult", "Bucket", "Timing", "Progress", "ProgressFn", "StepFn",
    "progress_bar", "Meter", "format_table", "parse_methods", "parse_alphas", "parse_buckets",
    "default_buckets", "bucketize", "rebucket", "MethodSpec", "WINDOW", "DEFAULT_METHODS",
    "DEFAULT_N_BATCH", "DEFAULT_N_BUCKETS", "Model", "default_threads", "load_text", "make_windows",
    "sliding_windows", "method_cost", "score_method", "score_full_logits", "runtime_settings_for",
    "extension_original", "RunOptions", "window_spans",
]


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
    **run,
) -> EvalResult:
    """Perplexity by position of the model at ``model_path`` over ``ctx``-token windows of
    ``text`` (or of pre-computed ``tokens``: the text's token ids WITHOUT a BOS, from
    :meth:`Model.tokenize`), for each method (default none, linear, ntk, dynamic, yarn; labels
    like ``"ntk@2.5"`` pin an alpha) plus the ``window`` baseline unless ``window=False``.

    ``max_windows``: how many consecutive non-overlapping windows to score (None = as many as
    the text holds; more than it holds is refused in one line). Each method's ppl_in / ppl_ext
    are pooled over the windows, with 95% intervals (Student t over the per-window mean NLL,
    or over blocks of the one window when there is one: :mod:`ropepatch.quality.intervals`),
    and the verdict compares each method with the window baseline window by window.
    ``run``: the :class:`~ropepatch.quality.options.RunOptions` fields (``n_batch``,
    ``n_threads``, ``n_gpu_layers``, ``flash_attn``, ``progress``, ``on_step``, ``model``: an
    already-loaded :class:`Model` to reuse, ``original``).
    """
    opts = RunOptions(**run)
    original = extension_original(model_path, ctx, opts.original)
    L = original.n_ctx_train
    specs = resolve_specs(methods, alphas, window)
    factor_model.check_specs(model_path, original, ctx, specs)  # factor methods: refusals, temp space
    edges = parse_buckets(buckets, ctx, L)
    with opts.open(model_path) as m:
        tokens, windows = text_windows(m, ctx, text, tokens, max_windows, "evaluate")
        meter = Meter(sum(method_cost(s, ctx, L, len(windows)) for s in specs), opts.progress)
        results: dict[str, MethodResult] = {}
        spans = window_spans(windows, m.bos if m.add_bos else None)
        of = f" ({len(windows)} windows)" if len(windows) > 1 else ""
        for spec in specs:
            opts.step(f"scoring {spec.label} at {ctx} tokens{of}")
            results[spec.label] = score_method(m, windows, spec, original, ctx, edges, meter)
    timing = Timing(
        seconds=sum(r.seconds for r in results.values()),
        decode_seconds=sum(r.decode_seconds for r in results.values()),
        tokens_decoded=sum(r.tokens_decoded for r in results.values()),
        windows=len(windows),
        text_tokens=int(len(tokens)),
        n_batch=m.n_batch,
        n_threads=m.n_threads,
    )
    return EvalResult(
        model=os.path.basename(model_path), n_ctx_train=L, ctx=ctx,
        tokens=len(windows) * (ctx - 1), methods=results, timing=timing, window_spans=spans,
    )
