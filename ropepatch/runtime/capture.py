"""Capturing ROPE nodes while llama.cpp computes them: the ``ggml_tensor`` struct (declared in
ctypes from the ggml.h shipped with llama-cpp-python 0.3.36, checked at run time against
``ggml_tensor_overhead`` and ``ggml_get_name``), tensor reads through ``ggml_backend_tensor_get``
(CPU and GPU buffers), and the scheduler eval callback (:class:`Recorder`) that
:func:`ropepatch.runtime.probe.probe` installs. See probe.py's docstring for how the un-rotated
input is read."""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ropepatch.errors import RopepatchError
from ropepatch.runtime import binding

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
        """The nine parameters, keyed like :func:`ropepatch.check.ggml_args.ggml_rope_args`."""
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


# ---- libggml-base (for the tensor accessors the eval callback needs) -----------------------

_libs: dict[str, object] = {}


def ggml_lib() -> ctypes.CDLL:
    """libggml-base from llama_cpp/lib, with the few functions the probe needs bound."""
    if "ggml" in _libs:
        return _libs["ggml"]
    llama_cpp = binding.llama()
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
            f"the shipped ggml says {expected}; update ropepatch.runtime.capture.GgmlTensor from ggml.h"
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


def frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


_LAYER_RE = re.compile(r"-(\d+)$")


def _layer_of(name: str) -> int:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else -1


class Recorder:
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
            ff = frozen(_read_tensor(self.lib, tt.src[2]).reshape(-1).astype(np.float32))
        op = RopeOpParams.from_slots(tt.op_params)
        self.captures.append(
            RopeCapture(
                name=name,
                layer=layer,
                op=op,
                input=_as_heads(src_in),
                output=_as_heads(out),
                positions=frozen(pos),
                freq_factors=ff,
                tensor_type=_TYPE_NAMES.get(tt.type, str(tt.type)),
                inplace=bool(tt.data) and int(tt.data) == src_data,
            )
        )
        return True
