"""Runtime probe: ask llama.cpp (through llama-cpp-python's low-level API) what RoPE it applied.

:func:`probe` loads a GGUF, creates a context (optionally with RoPE overrides), decodes a
short prompt at chosen positions -- the first batch of an empty sequence may start at any
position, so positions far beyond the training context cost no long run -- and captures,
through the scheduler's eval callback (``cb_eval``), every ROPE node of the chosen layers:
its name, its decoded op parameters, its input ``src[0]`` (read *before* the op runs, since
ggml may compute ROPE in place), its output, its positions ``src[1]`` and its optional
frequency factors ``src[2]``; plus the logits of the decoded tokens.

How the un-rotated input is read: while the chosen layers are still being computed, the
callback asks to observe *every* node, so the scheduler computes them one node at a time
and synchronises after each. When the callback is then asked about a ROPE node, all of its
sources are computed and the node itself is not, so ``src[0]`` is read then (ask=True); the
output is read after the node ran (ask=False). Past the last chosen layer the callback
declines everything and the rest of the graph runs in one go.

Tensors are read with ``ggml_backend_tensor_get`` (works for CPU and GPU buffers) and the
``ggml_tensor`` struct is declared in ctypes from the ggml.h shipped with llama-cpp-python
0.3.36, checked at run time against ``ggml_tensor_overhead`` and ``ggml_get_name``.
Every resource (batch, context, model) is freed, also on error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ropepatch.errors import FormatError, RopepatchError, UsageError
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE

# ---- ggml.h (llama-cpp-python 0.3.36's vendored ggml) ---------------------------------------
GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object): offs, size, next, type, padding[4]

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_I32 = 26
_NP_TYPES = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16, GGML_TYPE_I32: np.int32}
_TYPE_NAMES = {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16", GGML_TYPE_I32: "i32"}


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` from ggml/include/ggml.h."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


class ProbeError(RopepatchError):
    """The runtime could not load, build or run the model, or returned something unexpected."""


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeOpParams:
    """A ROPE node's ``op_params``: int32 slots [1] n_dims, [2] mode, [4] n_ctx_orig,
    float32 slots [5..10] freq_base, freq_scale, ext_factor, attn_factor, beta_fast,
    beta_slow, [11..14] M-RoPE sections, [15] n_offs (first rotated dim)."""

    n_dims: int
    mode: int
    n_ctx_orig: int
    freq_base: float
    freq_scale: float
    ext_factor: float
    attn_factor: float
    beta_fast: float
    beta_slow: float
    sections: tuple[int, int, int, int] = (0, 0, 0, 0)
    n_offs: int = 0

    @classmethod
    def from_slots(cls, slots: Sequence[int]) -> "RopeOpParams":
        raw = np.array(list(slots)[:16], dtype=np.int32)
        f = raw.view(np.float32)
        return cls(
            n_dims=int(raw[1]),
            mode=int(raw[2]),
            n_ctx_orig=int(raw[4]),
            freq_base=float(f[5]),
            freq_scale=float(f[6]),
            ext_factor=float(f[7]),
            attn_factor=float(f[8]),
            beta_fast=float(f[9]),
            beta_slow=float(f[10]),
            sections=tuple(int(v) for v in raw[11:15]),
            n_offs=int(raw[15]),
        )

    def as_dict(self) -> dict:
        """The nine parameters, keyed like :func:`ropepatch.rope_reference.ggml_rope_args`."""
        return {
            "n_dims": self.n_dims,
            "mode": self.mode,
            "n_ctx_orig": self.n_ctx_orig,
            "freq_base": self.freq_base,
            "freq_scale": self.freq_scale,
            "ext_factor": self.ext_factor,
            "attn_factor": self.attn_factor,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
        }


@dataclass(frozen=True)
class RopeCapture:
    """One ROPE node as the runtime computed it. Arrays are read-only float32 (the input and
    output converted from F16 when the runtime used F16) of shape (n_tokens, n_heads, head_dim)."""

    name: str  # graph node name, e.g. "Qcur-0"
    layer: int  # layer parsed from the name's "-N" suffix (-1 if none)
    op: RopeOpParams
    input: np.ndarray = field(repr=False)  # src[0], before rotation
    output: np.ndarray = field(repr=False)  # the node's result
    positions: np.ndarray = field(repr=False)  # src[1], int32 (n_tokens,) (4 per token for M-RoPE)
    freq_factors: np.ndarray | None = field(default=None, repr=False)  # src[2] (rope_freqs), or None
    tensor_type: str = "f32"  # ggml type of input/output: "f32" or "f16"
    inplace: bool = False  # the runtime wrote the output over the input's memory


@dataclass(frozen=True)
class ProbeResult:
    """What the runtime did for one decode."""

    model_path: str
    n_ctx: int  # llama_n_ctx of the context
    n_ctx_train: int  # llama_model_n_ctx_train after context creation (YaRN overrides change it)
    tokens: np.ndarray = field(repr=False)  # int32 (n_tokens,)
    positions: np.ndarray = field(repr=False)  # int32 (n_tokens,)
    ropes: tuple[RopeCapture, ...] = ()
    logits: np.ndarray | None = field(default=None, repr=False)  # float32 (n_tokens, n_vocab)

    def rope(self, name: str) -> RopeCapture:
        """The first captured ROPE node with this name (e.g. ``"Kcur-0"``)."""
        for cap in self.ropes:
            if cap.name == name:
                return cap
        raise KeyError(f"no ROPE node named {name!r} captured (have {[c.name for c in self.ropes]})")


# ---- shared libraries ------------------------------------------------------------------------

_lock = threading.Lock()  # one probe at a time: llama_backend_init / log state are global
_libs: dict[str, object] = {}


def _llama():
    """llama_cpp's low-level module (imported lazily: the package may be absent)."""
    if "llama" not in _libs:
        try:
            import llama_cpp  # noqa: PLC0415
        except Exception as exc:  # ImportError, OSError from a broken build
            raise ProbeError(f"llama-cpp-python is not usable: {exc}") from None
        llama_cpp.llama_backend_init()
        _libs["llama"] = llama_cpp
    return _libs["llama"]


def _ggml() -> ctypes.CDLL:
    """libggml-base from llama_cpp/lib, with the few functions the probe needs bound."""
    if "ggml" in _libs:
        return _libs["ggml"]
    llama_cpp = _llama()
    libdir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    candidates = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("ggml-base.*"))
    lib = None
    for cand in candidates:
        try:
            lib = ctypes.CDLL(str(cand), mode=ctypes.RTLD_GLOBAL)
            break
        except OSError:
            continue
    if lib is None:  # fall back to libggml (its dependency tree includes ggml-base)
        from llama_cpp import _ggml as ggml_mod  # noqa: PLC0415

        lib = ggml_mod.libggml
    tp = ctypes.POINTER(GgmlTensor)
    lib.ggml_op_desc.argtypes, lib.ggml_op_desc.restype = [tp], ctypes.c_char_p
    lib.ggml_get_name.argtypes, lib.ggml_get_name.restype = [tp], ctypes.c_char_p
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [tp], ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes, lib.ggml_tensor_overhead.restype = [], ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [tp, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    expected = lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
    if ctypes.sizeof(GgmlTensor) != expected:
        raise ProbeError(
            f"ggml_tensor layout mismatch: ctypes struct is {ctypes.sizeof(GgmlTensor)} bytes, "
            f"the shipped ggml says {expected}; update ropepatch.probe.GgmlTensor from ggml.h"
        )
    _libs["ggml"] = lib
    return lib


# ---- tensor reading --------------------------------------------------------------------------


def _read_tensor(lib, t) -> np.ndarray:
    """A tensor's contents as a numpy array in row-major order (ne3, ne2, ne1, ne0), honouring
    its byte strides (views), copied out with ggml_backend_tensor_get."""
    tt = t.contents
    if tt.type not in _NP_TYPES:
        raise ProbeError(f"tensor {tt.name.decode(errors='replace')!r}: unsupported ggml type {tt.type}")
    if not tt.data or not tt.buffer:
        raise ProbeError(f"tensor {tt.name.decode(errors='replace')!r} has no data (not allocated)")
    nbytes = int(lib.ggml_nbytes(t))
    raw = np.empty(nbytes, dtype=np.uint8)
    lib.ggml_backend_tensor_get(t, raw.ctypes.data_as(ctypes.c_void_p), 0, nbytes)
    shape = tuple(int(v) for v in tt.ne)[::-1]
    strides = tuple(int(v) for v in tt.nb)[::-1]
    arr = np.ndarray(shape=shape, dtype=_NP_TYPES[tt.type], buffer=raw, offset=0, strides=strides)
    return np.ascontiguousarray(arr)


def _as_heads(arr: np.ndarray) -> np.ndarray:
    """(1, n_tokens, n_heads, head_dim) -> read-only float32 (n_tokens, n_heads, head_dim)."""
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise ProbeError(f"unexpected ROPE operand shape {arr.shape} (ggml ne reversed)")
    out = arr[0].astype(np.float32)
    out.flags.writeable = False
    return out


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


_LAYER_RE = re.compile(r"-(\d+)$")


def _layer_of(name: str) -> int:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else -1


class _Recorder:
    """State of the eval callback. Never lets an exception cross into C."""

    def __init__(self, lib, layers: frozenset[int] | None):
        self.lib = lib
        self.layers = layers
        self.last_layer = max(layers) if layers else None
        self.done = layers is not None and not layers  # nothing (more) to observe
        self.pending: dict[int, tuple[np.ndarray, int]] = {}  # ROPE node addr -> (src0 copy, src0.data)
        self.captures: list[RopeCapture] = []
        self.error: BaseException | None = None
        self.checked = False

    def _wanted(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def __call__(self, t_addr, ask, _user) -> bool:
        try:
            return self._handle(t_addr, bool(ask))
        except BaseException as exc:  # noqa: BLE001 - reported after llama_decode returns
            if self.error is None:
                self.error = exc
            self.done = True
            return False

    def _handle(self, t_addr, ask: bool) -> bool:
        if self.done or not t_addr:
            return False
        t = ctypes.cast(t_addr, ctypes.POINTER(GgmlTensor))
        tt = t.contents
        name = tt.name.split(b"\0", 1)[0].decode(errors="replace")
        if not self.checked:  # the struct layout agrees with the library's own accessor
            lib_name = (self.lib.ggml_get_name(t) or b"").decode(errors="replace")
            if lib_name != name:
                raise ProbeError(f"ggml_tensor layout mismatch: struct name {name!r} != ggml_get_name {lib_name!r}")
            self.checked = True
        layer = _layer_of(name)
        if self.last_layer is not None and layer > self.last_layer:
            self.done = True  # the chosen layers are finished; let the rest run in one go
            return False
        is_rope = self.lib.ggml_op_desc(t) == b"ROPE"
        if ask:
            if is_rope and self._wanted(layer):
                # every earlier node has run (we observed each one), this one has not:
                # src[0] holds the un-rotated input now
                src0 = tt.src[0]
                self.pending[t_addr] = (_read_tensor(self.lib, src0), int(src0.contents.data or 0))
            # observe every node until the chosen layers are done, so each is computed alone
            return True
        if not (is_rope and t_addr in self.pending):
            return True
        src_in, src_data = self.pending.pop(t_addr)
        out = _read_tensor(self.lib, t)
        pos = _read_tensor(self.lib, tt.src[1]).reshape(-1)
        ff = None
        if tt.src[2]:
            ff = _frozen(_read_tensor(self.lib, tt.src[2]).reshape(-1).astype(np.float32))
        op = RopeOpParams.from_slots(tt.op_params)
        self.captures.append(
            RopeCapture(
                name=name,
                layer=layer,
                op=op,
                input=_as_heads(src_in),
                output=_as_heads(out),
                positions=_frozen(pos),
                freq_factors=ff,
                tensor_type=_TYPE_NAMES.get(tt.type, str(tt.type)),
                inplace=bool(tt.data) and int(tt.data) == src_data,
            )
        )
        return True


@contextlib.contextmanager
def _quiet_llama_log(quiet: bool):
    """llama-cpp-python prints llama.cpp's log when its logger's level allows; raise it to
    ERROR for the duration of the call, then restore it."""
    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


# ---- the probe -------------------------------------------------------------------------------


def _kv_override_array(llama_cpp, kv_overrides: Mapping[str, object]):
    arr = (llama_cpp.llama_model_kv_override * (len(kv_overrides) + 1))()
    for i, (key, val) in enumerate(kv_overrides.items()):
        kb = str(key).encode()
        if len(kb) >= 128:
            raise UsageError(f"kv override key too long (max 127 bytes): {key}")
        arr[i].key = kb
        if isinstance(val, bool):
            arr[i].tag, arr[i].value.val_bool = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL, val
        elif isinstance(val, int):
            arr[i].tag, arr[i].value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, val
        elif isinstance(val, float):
            arr[i].tag, arr[i].value.val_f64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT, val
        elif isinstance(val, str):
            vb = val.encode()
            if len(vb) >= 128:
                raise UsageError(f"kv override {key}: string value too long (max 127 bytes)")
            arr[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = vb
        else:
            raise UsageError(f"kv override {key}: unsupported value type {type(val).__name__}")
    arr[len(kv_overrides)].key = b""  # sentinel
    return arr


def _positions(positions, n_tokens: int) -> np.ndarray:
    if isinstance(positions, (int, np.integer)):
        pos = int(positions) + np.arange(n_tokens, dtype=np.int64)
    else:
        pos = np.asarray(list(positions), dtype=np.int64).reshape(-1)
    if pos.size != n_tokens:
        raise UsageError(f"probe: {pos.size} positions for {n_tokens} tokens")
    if pos.size and (pos[0] < 0 or np.any(np.diff(pos) != 1)):
        raise UsageError("probe: positions must be non-negative and consecutive (one sequence, one batch)")
    if pos.size and pos[-1] > np.iinfo(np.int32).max:
        raise UsageError(f"probe: position {pos[-1]} does not fit llama_pos (int32)")
    return pos.astype(np.int32)


def probe(
    model_path: str | os.PathLike,
    tokens: Iterable[int],
    positions: int | Iterable[int] = 0,
    *,
    n_ctx: int = 2048,
    n_batch: int | None = None,
    layers: Iterable[int] | None = (0,),
    rope_freq_base: float = 0.0,
    rope_freq_scale: float = 0.0,
    rope_scaling_type: int | str = -1,
    yarn_ext_factor: float = -1.0,
    yarn_attn_factor: float = -1.0,
    yarn_beta_fast: float = -1.0,
    yarn_beta_slow: float = -1.0,
    yarn_orig_ctx: int = 0,
    n_gpu_layers: int = 0,
    kv_overrides: Mapping[str, bool | int | float | str] | None = None,
    n_threads: int | None = None,
    logits: bool = True,
    kv_cache_type: str | None = None,
    flash_attn: bool | None = None,
    quiet: bool = True,
) -> ProbeResult:
    """Decode ``tokens`` at ``positions`` (a start position, or the consecutive positions
    themselves) in a fresh context and capture the ROPE nodes of ``layers`` (None: all).

    RoPE keyword arguments are ``llama_context_params`` fields with their "take it from the
    file" defaults (0 / -1, as ``llama_context_default_params``); ``rope_scaling_type`` may
    also be a name ("none", "linear", "yarn", "longrope"). ``n_gpu_layers`` (-1: all) and
    ``kv_overrides`` go to the model params. All tokens go in one batch and one ubatch, so
    each ROPE node is captured once per layer. ``kv_cache_type`` ("f32" / "f16"; None keeps
    the runtime default, f16) sets the K and V cache types; ``flash_attn`` forces flash
    attention on or off (None: the runtime's auto). ``quiet`` silences llama.cpp's
    info log for the call (llama-cpp-python's "llama-cpp-python" logger, restored after).
    """
    toks = np.asarray(list(tokens), dtype=np.int64).reshape(-1)
    if toks.size == 0:
        raise UsageError("probe: no tokens to decode")
    pos = _positions(positions, toks.size)
    n_batch = int(n_batch) if n_batch else max(int(toks.size), 1)
    if toks.size > n_batch:
        raise UsageError(f"probe: {toks.size} tokens do not fit one batch of n_batch={n_batch}")
    if isinstance(rope_scaling_type, str):
        if rope_scaling_type not in LLAMA_ROPE_SCALING_TYPE:
            raise UsageError(f"probe: unknown rope_scaling_type {rope_scaling_type!r}")
        rope_scaling_type = LLAMA_ROPE_SCALING_TYPE[rope_scaling_type]
    path = Path(model_path)
    if not path.is_file():
        raise UsageError(f"probe: no such model file: {path}")
    layer_set = None if layers is None else frozenset(int(v) for v in layers)
    kv_types = {None: None, "f32": GGML_TYPE_F32, "f16": GGML_TYPE_F16}
    if kv_cache_type not in kv_types:
        raise UsageError(f"probe: kv_cache_type must be 'f32' or 'f16', got {kv_cache_type!r}")

    with _lock, _quiet_llama_log(quiet):
        llama_cpp = _llama()
        lib = _ggml()

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else int(n_gpu_layers)
        kvo = None
        if kv_overrides:
            kvo = _kv_override_array(llama_cpp, kv_overrides)
            mparams.kv_overrides = kvo

        model = ctx = None
        batch = None
        recorder = _Recorder(lib, layer_set)
        cb = llama_cpp.ggml_backend_sched_eval_callback(recorder)  # keep alive until freed
        try:
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
            if not model:
                raise FormatError(f"{path}: llama.cpp could not load the model (see its log above)")
            vocab = llama_cpp.llama_model_get_vocab(model)
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            if toks.min() < 0 or toks.max() >= n_vocab:
                raise UsageError(f"probe: token ids must lie in [0, {n_vocab})")

            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = int(n_ctx)
            cparams.n_batch = n_batch
            cparams.n_ubatch = n_batch
            cparams.n_seq_max = 1
            threads = int(n_threads or os.cpu_count() or 1)
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.rope_freq_base = float(rope_freq_base)
            cparams.rope_freq_scale = float(rope_freq_scale)
            cparams.rope_scaling_type = int(rope_scaling_type)
            cparams.yarn_ext_factor = float(yarn_ext_factor)
            cparams.yarn_attn_factor = float(yarn_attn_factor)
            cparams.yarn_beta_fast = float(yarn_beta_fast)
            cparams.yarn_beta_slow = float(yarn_beta_slow)
            cparams.yarn_orig_ctx = int(yarn_orig_ctx)
            if kv_types[kv_cache_type] is not None:
                cparams.type_k = cparams.type_v = kv_types[kv_cache_type]
            if flash_attn is not None:
                cparams.flash_attn_type = 1 if flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_*
            cparams.cb_eval = cb
            cparams.cb_eval_user_data = None
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                raise ProbeError(f"{path}: llama.cpp could not create a context (n_ctx={n_ctx}; see its log above)")

            batch = llama_cpp.llama_batch_init(int(toks.size), 0, 1)
            for i, (tok, p) in enumerate(zip(toks.tolist(), pos.tolist())):
                batch.token[i] = tok
                batch.pos[i] = p
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if logits else 0
            if not logits:
                batch.logits[toks.size - 1] = 1
            batch.n_tokens = int(toks.size)

            rc = llama_cpp.llama_decode(ctx, batch)
            if recorder.error is not None:
                raise ProbeError(f"{path}: eval callback failed: {recorder.error}") from recorder.error
            if rc != 0:
                raise ProbeError(f"{path}: llama_decode returned {rc} (positions {pos[0]}..{pos[-1]}, n_ctx {n_ctx})")

            out_logits = None
            if logits:
                ptr = llama_cpp.llama_get_logits(ctx)
                if not ptr:
                    raise ProbeError(f"{path}: llama_get_logits returned NULL")
                out_logits = _frozen(np.ctypeslib.as_array(ptr, shape=(int(toks.size), n_vocab)).copy())

            return ProbeResult(
                model_path=str(path),
                n_ctx=int(llama_cpp.llama_n_ctx(ctx)),
                n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(model)),
                tokens=_frozen(toks.astype(np.int32)),
                positions=_frozen(pos),
                ropes=tuple(recorder.captures),
                logits=out_logits,
            )
        finally:
            if batch is not None:
                llama_cpp.llama_batch_free(batch)
            if ctx:
                llama_cpp.llama_free(ctx)
            if model:
                llama_cpp.llama_model_free(model)
            del kvo, cb


def gpu_available() -> bool:
    """True when the llama.cpp build can offload to a GPU (llama_supports_gpu_offload)."""
    try:
        return bool(_llama().llama_supports_gpu_offload())
    except ProbeError:
        return False
