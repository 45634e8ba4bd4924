"""``ropepatch validate``: prove, in the runtime itself, that a GGUF is run with the RoPE it asks for.

Four checks, each passed / failed / skipped with measured figures and a one-line reason:

a. **metadata** (:mod:`.metadata`) -- the file loads in llama.cpp and the runtime's training
   context, rotary type, freq_scale_train and metadata strings equal what ropepatch reads from
   the file; a file ropepatch patched still holds the recorded plan's settings.
b. **applied** (:mod:`.applied`) -- the parameters of the ROPE ops the runtime actually built
   equal :func:`ggml_rope_args` of the expected parameters, exactly as float32.
c. **rotary** (:mod:`.rotary`) -- the NumPy reference rotary reproduces the runtime's rotated
   Q/K at every captured position (batches straddling the original training length and ending
   at ``ctx - 1``), within a stated float32 tolerance (:data:`ROTARY_TOLERANCE`).
d. **logits** (:mod:`.logits`) -- for small llama / qwen2 models with F32 or Q8_0 weights, the
   NumPy reference forward pass vs the runtime's logits over a sequence longer than the
   original context that ends at ``ctx - 1``.

The expected parameters (:mod:`.expectation`): the file's, or the recorded plan's target when
ropepatch patched the file, or the caller's overrides. The report: :mod:`.report`.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Mapping

import numpy as np

from ropepatch.check.applied import capture_ropes, check_applied, describe_runs, position_runs, probe_threads
from ropepatch.check.expectation import Expectation, expectation, read_model
from ropepatch.check.factors import factors_of
from ropepatch.check.logits import FORWARD_AUTO_BUDGET, FORWARD_TOL, check_forward, plan_forward
from ropepatch.check.metadata import check_metadata, metadata_keys, runtime_info
from ropepatch.check.report import (
    FAILED,
    NAMES,
    PASSED,
    SKIPPED,
    CheckResult,
    ValidationReport,
    amended,
    format_report,
    skipped,
)
from ropepatch.check.rotary import ROTARY_TOLERANCE, check_rotary, rotary_errors
from ropepatch.errors import RopepatchError, UsageError
from ropepatch.formats.gguf.header import read_header
from ropepatch.rope.effects import longrope_applies
from ropepatch.runtime import binding
from ropepatch.runtime.binding import RuntimeUnavailable
from ropepatch.safeio.paths import regular_input
from ropepatch.version import __version__

__all__ = [
    "FAILED", "PASSED", "SKIPPED", "CheckResult", "ValidationReport", "format_report",
    "validate", "parse_positions", "default_positions", "make_report", "device_name", "rotary_errors",
    "ROTARY_TOLERANCE", "FORWARD_TOL", "FORWARD_AUTO_BUDGET", "PROBE_TOKENS",
]

#: tokens per default probe batch of check c
PROBE_TOKENS = 16


def parse_positions(text: str) -> list[int]:
    """``"8180-8200,16368"`` -> the positions 8180..8200 and 16368 (for ``--positions``)."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            a, _, b = part.partition("-")
            lo = int(a)
            hi = int(b) if b else lo
        except ValueError:
            raise UsageError(f"--positions: expected N or A-B items separated by commas, found {part!r}") from None
        if lo < 0 or hi < lo:
            raise UsageError(f"--positions: expected non-negative A <= B, found {part!r}")
        if hi - lo >= 4096:
            raise UsageError(f"--positions: range {part!r} is longer than 4096 positions")
        out.extend(range(lo, hi + 1))
    if not out:
        raise UsageError("--positions: no positions given")
    return out


def default_positions(original_ctx: int, ctx: int, n: int = PROBE_TOKENS) -> list[int]:
    """Check c's default positions: a batch straddling the original training length L
    (L - n/2 .. L + n/2 - 1, kept below ctx) and the last n positions before ctx."""
    L = int(original_ctx)
    half = n // 2
    first = range(max(0, L - half), max(0, min(L + half, ctx)))
    last = range(max(0, ctx - n), ctx)
    return sorted(set(first) | set(last))


def device_name(gpu_layers: int, on_gpu: bool) -> str:
    """The report's device: "cpu" or "gpu (n_gpu_layers=N)"."""
    return f"gpu (n_gpu_layers={gpu_layers})" if on_gpu else "cpu"


def make_report(path: str, exp: Expectation | None, ctx: int | None, device: str, gpu_layers: int,
                checks: Iterable[CheckResult], notes: Iterable[str], seconds: float,
                versions: Mapping[str, str], crash: str | None = None) -> ValidationReport:
    """A :class:`ValidationReport`; ``exp`` None when ropepatch could not read the file."""
    if exp is None:
        head = dict(arch="?", ctx=int(ctx or 0), original_ctx=0, provenance=None, expected_source="file",
                    expected={}, expected_op=None)
    else:
        head = dict(arch=exp.arch, ctx=exp.target_ctx, original_ctx=int(exp.original_ctx),
                    provenance=exp.provenance, expected_source=exp.source, expected=exp.params_dict,
                    expected_op=exp.op)
    return ValidationReport(path=path, **head, device=device, gpu_layers=int(gpu_layers), checks=tuple(checks),
                            notes=tuple(notes), seconds=seconds, versions=dict(versions), crash=crash)


class _Run:
    """One validation under way: the device, the notes, the finished checks (each handed to
    ``on_check`` as it finishes) and the step now running (named to ``on_step``)."""

    def __init__(self, path: str, gpu_layers: int, on_step: Callable | None, on_check: Callable | None):
        self.t_start = time.perf_counter()
        self.path, self.gpu_layers = path, gpu_layers
        self.on_step, self.on_check = on_step, on_check
        self.notes: list[str] = []
        self.versions = {"ropepatch": __version__, "llama_cpp_python": binding.version()}
        self.on_gpu = gpu_layers != 0 and binding.gpu_available()
        if gpu_layers != 0 and not self.on_gpu:
            self.notes.append(f"llama-cpp-python is built without GPU offload: --gpu-layers {gpu_layers} has no "
                              f"effect, every check ran on the CPU (GPU: not validated)")
        self.checks: dict[str, CheckResult] = {}

    def step(self, text: str) -> None:
        if self.on_step is not None:
            self.on_step(text)

    def done(self, check: CheckResult) -> None:
        """Record a finished check (again, when a later step amends it)."""
        self.checks[check.id] = check
        if self.on_check is not None:
            self.on_check(check)

    def amend(self, cid: str, problem: str) -> None:
        self.done(amended(self.checks[cid], problem))

    def skip_rest(self, reason: str) -> None:
        for cid in NAMES:
            if cid not in self.checks:
                self.done(skipped(cid, reason))

    def report(self, exp: Expectation | None, ctx: int | None = None) -> ValidationReport:
        return make_report(self.path, exp, ctx, device_name(self.gpu_layers, self.on_gpu), self.gpu_layers,
                           self.checks.values(), self.notes, time.perf_counter() - self.t_start, self.versions)


def _checked_path(path, ctx, gpu_layers) -> str:
    path = str(path)
    regular_input(path, "GGUF file")  # missing, a FIFO, a device, a directory, ELOOP ...: one line
    if ctx is not None and (not isinstance(ctx, (int, np.integer)) or ctx <= 0):
        raise UsageError(f"--ctx must be a positive integer, found {ctx!r}")
    binding.gpu_layers(gpu_layers)  # -1 (all) or >= 0, else a UsageError
    return path


def _check_a(run: _Run, exp: Expectation, t0: float):
    """Check a; returns (what the runtime read, the header), the runtime's part None when it
    could not load the file (checks b-d are then skipped)."""
    header = read_header(run.path)
    keys = metadata_keys(header, exp.arch)
    run.step(f"check a: loading the model, reading back {len(keys)} metadata keys")
    try:
        rt = runtime_info(run.path, keys, run.gpu_layers)
    except RuntimeUnavailable:
        raise  # no runtime at all: one line with the install command, not a failed check
    except RopepatchError as exc:
        run.done(CheckResult("a", NAMES["a"], FAILED, f"the runtime cannot load the file: {exc}",
                             seconds=time.perf_counter() - t0))
        run.skip_rest("check a failed: the runtime did not load the file")
        return None, header
    run.done(check_metadata(exp, header, rt, keys, t0))
    return rt, header


def _checks_bc(run: _Run, exp: Expectation, header, rt, positions, layers, n_ctx, n_threads) -> None:
    """Probe the runtime at the positions; checks b and c on what it captured."""
    if exp.op is None:
        run.done(skipped("b", exp.op_problem))
        run.done(skipped("c", exp.op_problem))
        return
    pos = list(positions) if positions is not None else default_positions(exp.original_ctx, exp.target_ctx)
    runs = position_runs(pos)
    layer_set = tuple(int(v) for v in layers)
    run.step(f"check b: ROPE op parameters of layers {list(layer_set)} at positions {describe_runs(runs)}")
    long_short = any(t.name.startswith(("rope_factors_long", "rope_factors_short")) for t in header.tensors)
    # LongRoPE: a context just past the original one, where llama.cpp applies the long factors
    # (those a patch writes) -- not the target, a KV cache of ctx tokens (RoPE needs positions only)
    long_ctx = exp.current.n_ctx_orig + 1
    got = capture_ropes(run.path, runs, n_vocab=rt.n_vocab, layers=layer_set, n_ctx=n_ctx, ctx=long_ctx,
                        long_short=long_short, gpu_layers=run.gpu_layers, n_threads=n_threads,
                        file_ctx_train=exp.current.n_ctx_train)
    if got.n_ctx_train is not None:
        run.amend("a", f"after creating a context the runtime's n_ctx_train is {got.n_ctx_train}, "
                       f"not {exp.current.n_ctx_train}")
    if got.error:
        run.amend("a", got.error)
        run.done(skipped("b", got.error))
        run.done(skipped("c", got.error))
    elif not got.captures:
        why = f"no ROPE node captured in layers {list(layer_set)} (does this model use RoPE there?)"
        run.done(CheckResult("b", NAMES["b"], FAILED, why))
        run.done(CheckResult("c", NAMES["c"], FAILED, why))
    else:
        run.done(check_applied(got.captures, exp.op, exp.file_op, exp.source, got.seconds, n_threads,
                               want_ff=exp.factors, file_ff=factors_of(exp.current)))
        run.step(f"check c: reference rotary vs the runtime's rotated Q/K at positions {describe_runs(runs)}")
        run.done(check_rotary(got.captures, exp.op, exp.source, run.on_gpu, runs, want_ff=exp.factors))


def _check_d(run: _Run, exp: Expectation, reference_forward, forward_tokens, n_threads) -> None:
    plan = plan_forward(run.path, exp.arch, exp.original_ctx, exp.target_ctx, reference_forward, forward_tokens,
                        exp.op_problem)
    if isinstance(plan, CheckResult):
        run.done(plan)
        return
    run.step(f"check d: reference forward vs runtime logits, {plan.describe()}")
    cur = exp.current  # LongRoPE: the long factors apply only past the original context
    min_ctx = cur.n_ctx_orig + 1 if longrope_applies(cur.arch, cur.scaling_type.value) else 0
    run.done(check_forward(run.path, plan, exp.op, exp.original_ctx, run.gpu_layers, run.on_gpu, n_threads,
                           want_ff=exp.factors, min_ctx=min_ctx))


def validate(
    path: str | os.PathLike,
    ctx: int | None = None,
    gpu_layers: int = 0,
    positions: Iterable[int] | None = None,
    *,
    layers: Iterable[int] = (0,),
    reference_forward: bool | None = None,
    forward_tokens: int | None = None,
    n_ctx: int | None = None,
    expect: Mapping[str, object] | None = None,
    n_threads: int | None = None,
    on_step: Callable[[str], None] | None = None,
    on_check: Callable[[CheckResult], None] | None = None,
) -> ValidationReport:
    """Run checks a-d (module docstring) on the GGUF at ``path``; never writes.

    ctx: the target context; probes reach position ``ctx - 1`` (default: the file's
        ``context_length``, which a ropepatch patch sets to its target).
    gpu_layers: ``n_gpu_layers`` for every model load (-1: all); without a GPU build it has
        no effect and the report says so.
    positions: check c's positions (consecutive runs are decoded as one batch each; default
        :func:`default_positions`: L-8..L+7 and ctx-16..ctx-1).
    layers: the layers whose ROPE nodes are captured (default: the first).
    reference_forward: check d: None = only when the model is small enough
        (:data:`FORWARD_AUTO_BUDGET`), True = force (still llama/qwen2 with F32/Q8_0 weights
        only), False = skip.
    forward_tokens: check d's sequence length (default min(ctx, 2 L + 64), spanning distances
        beyond L); the sequence ends at position ctx - 1.
    n_ctx: context size of the probes of checks b/c (default: just enough for a batch --
        positions may exceed n_ctx, RoPE depends on positions only; models with long/short
        rope factor tensors get at least the original context + 1, where llama.cpp picks the
        long ones).
    n_threads: CPU threads of the probes (default :func:`.applied.probe_threads`).
    expect: overrides of the expected RopeParams fields (e.g. ``{"layout": "neox"}``,
        ``{"freq_base": 5e5}``): check the runtime against what you believe instead.
    on_step: called with a short line naming each step (which check, at which positions)
        before it runs -- a crash message names the last one.
    on_check: called with each :class:`CheckResult` as it finishes; a check that a later step
        amends (a probe failure fails check a) is handed over again.
    """
    run = _Run(_checked_path(path, ctx, gpu_layers), gpu_layers, on_step, on_check)
    t0 = time.perf_counter()
    try:
        info = read_model(run.path)
    except RopepatchError as exc:
        # never hand llama.cpp a file ropepatch cannot read (unknown scaling types abort it)
        run.done(CheckResult("a", NAMES["a"], FAILED, f"ropepatch cannot read the file: {exc}",
                             seconds=time.perf_counter() - t0))
        run.skip_rest("check a failed: the file was not loaded")
        return run.report(None, ctx)
    exp = expectation(info, ctx, expect)
    run.notes.extend(exp.notes)
    rt, header = _check_a(run, exp, t0)
    if rt is not None:
        threads = n_threads if n_threads is not None else probe_threads(rt.n_params)
        _checks_bc(run, exp, header, rt, positions, layers, n_ctx, threads)
        _check_d(run, exp, reference_forward, forward_tokens, threads)
    return run.report(exp)
