"""GGUF tensor infos and the per-pair factor tensor ropepatch reads and writes:
``rope_freqs.weight``, or LongRoPE's ``rope_factors_long.weight`` where that pair applies.

``rope_freqs.weight`` (GGML F32, shape {rope_dim/2}) holds the per-pair divisors llama-family
builders load (llama.cpp src/models/llama.cpp: ``create_tensor(tn(LLM_TENSOR_ROPE_FREQS,
"weight"), {n_rot/2}, TENSOR_NOT_REQUIRED)``; the ROPE op divides theta_i by it).

Data layout rules (llama.cpp ggml/src/gguf.cpp ``gguf_init_from_file_impl``): tensor offsets
are relative to the data start and exactly consecutive in tensor-info order, each tensor padded
to the alignment (``offset == sum of the padded sizes before it``). So a tensor is added by
appending its info after the others and its bytes after the last tensor's padded end. Pure
bytes <-> values; the only I/O is :func:`read_tensor_bytes` (one pread).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Sequence

from ropepatch.errors import FormatError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.ggml import ggml_nbytes
from ropepatch.formats.gguf.header import KV, GGUFHeader, TensorInfo
from ropepatch.formats.gguf.keys import k
from ropepatch.formats.gguf.source import open_regular
from ropepatch.rope.effects import longrope_applies

ROPE_FREQS = "rope_freqs.weight"
ROPE_FACTORS_LONG = "rope_factors_long.weight"  # LongRoPE: applied past the original context
ROPE_FACTORS_SHORT = "rope_factors_short.weight"  # LongRoPE: applied up to it (ropepatch never writes it)
FACTOR_TENSORS = (ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT)
GGML_F32 = 0
MAX_FACTOR_PAIRS = 1 << 16  # a rope_freqs larger than this is not read (no real model comes near)


def encode_tensor_info(t: TensorInfo) -> bytes:
    """The on-disk bytes of one tensor info (name, n_dims, dims, type, offset)."""
    name = t.name.encode("utf-8")
    return (struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.shape))
            + b"".join(struct.pack("<Q", d) for d in t.shape) + struct.pack("<IQ", t.ggml_type, t.offset))


def pad_to(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


def data_size(tensors: Sequence[TensorInfo], alignment: int) -> int | None:
    """The data section's size as llama.cpp computes it (every tensor padded to the alignment):
    the offset the next tensor must have; None when a tensor's type is unknown to :mod:`.ggml`."""
    total = 0
    for t in tensors:
        n = ggml_nbytes(t.ggml_type, t.shape)
        if n is None:
            return None
        total += pad_to(n, alignment)
    return total


def find_tensor(h: GGUFHeader, name: str) -> TensorInfo | None:
    return next((t for t in h.tensors if t.name == name), None)


def factor_bytes(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes of the divisors."""
    return struct.pack(f"<{len(values)}f", *values)


def factor_values(raw: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def rope_freqs_problem(t: TensorInfo, rope_dim: int) -> str:
    """Why ``t`` is not a rope_freqs tensor ropepatch can read or write ("" when it is one):
    GGML F32, one dimension of rope_dim/2."""
    if t.ggml_type != GGML_F32:
        return f"is ggml type {t.ggml_type}, not F32 (0)"
    if t.shape != (rope_dim // 2,):
        return f"has shape {list(t.shape)}, not [{rope_dim // 2}] (rope_dim/2)"
    return ""


def overlapping(h: GGUFHeader, t: TensorInfo) -> str | None:
    """The name of another tensor of ``h`` whose data bytes overlap ``t``'s (llama.cpp refuses
    such files: offsets must be consecutive); None when none does (unknown types: not checked)."""
    n = ggml_nbytes(t.ggml_type, t.shape)
    for u in h.tensors:
        m = ggml_nbytes(u.ggml_type, u.shape)
        if u is not t and n is not None and m is not None and n and m and (
                u.offset < t.offset + n and t.offset < u.offset + m):
            return u.name
    return None


def data_end(tensors: Sequence[TensorInfo]) -> int:
    """Where the last byte of any of ``tensors`` (of a known type) ends, relative to the data start."""
    ends = [t.offset + n for t in tensors if (n := ggml_nbytes(t.ggml_type, t.shape)) is not None]
    return max(ends, default=0)


def usable_factors(raw: bytes) -> tuple[float, ...]:
    """The divisors in ``raw``; () when any is not a finite number > 0 (a runtime would divide
    by it: such a file is not one ropepatch composes with)."""
    vals = factor_values(raw)
    return vals if all(math.isfinite(v) and v > 0 for v in vals) else ()


def read_tensor_bytes(path: str, h: GGUFHeader, t: TensorInfo, name: str) -> bytes:
    """The data bytes of ``t`` (at most :data:`MAX_FACTOR_PAIRS` * 4: callers read small tensors)."""
    n = ggml_nbytes(t.ggml_type, t.shape)
    if n is None or n > MAX_FACTOR_PAIRS * 4:
        raise FormatError(f"{name}: tensor {t.name!r} is too large or of an unknown type to read")
    fd = open_regular(path, name)
    try:
        raw = os.pread(fd, n, h.data_offset + t.offset)
    except OSError as e:
        raise FormatError(f"{name}: cannot read tensor {t.name!r}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) != n:
        raise FormatError(f"{name}: tensor {t.name!r} is truncated ({len(raw)} of {n} bytes)")
    return raw


def factors_tensor(arch: object, scaling_type: object) -> str:
    """The tensor whose per-pair divisors llama.cpp applies past the original context, for a
    file of this architecture and rope.scaling.type (as read; anything not a string counts as
    unset): LongRoPE's rope_factors_long.weight where the builder creates the long/short pair
    (:func:`ropepatch.rope.effects.longrope_applies`), else rope_freqs.weight."""
    if isinstance(arch, str) and longrope_applies(arch, scaling_type if isinstance(scaling_type, str) else ""):
        return ROPE_FACTORS_LONG
    return ROPE_FREQS


def header_factors_tensor(kvs: Sequence[KV]) -> str:
    """:func:`factors_tensor` for a file with these metadata entries."""
    d = {kv.key: kv.value for kv in kvs}
    arch = d.get(K.GENERAL_ARCHITECTURE)
    return factors_tensor(arch, d.get(k(K.ROPE_SCALING_TYPE, arch)) if isinstance(arch, str) else None)


def rope_freqs_data(path: str, h: GGUFHeader, name: str, tensor: str = ROPE_FREQS) -> tuple[TensorInfo, bytes] | None:
    """``(info, bytes)`` of ``h``'s per-pair factor tensor ``tensor`` (:func:`factors_tensor`)
    when it is one-dimensional F32 of a readable size; None when the file has none (or one of
    another type/shape, which :func:`params_from_kvs` then treats as unreadable)."""
    t = find_tensor(h, tensor)
    if t is None or t.ggml_type != GGML_F32 or len(t.shape) != 1 or not 0 < t.shape[0] <= MAX_FACTOR_PAIRS:
        return None
    return t, read_tensor_bytes(path, h, t, name)
