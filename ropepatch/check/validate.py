"""``ropepatch validate``: prove, in the runtime itself, that a GGUF is run with the RoPE it asks for.

Four checks, each passed / failed / skipped with measured figures and a one-line reason:

a. **metadata** -- the file loads in llama.cpp (through llama-cpp-python); the runtime's
   training context (``llama_model_n_ctx_train``), rotary type (``llama_model_rope_type``),
   ``llama_model_rope_freq_scale_train`` and the metadata strings it read
   (``llama_model_meta_val_str``) for every RoPE key and every ``ropepatch.*`` scalar equal
   what ropepatch reads from the file; when the file carries ropepatch provenance, the file's
   RoPE settings equal the recorded plan (``make_plan(original, ctx, method, alpha).target``),
   i.e. nobody changed them behind ropepatch's back.
b. **applied** -- the parameters of the ROPE ops the runtime actually built (captured by
   :func:`ropepatch.probe.probe`: n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
   attn_factor, beta_fast, beta_slow) equal :func:`ropepatch.rope_reference.ggml_rope_args`
   of the expected parameters (the recorded plan when there is one, else the file's), exactly
   as float32.
c. **rotary** -- the NumPy reference rotary, driven by the expected parameters, applied to the
   captured un-rotated Q/K reproduces the runtime's rotated Q/K at every captured position
   (batches straddling the original training length and ending at ``ctx - 1``), within a
   stated float32 tolerance (see :data:`ROTARY_TOLERANCE`).
d. **logits** -- for small llama / qwen2 models with F32 or Q8_0 weights, the NumPy reference
   forward pass vs the runtime's logits over a sequence longer than the original context that
   ends at ``ctx - 1`` (max abs error, top-1 agreement, KL), within the tolerances measured in
   tests/test_reference_forward.py. Skipped, with the reason, for other models unless forced.

The expected parameters: ``inspect_gguf(path).current`` (what the file says, as ropepatch
reads it); when the file carries ropepatch provenance, the recorded plan's target (what the
user asked for), which check a compares with the file.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ropepatch.version import __version__
from ropepatch.formats.gguf import keys as K
from ropepatch.errors import RopepatchError, UnsupportedModelError, UsageError
from ropepatch.rope.params import RopeLayout, ScalingType
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.rope.params import RopeParams

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
_LABEL = {"plan": "the recorded plan", "file": "the file", "expected": "the caller's expectation"}

#: tokens per default probe batch of check c
PROBE_TOKENS = 16
#: default seeds of the (meaningless, deterministic) token ids decoded
ROTARY_SEED, FORWARD_SEED = 1234, 7

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23
EPS16 = float(np.finfo(np.float16).eps)  # 2^-10
ULPS_F32 = 4

ROTARY_TOLERANCE = (
    "per element of a rotated pair (x0, x1), with m = mscale (the kernel's cos/sin magnitude): "
    "float32 recipe |ref32 - out| <= 4 eps32 m (|x0|+|x1|) (same float32 angle on both sides; "
    "cosf/sinf <= 1 ulp, the mscale product 0.5 ulp, the rotation <= 1.5 ulp); exact float64 "
    "rotary |ref64 - out| <= m (|x0|+|x1|) ((i+3) eps32 |theta_i| + 4 eps32) (the runtime's "
    "float32 angle p*ts^i is a running product carrying <= (i+3) eps32 relative error); "
    "dims past n_dims must be bit-identical; +1 eps16 when the runtime's tensors are F16"
)

#: check d tolerances (max_abs, kl_max, kl_mean, top1_min) per weight class, from
#: tests/test_reference_forward.py (measured on the fixtures, then given headroom)
FORWARD_TOL = {
    "f32": (2e-4, 1e-9, 1e-10, 1.0),
    "q8_0": (0.5, 1e-2, 1e-3, 0.98),
}
#: check d runs automatically when (weight elements) x (tokens) is at most this many
#: multiply-adds (a few seconds of NumPy float64); ``reference_forward=True`` forces it
FORWARD_AUTO_BUDGET = 2e9
_FORWARD_ARCHS = ("llama", "qwen2")
_F32_TYPES = {0}  # ggml type ids: F32
_Q8_0_TYPES = {0, 8}  # F32 and Q8_0

# llama_rope_type (llama.h) -> layout
_RUNTIME_ROPE_TYPES = {-1: "none", 0: "norm", 2: "neox", 8: "mrope", 40: "imrope", 24: "vision"}


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {str(kk): _jsonable(v) for kk, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


@dataclass(frozen=True)
class CheckResult:
    """One check: ``status`` is "passed", "failed" or "skipped"; ``reason`` is one line
    (empty when passed); ``figures`` the measured numbers (JSON-able)."""

    id: str  # "a", "b", "c", "d"
    name: str
    status: str
    reason: str = ""
    figures: Mapping[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate`. ``passed`` is True when no check failed (skipped
    checks do not fail the report)."""

    path: str
    arch: str
    ctx: int  # the target context: probes reach position ctx - 1
    original_ctx: int  # L: the model's training context before any extension
    provenance: Mapping[str, object] | None  # {method, ctx, alpha, version} or None
    expected_source: str  # "plan" (recorded by ropepatch), "file", or "expected" (caller's override)
    expected: Mapping[str, object]  # the expected RopeParams, as a dict
    expected_op: Mapping[str, object] | None  # ggml_rope_args(expected)
    device: str  # "cpu" or "gpu (n_gpu_layers=N)"
    gpu_layers: int
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.failed)

    def check(self, check_id: str) -> CheckResult:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_dict(self) -> dict:
        d = _jsonable(asdict(self))
        d["passed"] = self.passed
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _g(x) -> str:
    return f"{float(x):.9g}"


def _f32(x) -> float:
    return float(np.float32(x))


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


def _runs(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted unique positions grouped into consecutive runs [(first, last), ...]."""
    pos = sorted({int(p) for p in positions})
    if not pos:
        raise UsageError("validate: no positions to probe")
    if pos[0] < 0 or pos[-1] > np.iinfo(np.int32).max:
        raise UsageError(f"validate: positions must lie in [0, 2^31), found {pos[0]}..{pos[-1]}")
    runs, start, prev = [], pos[0], pos[0]
    for p in pos[1:]:
        if p != prev + 1 or p - start >= 512:  # one batch per run, at most 512 tokens
            runs.append((start, prev))
            start = p
        prev = p
    runs.append((start, prev))
    return runs


def default_positions(original_ctx: int, ctx: int, n: int = PROBE_TOKENS) -> list[int]:
    """Check c's default positions: a batch straddling the original training length L
    (L - n/2 .. L + n/2 - 1, kept below ctx) and the last n positions before ctx."""
    L = int(original_ctx)
    half = n // 2
    first = range(max(0, L - half), max(0, min(L + half, ctx)))
    last = range(max(0, ctx - n), ctx)
    return sorted(set(first) | set(last))


def _layout_name(layout) -> str:
    return layout.value if isinstance(layout, RopeLayout) else str(layout)


def _mode_name(mode: int) -> str:
    return {0: "NORM", 2: "NEOX"}.get(int(mode), str(mode))


def _weight_stats(path: str) -> tuple[int, set[int]]:
    """(number of weight elements, set of ggml tensor types) from the GGUF header."""
    from ropepatch.formats.gguf.header import read_header  # noqa: PLC0415

    h = read_header(path)
    n = 0
    for t in h.tensors:
        e = 1
        for d in t.shape:
            e *= int(d)
        n += e
    return n, {int(t.ggml_type) for t in h.tensors}


# ---- runtime model info (check a) ----------------------------------------------------------


@dataclass(frozen=True)
class _RuntimeInfo:
    n_ctx_train: int
    rope_type: int
    freq_scale_train: float
    n_vocab: int
    n_params: int
    meta: Mapping[str, str | None]


def _runtime_info(path: str, keys: Sequence[str], gpu_layers: int) -> _RuntimeInfo:
    """Load the model in llama.cpp (no context) and read what the runtime took from the file."""
    from ropepatch.errors import FormatError  # noqa: PLC0415
    from ropepatch.runtime.probe import _lock, _llama, _quiet_llama_log  # noqa: PLC0415

    with _lock, _quiet_llama_log(True):
        llama_cpp = _llama()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if gpu_layers == -1 else int(gpu_layers)
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise FormatError(f"{path}: llama.cpp could not load the model (see its log above)")
        try:
            meta: dict[str, str | None] = {}
            for key in keys:
                size = 256
                while True:
                    buf = ctypes.create_string_buffer(size)
                    n = int(llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size))
                    if n < 0:
                        meta[key] = None
                        break
                    if n < size:
                        meta[key] = buf.value.decode("utf-8", errors="replace")
                        break
                    size = n + 1
            vocab = llama_cpp.llama_model_get_vocab(model)
            return _RuntimeInfo(
                n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(model)),
                rope_type=int(llama_cpp.llama_model_rope_type(model)),
                freq_scale_train=float(llama_cpp.llama_model_rope_freq_scale_train(model)),
                n_vocab=int(llama_cpp.llama_vocab_n_tokens(vocab)),
                n_params=int(llama_cpp.llama_model_n_params(model)),
                meta=meta,
            )
        finally:
            llama_cpp.llama_model_free(model)


def _meta_str(kv) -> str | None:
    """A metadata value as llama.cpp's gguf_kv_to_str prints it (std::to_string: "%f" for
    floats, decimal for ints, "true"/"false"); None for arrays (the runtime skips them)."""
    t, v = kv.type, kv.value
    if t == ValueType.STRING:
        return v
    if t == ValueType.BOOL:
        return "true" if v else "false"
    if t in (ValueType.FLOAT32, ValueType.FLOAT64):
        return f"{float(v):f}"
    if t == ValueType.ARRAY:
        return None
    return str(int(v))


_FIELD_KEYS = {
    "n_ctx_train": K.CONTEXT_LENGTH,
    "rope_dim": K.ROPE_DIMENSION_COUNT,
    "freq_base": K.ROPE_FREQ_BASE,
    "scaling_type": K.ROPE_SCALING_TYPE,
    "scaling_factor": K.ROPE_SCALING_FACTOR,
    "orig_ctx": K.ROPE_SCALING_ORIG_CTX,
    "attn_factor": K.ROPE_SCALING_ATTN_FACTOR,
    "layout": K.GENERAL_ARCHITECTURE,
    "has_freq_factors": "rope_freqs tensor",
}


def _params_diff(file_p: RopeParams, plan_p: RopeParams) -> list[tuple[str, object, object]]:
    """Fields where the file's parameters differ from the plan's (floats compared as float32,
    the type they are stored in): [(field, file value, plan value)]."""
    diffs = []
    for f in ("n_ctx_train", "rope_dim", "scaling_type", "orig_ctx", "layout", "has_freq_factors"):
        a, b = getattr(file_p, f), getattr(plan_p, f)
        if a != b:
            diffs.append((f, a, b))
    for f in ("freq_base", "attn_factor"):
        a, b = getattr(file_p, f), getattr(plan_p, f)
        if _f32(a) != _f32(b):
            diffs.append((f, a, b))
    if file_p.scaling_type != ScalingType.NONE or plan_p.scaling_type != ScalingType.NONE:
        a, b = file_p.scaling_factor, plan_p.scaling_factor
        if _f32(a) != _f32(b):
            diffs.append(("scaling_factor", a, b))
    return diffs


def _fmt_val(v) -> str:
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, float):
        return _g(v)
    return str(v)


# ---- rotary error measurement (check c) ----------------------------------------------------


def _pair_mag_and_index(x: np.ndarray, n_dims: int, layout) -> tuple[np.ndarray, np.ndarray]:
    from ropepatch.check.rope_reference import pair_magnitude_and_index  # noqa: PLC0415

    return pair_magnitude_and_index(x, n_dims, layout)


def rotary_errors(cap, op: Mapping, f16: bool = False) -> dict:
    """Reference rotary (driven by ``op``) vs one captured ROPE node: for the float32 recipe
    and the exact float64 rotary, the max abs error, the max error relative to the pair
    magnitude m(|x0|+|x1|), the worst error as a multiple of the tolerance (<= 1 passes,
    :data:`ROTARY_TOLERANCE`), the position of the worst element, and the max change of the
    pass-through dims (must be 0)."""
    from ropepatch.check.rope_reference import apply_rope_op, rope_angles, yarn_mscale  # noqa: PLC0415

    n = int(op["n_dims"])
    lay = RopeLayout.NEOX if int(op["mode"]) == 2 else RopeLayout.NORM
    x, out = cap.input, cap.output.astype(np.float64)
    if x.shape[-1] < n:
        return {"error": f"{cap.name}: head dim {x.shape[-1]} < n_dims {n}"}
    mscale = abs(yarn_mscale(op["freq_scale"], op["ext_factor"], op["attn_factor"]))
    mag, idx = _pair_mag_and_index(x, n, lay)
    scale = mscale * mag + 1e-30
    theta = np.abs(
        rope_angles(cap.positions, n, op["freq_base"], op["freq_scale"], op["ext_factor"], op["beta_fast"],
                    op["beta_slow"], op["n_ctx_orig"], cap.freq_factors)
    )
    extra = EPS16 if f16 else 0.0
    rel_tol32 = np.full(scale.shape, ULPS_F32 * EPS32 + extra)
    rel_tol64 = (idx + 3)[None, None, :] * EPS32 * theta[:, None, idx] + ULPS_F32 * EPS32 + extra
    rel_tol64 = np.broadcast_to(rel_tol64, scale.shape)
    res = {}
    for mode, dtype, rtol in (("f32", np.float32, rel_tol32), ("f64", np.float64, rel_tol64)):
        ref = apply_rope_op(x, cap.positions, op, freq_factors=cap.freq_factors, dtype=dtype).astype(np.float64)
        err = np.abs(ref - out)
        tail = float(err[..., n:].max()) if x.shape[-1] > n else 0.0
        e = err[..., :n]
        rel = e / scale
        over = rel / rtol
        worst = np.unravel_index(int(np.argmax(over)), over.shape)
        res[mode] = {
            "max_abs": float(e.max()),
            "max_rel": float(rel.max()),
            "max_over_tol": float(over.max()),
            "tol_rel_max": float(rtol.max()),
            "worst_position": int(cap.positions[worst[0]]),
            "tail": tail,
        }
    return res


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def _skip(cid: str, name: str, reason: str) -> CheckResult:
    return CheckResult(cid, name, SKIPPED, reason)


NAMES = {
    "a": "file loads; runtime metadata = file",
    "b": "applied ROPE params = plan",
    "c": "reference rotary = runtime rotary",
    "d": "reference forward = runtime logits",
}


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
        rope factor tensors get ctx, since llama.cpp picks the factors by context size).
    n_threads: CPU threads of the probes (default: one per billion parameters, at least 1,
        at most all cores).
    expect: overrides of the expected RopeParams fields (e.g. ``{"layout": "neox"}``,
        ``{"freq_base": 5e5}``): check the runtime against what you believe instead.
    """
    from ropepatch.patch.gguf import inspect_gguf  # noqa: PLC0415
    from ropepatch.rope.methods import make_plan  # noqa: PLC0415
    from ropepatch.runtime.probe import gpu_available, probe  # noqa: PLC0415
    from ropepatch.check.rope_reference import ggml_rope_args  # noqa: PLC0415

    t_start = time.perf_counter()
    path = str(path)
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    if ctx is not None and (not isinstance(ctx, (int, np.integer)) or ctx <= 0):
        raise UsageError(f"--ctx must be a positive integer, found {ctx!r}")
    if gpu_layers < -1:
        raise UsageError(f"--gpu-layers must be -1 (all) or >= 0, found {gpu_layers}")
    notes: list[str] = []
    versions = {"ropepatch": __version__}
    try:
        import llama_cpp  # noqa: PLC0415

        versions["llama_cpp_python"] = str(getattr(llama_cpp, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        versions["llama_cpp_python"] = f"unavailable ({exc})"

    # ---- GPU -------------------------------------------------------------------------------
    on_gpu = False
    if gpu_layers != 0:
        if gpu_available():
            on_gpu = True
        else:
            notes.append(
                f"llama-cpp-python is built without GPU offload: --gpu-layers {gpu_layers} has no "
                f"effect, every check ran on the CPU (GPU: not validated)"
            )
    device = f"gpu (n_gpu_layers={gpu_layers})" if on_gpu else "cpu"

    def report(arch, ctx_, L, prov_d, src, expected, expected_op, checks) -> ValidationReport:
        return ValidationReport(
            path=path, arch=arch, ctx=int(ctx_), original_ctx=int(L), provenance=prov_d,
            expected_source=src, expected=expected, expected_op=expected_op, device=device,
            gpu_layers=int(gpu_layers), checks=tuple(checks), notes=tuple(notes),
            seconds=time.perf_counter() - t_start, versions=versions,
        )

    # ---- what ropepatch reads from the file, and the recorded plan --------------------------
    t0 = time.perf_counter()
    try:
        info = inspect_gguf(path)
    except RopepatchError as exc:
        # never hand llama.cpp a file ropepatch cannot read (unknown scaling types abort it)
        checks = [CheckResult("a", NAMES["a"], FAILED, f"ropepatch cannot read the file: {exc}",
                              seconds=time.perf_counter() - t0)]
        checks += [_skip(c, NAMES[c], "check a failed: the file was not loaded") for c in "bcd"]
        return report("?", ctx or 0, 0, None, "file", {}, None, checks)
    cur, orig, prov = info.current, info.original, info.provenance
    arch, L = cur.arch, orig.n_ctx_train
    target_ctx = int(ctx) if ctx is not None else cur.n_ctx_train
    prov_d = None
    plan_target: RopeParams | None = None
    plan_problem = ""
    if prov is not None:
        prov_d = {"method": prov.method, "ctx": prov.ctx, "alpha": prov.alpha, "version": prov.version}
        try:
            try:
                plan = make_plan(orig, prov.ctx, prov.method, prov.alpha)
            except UnsupportedModelError:
                plan = make_plan(orig, prov.ctx, prov.method, prov.alpha, replace_scaling=True)
                notes.append("the recorded plan replaces the model's own scaling (--replace-scaling)")
            plan_target = plan.target
        except RopepatchError as exc:
            plan_problem = f"the recorded plan (method {prov.method!r}, ctx {prov.ctx}, alpha {_g(prov.alpha)}) cannot be rebuilt: {exc}"
        if ctx is not None and prov.ctx and int(ctx) != prov.ctx:
            notes.append(f"--ctx {ctx} differs from the ctx ropepatch patched the file for ({prov.ctx})")
    expected_p = plan_target if plan_target is not None else cur
    src = "plan" if plan_target is not None else "file"
    if expect:
        bad = [kk for kk in expect if kk not in RopeParams.__dataclass_fields__]
        if bad:
            raise UsageError(f"validate: unknown expected field(s) {bad}; fields: {list(RopeParams.__dataclass_fields__)}")
        ov = dict(expect)
        if "layout" in ov:
            ov["layout"] = RopeLayout(ov["layout"])
        if "scaling_type" in ov:
            ov["scaling_type"] = ScalingType(ov["scaling_type"])
        expected_p = expected_p.with_(**ov)
        src = "expected"
    expected_d = _jsonable(asdict(expected_p))
    expected_d["freq_scale"] = expected_p.freq_scale
    try:
        expected_op = ggml_rope_args(expected_p)
        op_problem = ""
    except RopepatchError as exc:
        expected_op, op_problem = None, f"no reference rotary for this model: {exc}"
    file_op = None
    try:
        file_op = ggml_rope_args(cur)
    except RopepatchError:
        pass

    # ---- a. load + metadata ------------------------------------------------------------------
    arch_keys = [k(t, arch) for t in (
        K.CONTEXT_LENGTH, K.ROPE_DIMENSION_COUNT, K.ROPE_FREQ_BASE, K.ROPE_SCALE_LINEAR, K.ROPE_SCALING_TYPE,
        K.ROPE_SCALING_FACTOR, K.ROPE_SCALING_ORIG_CTX, K.ROPE_SCALING_ATTN_FACTOR, K.ROPE_SCALING_FINETUNED,
    )]
    from ropepatch.formats.gguf.header import read_header  # noqa: PLC0415

    header = read_header(path)
    rp_keys = [kv.key for kv in header.kvs if kv.key.startswith(K.RP_PREFIX) and kv.type != ValueType.ARRAY
               and kv.key != K.RP_ORIGINAL]
    meta_keys = [K.GENERAL_ARCHITECTURE, *arch_keys, *rp_keys, K.RP_ORIGINAL]
    try:
        rt = _runtime_info(path, meta_keys, gpu_layers)
    except RopepatchError as exc:
        checks = [CheckResult("a", NAMES["a"], FAILED, f"the runtime cannot load the file: {exc}",
                              seconds=time.perf_counter() - t0)]
        checks += [_skip(c, NAMES[c], "check a failed: the runtime did not load the file") for c in "bcd"]
        return report(arch, target_ctx, L, prov_d, src, expected_d, expected_op, checks)
    problems: list[str] = []
    meta_fig: dict[str, dict] = {}
    for key in meta_keys:
        kv = header.entry(key)
        want = None if kv is None else _meta_str(kv)
        got = rt.meta.get(key)
        meta_fig[key] = {"file": want if key != K.RP_ORIGINAL else (None if want is None else f"<{len(want)} chars>"),
                         "runtime": got if key != K.RP_ORIGINAL else (None if got is None else f"<{len(got)} chars>")}
        if got != want:
            problems.append(f"runtime reads {key} = {got!r}, the file has {want!r}")
    if rt.n_ctx_train != cur.n_ctx_train:
        problems.append(f"runtime n_ctx_train {rt.n_ctx_train} != file context_length {cur.n_ctx_train}")
    rt_layout = _RUNTIME_ROPE_TYPES.get(rt.rope_type, str(rt.rope_type))
    if rt_layout != _layout_name(expected_p.layout):
        problems.append(f"runtime rope type {rt_layout.upper()} ({rt.rope_type}), {_LABEL[src]} expects "
                        f"{_layout_name(expected_p.layout).upper()}")
    fac = np.float32(cur.scaling_factor or 0.0)
    want_fst = 1.0 if fac == 0 else float(np.float32(1) / fac)
    if np.float32(rt.freq_scale_train) != np.float32(want_fst):
        problems.append(f"runtime freq_scale_train {_g(rt.freq_scale_train)} != 1/{_fmt_val(cur.scaling_factor)} from the file")
    plan_diffs = []
    if plan_problem:
        problems.append(plan_problem)
    elif plan_target is not None:
        plan_diffs = _params_diff(cur, plan_target)
        if plan_diffs:
            parts = [f"{k(_FIELD_KEYS[f], arch) if '{arch}' in _FIELD_KEYS[f] else _FIELD_KEYS[f]} is "
                     f"{_fmt_val(a)} in the file, the recorded plan gives {_fmt_val(b)}" for f, a, b in plan_diffs]
            problems.append(
                "changed behind ropepatch's back: " + "; ".join(parts)
                + f" (plan: {prov.method} to {prov.ctx}, alpha {_g(prov.alpha)})"
            )
    if src == "expected":
        for f, a, b in _params_diff(cur, expected_p):
            if f != "layout":  # the layout is checked against the runtime's rope type above
                problems.append(f"file {f} {_fmt_val(a)} != expected {_fmt_val(b)}")
    figs_a = {
        "n_ctx_train": {"runtime": rt.n_ctx_train, "file": cur.n_ctx_train},
        "rope_type": {"runtime": rt_layout, "expected": _layout_name(expected_p.layout)},
        "freq_scale_train": {"runtime": rt.freq_scale_train, "file": want_fst},
        "metadata": meta_fig,
        "plan_consistent": None if plan_target is None else not plan_diffs,
        "n_params": rt.n_params,
    }
    checks: list[CheckResult] = [
        CheckResult("a", NAMES["a"], FAILED if problems else PASSED, "; ".join(problems), figs_a,
                    time.perf_counter() - t0)
    ]

    if n_threads is None:
        # the probes decode a few tokens and synchronise after every node of the captured
        # layers: thread wake-ups dominate small models (erratic on a busy machine)
        n_threads = max(1, min(os.cpu_count() or 1, math.ceil(rt.n_params / 1e9)))

    # ---- b + c: probe the runtime ------------------------------------------------------------
    if expected_op is None:
        checks += [_skip("b", NAMES["b"], op_problem), _skip("c", NAMES["c"], op_problem)]
    else:
        t0 = time.perf_counter()
        pos = list(positions) if positions is not None else default_positions(L, target_ctx)
        runs = _runs(pos)
        rng = np.random.default_rng(ROTARY_SEED)
        layer_set = tuple(int(v) for v in layers)
        names = {t.name for t in header.tensors}
        long_short = any(n_.startswith(("rope_factors_long", "rope_factors_short")) for n_ in names)
        captures, probe_err = [], ""
        try:
            for lo, hi in runs:
                n_tok = hi - lo + 1
                toks = rng.integers(0, rt.n_vocab, size=n_tok)
                nc = int(n_ctx) if n_ctx else (target_ctx if long_short else max(256, n_tok))
                res = probe(path, toks, lo, n_ctx=nc, layers=layer_set, n_gpu_layers=gpu_layers,
                            logits=False, n_threads=n_threads)
                if res.n_ctx_train != cur.n_ctx_train and "after creating a context" not in checks[0].reason:
                    checks[0] = _amend(checks[0], f"after creating a context the runtime's n_ctx_train is "
                                                  f"{res.n_ctx_train}, not {cur.n_ctx_train}")
                for cap in res.ropes:
                    captures.append((cap, np.asarray(res.positions)))
        except RopepatchError as exc:
            probe_err = f"the runtime failed to decode: {exc}"
        t_probe = time.perf_counter() - t0
        if probe_err:
            checks[0] = _amend(checks[0], probe_err)
            checks += [_skip("b", NAMES["b"], probe_err), _skip("c", NAMES["c"], probe_err)]
        elif not captures:
            why = f"no ROPE node captured in layers {list(layer_set)} (does this model use RoPE there?)"
            checks += [CheckResult("b", NAMES["b"], FAILED, why), CheckResult("c", NAMES["c"], FAILED, why)]
        else:
            checks.append(_check_b(captures, expected_op, file_op, src, t_probe, n_threads))
            checks.append(_check_c(captures, expected_op, src, on_gpu, runs))

    # ---- d: reference forward ---------------------------------------------------------------
    checks.append(_check_d(path, cur, expected_op, op_problem, L, target_ctx, gpu_layers, on_gpu,
                           reference_forward, forward_tokens, n_threads, checks[0]))
    return report(arch, target_ctx, L, prov_d, src, expected_d, expected_op, checks)


def _amend(check: CheckResult, problem: str) -> CheckResult:
    reason = f"{check.reason}; {problem}" if check.reason else problem
    return CheckResult(check.id, check.name, FAILED, reason, check.figures, check.seconds)


_OP_FIELDS = ("n_dims", "mode", "n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor",
              "beta_fast", "beta_slow")


def _op_diffs(got: Mapping, want: Mapping) -> list[str]:
    out = []
    for f in _OP_FIELDS:
        a, b = got[f], want[f]
        same = (a == b) if f in ("n_dims", "mode", "n_ctx_orig") else np.float32(a) == np.float32(b)
        if not same:
            fa = _mode_name(a) if f == "mode" else _fmt_val(a)
            fb = _mode_name(b) if f == "mode" else _fmt_val(b)
            out.append(f"{f}: runtime {fa}, {{src}} {fb}")
    return out


def _check_b(captures, expected_op, file_op, src, seconds, n_threads) -> CheckResult:
    diffs: dict[str, list[str]] = {}
    runtime_ops = {}
    follows_file = True
    for cap, _ in captures:
        got = cap.op.as_dict()
        runtime_ops.setdefault(cap.name, got)
        d = _op_diffs(got, expected_op)
        if d:
            diffs.setdefault(cap.name, d)
        if file_op is None or _op_diffs(got, file_op):
            follows_file = False
    figs = {"expected": dict(expected_op), "runtime": runtime_ops, "n_captures": len(captures), "n_threads": n_threads}
    if not diffs:
        return CheckResult("b", NAMES["b"], PASSED, "", figs, seconds)
    name, d = next(iter(diffs.items()))
    reason = f"{name}: " + "; ".join(x.format(src=src) for x in d)
    if src != "file":
        reason += (f" (the runtime follows the file; the file differs from {_LABEL[src]})"
                   if follows_file else " (the runtime does not apply the file's settings as ropepatch reads them either)")
    return CheckResult("b", NAMES["b"], FAILED, reason, figs, seconds)


def _check_c(captures, expected_op, src, on_gpu, runs) -> CheckResult:
    t0 = time.perf_counter()
    agg = {"f32": None, "f64": None}
    own_worst = 0.0
    tail = 0.0
    worst_name = ""
    pos_problem = ""
    per_node = {}
    for cap, probe_pos in captures:
        if not np.array_equal(np.asarray(cap.positions).reshape(-1), probe_pos):
            pos_problem = f"{cap.name}: the op's positions are not the decoded positions"
        f16 = cap.tensor_type == "f16"
        e = rotary_errors(cap, expected_op, f16=f16)
        own = rotary_errors(cap, cap.op.as_dict(), f16=f16)
        if "error" in e:
            return CheckResult("c", NAMES["c"], FAILED, e["error"], {}, time.perf_counter() - t0)
        own_worst = max(own_worst, own["f64"]["max_over_tol"], 0.0 if on_gpu else own["f32"]["max_over_tol"])
        tail = max(tail, e["f32"]["tail"], e["f64"]["tail"])
        key = f"{cap.name}@{int(probe_pos[0])}"
        per_node[key] = {m: {kk: e[m][kk] for kk in ("max_abs", "max_rel", "max_over_tol")} for m in e}
        for m in ("f32", "f64"):
            tol_max = max(e[m]["tol_rel_max"], (agg[m] or {}).get("tol_rel_max", 0.0))
            if agg[m] is None or e[m]["max_over_tol"] > agg[m]["max_over_tol"]:
                if m == "f64":
                    worst_name = cap.name
                agg[m] = dict(e[m], max_abs=max(e[m]["max_abs"], (agg[m] or {}).get("max_abs", 0.0)),
                              max_rel=max(e[m]["max_rel"], (agg[m] or {}).get("max_rel", 0.0)))
            else:
                agg[m]["max_abs"] = max(agg[m]["max_abs"], e[m]["max_abs"])
                agg[m]["max_rel"] = max(agg[m]["max_rel"], e[m]["max_rel"])
            agg[m]["tol_rel_max"] = tol_max
    figs = {
        "positions": [[lo, hi] for lo, hi in runs],
        "n_captures": len(captures),
        "f64": agg["f64"],
        "f32": agg["f32"],
        "pass_through_max_abs": tail,
        "runtime_params_max_over_tol": own_worst,
        "judged_by": "f64" if on_gpu else "f32+f64",
        "tolerance": ROTARY_TOLERANCE,
        "per_node": per_node,
    }
    modes = ("f64",) if on_gpu else ("f32", "f64")
    bad = [m for m in modes if agg[m]["max_over_tol"] > 1.0]
    reasons = []
    if pos_problem:
        reasons.append(pos_problem)
    if tail != 0.0:
        reasons.append(f"pass-through dims changed by up to {tail:.3g}")
    if bad:
        m = bad[-1]
        r = agg[m]
        why = (f"reference rotary with {_LABEL[src]}'s params misses the runtime's output by up to {r['max_abs']:.3g} "
               f"(rel {r['max_rel']:.3g}, {r['max_over_tol']:.3g}x the {m} tolerance) on {worst_name} at position "
               f"{r['worst_position']}")
        why += ("; with the runtime's own op params it matches: the parameters differ, not the kernel"
                if own_worst <= 1.0 else "; it misses with the runtime's own op params too: the kernel differs from the reference")
        reasons.append(why)
    status = FAILED if reasons else PASSED
    return CheckResult("c", NAMES["c"], status, "; ".join(reasons), figs, time.perf_counter() - t0)


def _check_d(path, cur, expected_op, op_problem, L, ctx, gpu_layers, on_gpu, reference_forward,
             forward_tokens, n_threads, check_a) -> CheckResult:
    name = NAMES["d"]
    if reference_forward is False:
        return _skip("d", name, "not requested (reference_forward=False)")
    if check_a.reason.startswith(("the runtime cannot load", "ropepatch cannot read")):
        return _skip("d", name, "the runtime did not load the file")
    if expected_op is None:
        return _skip("d", name, op_problem)
    if cur.arch not in _FORWARD_ARCHS:
        return _skip("d", name, f"the reference forward supports {', '.join(_FORWARD_ARCHS)}, not {cur.arch}")
    n_weights, types = _weight_stats(path)
    if types <= _F32_TYPES:
        tol_class = "f32"
    elif types <= _Q8_0_TYPES:
        tol_class = "q8_0"
    else:
        from gguf import GGMLQuantizationType  # noqa: PLC0415

        names = sorted(GGMLQuantizationType(t).name for t in types - _Q8_0_TYPES)
        why = f"logit tolerances are established for F32 and Q8_0 weights only; this model has {', '.join(names)}"
        if n_weights * float(min(ctx, 2 * L + 64)) > FORWARD_AUTO_BUDGET:
            why += f" (and at {n_weights / 1e6:.0f}M weights it is too large for a NumPy reference forward over > {L} tokens)"
        return _skip("d", name, why)
    n_tok = int(forward_tokens) if forward_tokens else min(ctx, 2 * L + 64)
    if n_tok < 2:
        return _skip("d", name, f"forward_tokens {n_tok} < 2")
    cost = float(n_weights) * n_tok
    if reference_forward is None and cost > FORWARD_AUTO_BUDGET:
        return _skip("d", name, f"model too large for the automatic reference forward ({n_weights / 1e6:.0f}M "
                                f"weights x {n_tok} tokens = {cost:.2g} > {FORWARD_AUTO_BUDGET:.0e} multiply-adds); "
                                f"force it with --reference-forward")
    from ropepatch.runtime.probe import probe  # noqa: PLC0415
    from ropepatch.check.reference_forward import compare_logits, forward, load_model  # noqa: PLC0415

    t0 = time.perf_counter()
    start = max(0, ctx - n_tok)
    m = load_model(path)
    rng = np.random.default_rng(FORWARD_SEED)
    toks = rng.integers(min(3, m.n_vocab - 1), m.n_vocab, size=n_tok)
    try:
        res = probe(path, toks, start, n_ctx=max(256, n_tok), layers=(), n_gpu_layers=gpu_layers,
                    kv_cache_type="f32", flash_attn=False, n_threads=n_threads)
    except RopepatchError as exc:
        return CheckResult("d", name, FAILED, f"the runtime failed to decode {n_tok} tokens: {exc}",
                           seconds=time.perf_counter() - t0)
    ref = forward(m, toks, start, rope_op=expected_op, rope_dtype=np.float32,
                  ggml_q8_0_activations=(tol_class == "q8_0" and not on_gpu))
    cmp = compare_logits(ref, res.logits)
    if on_gpu:
        tol_class = "q8_0"  # GPU kernels (F16/MMQ paths) are not emulated: the looser class
    max_abs, kl_max, kl_mean, top1 = FORWARD_TOL[tol_class]
    figs = {
        "tokens": n_tok,
        "positions": [start, start + n_tok - 1],
        "max_distance": n_tok - 1,
        "beyond_original_ctx": n_tok - 1 >= L,
        "max_abs": cmp.max_abs,
        "p95_abs": cmp.p95_abs,
        "top1_agreement": cmp.top1_agreement,
        "kl_max": cmp.kl_max,
        "kl_mean": cmp.kl_mean,
        "tolerance_class": tol_class + (" (gpu: not established)" if on_gpu else ""),
        "tolerance": {"max_abs": max_abs, "kl_max": kl_max, "kl_mean": kl_mean, "top1_min": top1},
        "runtime": "F32 KV cache, flash attention off",
    }
    bad = []
    if not cmp.max_abs <= max_abs:
        bad.append(f"max |logit diff| {cmp.max_abs:.3g} > {max_abs:g}")
    if not cmp.kl_max <= kl_max:
        bad.append(f"KL max {cmp.kl_max:.3g} > {kl_max:g}")
    if not cmp.kl_mean <= kl_mean:
        bad.append(f"KL mean {cmp.kl_mean:.3g} > {kl_mean:g}")
    if not cmp.top1_agreement >= top1:
        bad.append(f"top-1 agreement {cmp.top1_agreement:.3f} < {top1:g}")
    reason = ""
    if bad:
        reason = (f"runtime logits differ from the reference forward with the expected RoPE over positions "
                  f"{start}..{start + n_tok - 1}: " + ", ".join(bad))
    return CheckResult("d", name, FAILED if bad else PASSED, reason, figs, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# human output
# ---------------------------------------------------------------------------------------------


def _summary(c: CheckResult) -> str:
    f = c.figures
    if c.id == "a" and f:
        return (f"n_ctx_train {f['n_ctx_train']['runtime']}, rope type {str(f['rope_type']['runtime']).upper()}, "
                f"{len(f['metadata'])} keys read back"
                + ("" if f.get("plan_consistent") is None else
                   f", file {'matches' if f['plan_consistent'] else 'differs from'} the recorded plan"))
    if c.id == "b" and f:
        e = f["expected"]
        return (f"{f['n_captures']} ROPE ops: n_dims {e['n_dims']} {_mode_name(e['mode'])} base {_g(e['freq_base'])} "
                f"scale {_g(e['freq_scale'])} ext {_g(e['ext_factor'])} attn {_g(e['attn_factor'])} "
                f"n_ctx_orig {e['n_ctx_orig']}")
    if c.id == "c" and f and f.get("f64"):
        pos = ", ".join(f"{lo}..{hi}" for lo, hi in f["positions"])
        r64, r32 = f["f64"], f["f32"]
        return (f"positions {pos}: max abs {r64['max_abs']:.2g}, max rel {r64['max_rel']:.2g} "
                f"(float64 rotary, tol rel <= {r64['tol_rel_max']:.2g}); float32 recipe max rel "
                f"{r32['max_rel']:.2g} (tol {r32['tol_rel_max']:.2g})")
    if c.id == "d" and f:
        t = f["tolerance"]
        return (f"{f['tokens']} tokens at {f['positions'][0]}..{f['positions'][1]}: max abs {f['max_abs']:.2g} "
                f"(tol {t['max_abs']:g}), top-1 {f['top1_agreement']:.3f}, KL mean {f['kl_mean']:.2g} "
                f"max {f['kl_max']:.2g} ({f['tolerance_class']} tolerances)")
    return ""


def format_report(report: ValidationReport) -> str:
    """The human-readable report: one line per check (PASS / FAIL / SKIP, figures or reason)."""
    lines = [f"{report.path}: {report.arch}, validating to ctx {report.ctx} (original {report.original_ctx}) "
             f"on {report.device}"]
    if report.provenance:
        p = report.provenance
        lines.append(f"  patched by ropepatch {p['version']}: {p['method']} to {p['ctx']}, alpha {_g(p['alpha'])}; "
                     f"expecting the recorded plan")
    else:
        lines.append(f"  expecting the {report.expected_source}'s settings")
    tag = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "SKIP"}
    for c in report.checks:
        detail = _summary(c) if c.status == PASSED else c.reason
        lines.append(f"  {tag[c.status]} {c.id}. {c.name} ({c.seconds:.1f} s): {detail}")
    for n in report.notes:
        lines.append(f"  note: {n}")
    n_fail = len(report.failures)
    lines.append(f"{'OK' if report.passed else 'FAILED'}: {n_fail} check(s) failed, "
                 f"{sum(c.status == SKIPPED for c in report.checks)} skipped ({report.seconds:.1f} s)")
    return "\n".join(lines)
