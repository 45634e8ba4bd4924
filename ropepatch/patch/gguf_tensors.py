"""The per-pair factor tensor of a GGUF patch or revert -- ``rope_freqs.weight``, or LongRoPE's
``rope_factors_long.weight`` where that pair applies (it is the file's own: only its bytes ever
change; the short factors never do) -- its original state, and where the tensor infos and data
bytes of the file to write come from.

A per-pair factor method (ntk-parts, factors) wants the tensor to hold the plan's divisors;
every other method, and revert, wants it back in its original state. The original state is
the file's own until a factor patch first touches the tensor; from then on the undo record
(:class:`gguf_record.FreqsRecord`) holds it: the original bytes (llama3-style files), or
"absent" plus the original data length.

* originally absent, wanted: the tensor info is appended after the others and the bytes after
  the last tensor's padded end (llama.cpp's consecutive-offset rule) -- a rewrite; once there,
  a new set of divisors is a change of its bytes only (one run, in place);
* originally absent, not wanted: the info is dropped and the data truncated back -- a rewrite;
* originally present: the info stays, the bytes change in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from ropepatch.errors import FormatError, UnsupportedModelError
from ropepatch.formats.gguf.header import GGUFHeader, TensorInfo
from ropepatch.formats.gguf.tensors import (
    GGML_F32,
    ROPE_FREQS,
    data_size,
    encode_tensor_info,
    factor_bytes,
    factors_tensor,
    find_tensor,
    overlapping,
    pad_to,
    read_tensor_bytes,
    rope_freqs_problem,
)
from ropepatch.patch.gguf_record import FreqsRecord, Provenance
from ropepatch.rope.methods import Plan, get_method
from ropepatch.safeio.paths import shown


@dataclass(frozen=True)
class TensorLayout:
    """The tensor part of the file to write: ``info_raw`` (``n_tensors`` infos), then behind
    the new header the first ``keep`` bytes of the current data, then ``trailing``; ``span``:
    (offset in the data, current bytes, new bytes) of an in-place change of existing bytes."""

    info_raw: bytes
    n_tensors: int
    keep: int
    trailing: bytes = b""
    span: tuple[int, bytes, bytes] | None = None
    change: str = ""  # "", "added", "changed", "removed": what happens to the factor tensor
    n_bytes: int = 0  # the tensor's size when added or changed
    tensor: str = ROPE_FREQS  # its name (rope_factors_long.weight: LongRoPE's, changed in place)

    def data_unchanged(self, h: GGUFHeader) -> bool:
        return (self.keep == h.data_length and not self.trailing
                and (self.span is None or self.span[1] == self.span[2]))

    def describe(self) -> str:
        """One phrase for the user ("" when the tensor does not change)."""
        if not self.change:
            return ""
        if self.change == "removed":
            return f"{self.tensor} removed (the original file has none)"
        verb = {"added": "added", "changed": "data changed"}[self.change]
        return f"{self.tensor} {verb} ({self.n_bytes // 4} F32 factors, {self.n_bytes} bytes)"


def unchanged(h: GGUFHeader) -> TensorLayout:
    return TensorLayout(h.tensor_info_raw, len(h.tensors), h.data_length)


def original_freqs(path: str, h: GGUFHeader, prov: Provenance | None, plan: Plan | None) -> FreqsRecord | None:
    """The original state of the factor tensor (rope_freqs.weight, or LongRoPE's
    rope_factors_long.weight where that pair applies): the record's, else (never touched) the
    file's own, read only when ``plan`` writes factors (None otherwise: nothing to restore or
    record). Refuses (one line) a factor plan on a file whose tensor is not F32 of rope_dim/2
    values, or shares bytes with another tensor."""
    if prov is not None and prov.record.rope_freqs is not None:
        return prov.record.rope_freqs
    if plan is None or not get_method(plan.method).writes_factors:
        return None
    name = factors_tensor(plan.original.arch, plan.original.scaling_type.value)
    t = find_tensor(h, name)
    if t is None and name == ROPE_FREQS:
        return FreqsRecord(None, h.data_length)
    problem = "is missing" if t is None else rope_freqs_problem(t, plan.original.rope_dim)
    if not problem and (other := overlapping(h, t)) is not None:
        problem = f"shares data bytes with tensor {other!r} (llama.cpp refuses such a file)"
    if problem:
        raise UnsupportedModelError(
            f"{shown(path)}: its {name} {problem}; ropepatch writes per-pair factors as F32 "
            f"only and cannot compose with or replace this tensor; use another --method"
        )
    return FreqsRecord(read_tensor_bytes(path, h, t, shown(path)), tensor=name)


def wanted_bytes(plan: Plan, orig: FreqsRecord) -> bytes | None:
    """The rope_freqs bytes the plan's file carries (None: no tensor)."""
    if get_method(plan.method).writes_factors:
        return factor_bytes(plan.target.freq_factors)
    return orig.raw


def freqs_layout(path: str, h: GGUFHeader, orig: FreqsRecord | None, want: bytes | None) -> TensorLayout:
    """Where the tensor infos and data of the file holding ``want`` (None: no rope_freqs)
    come from, given the current file ``h`` and the original state ``orig`` (None: the tensor
    is original and stays so)."""
    if orig is None:
        return unchanged(h)
    t = find_tensor(h, orig.tensor)
    if orig.raw is not None:  # the tensor is the original's: only its bytes change
        if want is None or t is None or len(want) != len(orig.raw):
            raise FormatError(f"{shown(path)}: {orig.tensor} cannot be restored in place; the "
                              f"provenance is damaged")
        cur = read_tensor_bytes(path, h, t, shown(path))
        return TensorLayout(h.tensor_info_raw, len(h.tensors), h.data_length, span=(t.offset, cur, want),
                            change="changed" if cur != want else "", n_bytes=len(want), tensor=orig.tensor)
    base = [x for x in h.tensors if x is not t]
    base_raw = h.tensor_info_raw
    if t is not None:  # appended by ropepatch: the last info (checked when the record was read)
        tail = encode_tensor_info(t)
        if not base_raw.endswith(tail):
            raise FormatError(f"{shown(path)}: the tensor infos do not end with {ROPE_FREQS}; the "
                              f"provenance is damaged")
        base_raw = base_raw[: -len(tail)]
    if want is None:
        return TensorLayout(base_raw, len(base), orig.data_length, change="removed" if t is not None else "")
    return _appended(path, h, orig, base, base_raw, t, want)


def _appended(path: str, h: GGUFHeader, orig: FreqsRecord, base: list[TensorInfo], base_raw: bytes,
              t: TensorInfo | None, want: bytes) -> TensorLayout:
    """The layout with ``want`` as an appended rope_freqs (in place when it is there already)."""
    offset = data_size(base, h.alignment)
    if offset is None or orig.data_length > offset:
        why = ("a tensor of a type ropepatch does not know" if offset is None
               else f"{orig.data_length - offset} bytes after its last tensor")
        raise UnsupportedModelError(f"{shown(path)}: has {why}, so ropepatch cannot place {ROPE_FREQS} "
                                    f"after it; use a method that writes no factors")
    info = TensorInfo(ROPE_FREQS, (len(want) // 4,), GGML_F32, offset)
    trailing = bytes(offset - orig.data_length) + want + bytes(pad_to(len(want), h.alignment) - len(want))
    if t == info and h.data_length == orig.data_length + len(trailing):  # already there: its bytes
        cur = read_tensor_bytes(path, h, t, shown(path))
        return TensorLayout(h.tensor_info_raw, len(h.tensors), h.data_length, span=(offset, cur, want),
                            change="changed" if cur != want else "", n_bytes=len(want))
    return TensorLayout(base_raw + encode_tensor_info(info), len(base) + 1, orig.data_length, trailing,
                        change="added", n_bytes=len(want))
