"""Per-pair frequency factors in ``ropepatch validate``: what the file holds, what is expected,
and how two sets compare.

The factors are the divisors ``ff_i`` of ``rope_freqs.weight`` (F32, rope_dim/2 values; LongRoPE's
``rope_factors_long.weight`` where that pair applies, the one the runtime uses past the original
context -- validate probes there): the
ROPE op computes ``theta_i = p * b^(-2i/d) / ff_i`` (ggml_rope_cache_init). They are compared
exactly as float32, the type the tensor stores and the kernel divides by.

Expected factors (:func:`factors_of`): ``()`` = none (the ROPE op's src[2] must be NULL), a
tuple = those values, ``None`` = the file carries factor tensors ropepatch does not read
(e.g. LongRoPE factors of another type or shape): the checks then use the runtime's own and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ropepatch.formats.gguf.header import GGUFHeader
from ropepatch.formats.gguf.tensors import header_factors_tensor
from ropepatch.rope.params import RopeParams

_GGML_F32 = 0


def factor_tensor(header: GGUFHeader) -> str:
    """The tensor whose divisors the runtime applies past the original context: rope_freqs.weight
    (llama family), or LongRoPE's rope_factors_long.weight where that pair applies."""
    return header_factors_tensor(header.kvs)


def file_factors(path: str, header: GGUFHeader) -> tuple[tuple[float, ...] | None, str]:
    """(the values of the file's factor tensor (:func:`factor_tensor`), "") read straight from
    the tensor data (independently of the patch layer's reader); (None, "") when the file has
    no such tensor; (None, why) when it cannot be read as rope_dim/2 float32 values."""
    name = factor_tensor(header)
    info = next((t for t in header.tensors if t.name == name), None)
    if info is None:
        return None, ""
    if info.ggml_type != _GGML_F32:
        return None, f"{name} has ggml type {info.ggml_type}, the ROPE op needs F32 (type 0)"
    n = 1
    for d in info.shape:
        n *= int(d)
    with open(path, "rb") as f:
        f.seek(header.data_offset + info.offset)
        raw = f.read(4 * n)
    if len(raw) != 4 * n:
        return None, f"{name}: the file ends inside its data ({len(raw)} of {4 * n} bytes)"
    return tuple(float(v) for v in np.frombuffer(raw, dtype="<f4")), ""


def factors_of(params: RopeParams) -> tuple[float, ...] | None:
    """The divisors ``params`` asks the runtime to apply: () none, the values, or None when the
    file has factor tensors whose values ropepatch does not read."""
    if not params.has_freq_factors:
        return ()
    return tuple(float(v) for v in params.freq_factors) or None


def as_array(factors: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    """Factors as a float32 array for the references; None (no divisors) for () or None."""
    if factors is None or len(factors) == 0:
        return None
    return np.asarray(factors, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class FactorComparison:
    """``got`` vs ``want`` (each () for none): equal as float32, the max relative difference
    |got - want| / |want| (inf when one side has none or the counts differ), the first pair
    where they differ (-1 if none) and a one-line description of the difference ("" if equal)."""

    same: bool
    max_rel: float
    index: int
    problem: str


def fmt_factors(values: Sequence[float] | None, most: int = 8) -> str:
    """``[1, 1, 1.5, ...] (32 values)``, ``none`` for ()."""
    if values is None:
        return "unknown"
    if len(values) == 0:
        return "none"
    shown = ", ".join(f"{float(v):.9g}" for v in list(values)[:most])
    return f"[{shown}{', ...' if len(values) > most else ''}] ({len(values)} values)"


def compare_factors(got: Sequence[float] | None, want: Sequence[float] | None, got_name: str = "runtime",
                    want_name: str = "expected") -> FactorComparison:
    """Compare two sets of factors exactly as float32 (None and () both mean none)."""
    a = np.asarray(got if got is not None else (), dtype=np.float32).reshape(-1)
    b = np.asarray(want if want is not None else (), dtype=np.float32).reshape(-1)
    if a.size == 0 and b.size == 0:
        return FactorComparison(True, 0.0, -1, "")
    if a.size != b.size:
        what = {0: "none"}
        return FactorComparison(False, float("inf"), -1,
                                f"{got_name} has {what.get(a.size, f'{a.size} factors')}, {want_name} "
                                f"{what.get(b.size, f'{b.size} factors')}")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rel = diff / np.maximum(np.abs(b.astype(np.float64)), np.finfo(np.float32).tiny)
    bad = np.flatnonzero(a != b)
    if bad.size == 0:
        return FactorComparison(True, float(rel.max()), -1, "")
    i = int(bad[0])
    return FactorComparison(False, float(rel.max()), i,
                            f"{bad.size} of {a.size} factors differ (pair {i}: {got_name} {float(a[i]):.9g}, "
                            f"{want_name} {float(b[i]):.9g}; max rel diff {float(rel.max()):.3g})")
