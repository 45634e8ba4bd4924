"""Check b of ``ropepatch validate``, and the runtime probe that checks b and c share.

The probe decodes a few (meaningless, deterministic) tokens per run of consecutive positions and
captures the ROPE nodes of the chosen layers (:func:`ropepatch.runtime.probe.probe`). Check b:
the parameters of the ROPE ops the runtime built (n_dims, mode, n_ctx_orig, freq_base,
freq_scale, ext_factor, attn_factor, beta_fast, beta_slow) equal :func:`ggml_rope_args` of the
expected parameters, exactly as float32, and the per-pair frequency factors each ROPE op divides
by (its src[2], llama.cpp's ``rope_freqs``) equal the expected factors exactly as float32 -- or
are absent (src[2] NULL) when none are expected.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from ropepatch.check.factors import compare_factors
from ropepatch.check.report import FAILED, LABEL, NAMES, PASSED, CheckResult, fmt_val, mode_name
from ropepatch.errors import RopepatchError, UsageError

#: default seed of the (meaningless, deterministic) token ids the probes decode
ROTARY_SEED = 1234
#: a probe batch holds at most this many consecutive positions
MAX_RUN = 512

_OP_FIELDS = ("n_dims", "mode", "n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor",
              "beta_fast", "beta_slow")


def position_runs(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted unique positions grouped into consecutive runs [(first, last), ...], one probe
    batch each (at most :data:`MAX_RUN` tokens)."""
    pos = sorted({int(p) for p in positions})
    if not pos:
        raise UsageError("validate: no positions to probe")
    if pos[0] < 0 or pos[-1] > np.iinfo(np.int32).max:
        raise UsageError(f"validate: positions must lie in [0, 2^31), found {pos[0]}..{pos[-1]}")
    runs, start, prev = [], pos[0], pos[0]
    for p in pos[1:]:
        if p != prev + 1 or p - start >= MAX_RUN:
            runs.append((start, prev))
            start = p
        prev = p
    runs.append((start, prev))
    return runs


def describe_runs(runs: Sequence[tuple[int, int]], most: int = 4) -> str:
    """``[(120, 135), (1008, 1023)]`` -> ``"120..135, 1008..1023"`` (the first ``most`` runs)."""
    text = ", ".join(f"{lo}..{hi}" if hi != lo else f"{lo}" for lo, hi in runs[:most])
    return text if len(runs) <= most else f"{text}, ... ({len(runs)} runs)"


def probe_threads(n_params: int) -> int:
    """The probes' default CPU threads: one per billion parameters, at least 1, at most all
    cores. They decode a few tokens and synchronise after every node of the captured layers:
    thread wake-ups dominate small models (erratic on a busy machine)."""
    return max(1, min(os.cpu_count() or 1, math.ceil(n_params / 1e9)))


@dataclass
class Captured:
    """What the probes of checks b and c got: (capture, decoded positions) pairs, or the
    decode error; the runtime's n_ctx_train once a context exists, when it differs."""

    captures: list = field(default_factory=list)
    error: str = ""
    n_ctx_train: int | None = None
    seconds: float = 0.0


def capture_ropes(path: str, runs: Sequence[tuple[int, int]], *, n_vocab: int, layers: tuple[int, ...],
                  n_ctx: int | None, ctx: int, long_short: bool, gpu_layers: int, n_threads: int,
                  file_ctx_train: int) -> Captured:
    """Decode each run of positions in its own probe and capture the ROPE nodes of ``layers``.
    ``n_ctx``: each probe's context size (default: just enough for a batch; at least ``ctx``
    for models with long/short rope factors, which llama.cpp picks by context size)."""
    from ropepatch.runtime.probe import probe  # noqa: PLC0415

    t0 = time.perf_counter()
    out = Captured()
    rng = np.random.default_rng(ROTARY_SEED)
    try:
        for lo, hi in runs:
            n_tok = hi - lo + 1
            toks = rng.integers(0, n_vocab, size=n_tok)
            nc = int(n_ctx) if n_ctx else max(256, n_tok, ctx if long_short else 0)
            res = probe(path, toks, lo, n_ctx=nc, layers=layers, n_gpu_layers=gpu_layers,
                        logits=False, n_threads=n_threads)
            if res.n_ctx_train != file_ctx_train and out.n_ctx_train is None:
                out.n_ctx_train = res.n_ctx_train
            out.captures += [(cap, np.asarray(res.positions)) for cap in res.ropes]
    except RopepatchError as exc:
        out.error = f"the runtime failed to decode: {exc}"
    out.seconds = time.perf_counter() - t0
    return out


def op_diffs(got: Mapping, want: Mapping) -> list[str]:
    """The ROPE op fields where ``got`` (the runtime's) differs from ``want``, as float32;
    each a format string with ``{src}`` standing for the expectation's label."""
    out = []
    for f in _OP_FIELDS:
        a, b = got[f], want[f]
        same = (a == b) if f in ("n_dims", "mode", "n_ctx_orig") else np.float32(a) == np.float32(b)
        if not same:
            fa = mode_name(a) if f == "mode" else fmt_val(a)
            fb = mode_name(b) if f == "mode" else fmt_val(b)
            out.append(f"{f}: runtime {fa}, {{src}} {fb}")
    return out


def _factor_diffs(captures, want_ff, file_ff, diffs: dict) -> tuple[dict, bool]:
    """Compare each capture's src[2] with the expected factors (``want_ff``: () none, None
    unknown); return the figures and whether the runtime's factors are the file's."""
    runtime, max_rel, follows_file = {}, 0.0, True
    for cap, _ in captures:
        got = () if cap.freq_factors is None else tuple(float(v) for v in cap.freq_factors)
        runtime.setdefault(cap.name, list(got) if got else None)
        if file_ff is None or compare_factors(got, file_ff).problem:
            follows_file = False
        if want_ff is None:
            continue
        cmp = compare_factors(got, want_ff, "runtime", "{src}")
        max_rel = max(max_rel, cmp.max_rel)
        line = f"freq factors (src[2]): {cmp.problem}"
        if cmp.problem and line not in diffs.get(cap.name, ()):
            diffs.setdefault(cap.name, []).append(line)
    fig = {"expected": None if want_ff is None else list(want_ff), "runtime": runtime,
           "max_rel_diff": None if want_ff is None else max_rel,
           "judged": want_ff is not None}
    return fig, follows_file


def check_applied(captures, expected_op: Mapping, file_op: Mapping | None, src: str, seconds: float,
                  n_threads: int, want_ff: tuple | None = (), file_ff: tuple | None = ()) -> CheckResult:
    """Check b: every captured ROPE op carries the expected parameters and divides by the
    expected per-pair factors (``want_ff``: () = none, src[2] must be NULL; None = not known
    to ropepatch (longrope): reported, not judged; ``file_ff``: the file's)."""
    diffs: dict[str, list[str]] = {}
    runtime_ops = {}
    follows_file = True
    for cap, _ in captures:
        got = cap.op.as_dict()
        runtime_ops.setdefault(cap.name, got)
        d = op_diffs(got, expected_op)
        if d:
            diffs.setdefault(cap.name, d)
        if file_op is None or op_diffs(got, file_op):
            follows_file = False
    ff_fig, ff_follows = _factor_diffs(captures, want_ff, file_ff, diffs)
    follows_file = follows_file and ff_follows
    figs = {"expected": dict(expected_op), "runtime": runtime_ops, "n_captures": len(captures), "n_threads": n_threads,
            "freq_factors": ff_fig}
    if not diffs:
        return CheckResult("b", NAMES["b"], PASSED, "", figs, seconds)
    name, d = next(iter(diffs.items()))
    reason = f"{name}: " + "; ".join(x.format(src=src) for x in d)
    if src != "file":
        reason += (f" (the runtime follows the file; the file differs from {LABEL[src]})" if follows_file
                   else " (the runtime does not apply the file's settings as ropepatch reads them either)")
    return CheckResult("b", NAMES["b"], FAILED, reason, figs, seconds)
