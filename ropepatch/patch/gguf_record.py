"""The GGUF undo record (``ropepatch.original``) and the provenance around it.

The first patch of a file records the original on-disk value bytes (or absence) of every key a
patch may touch (:data:`keys.TOUCHED_KEYS`), their original positions (``at``), the original
data offset, any non-zero padding and the sha256 of the original header, as one line of JSON
(sorted keys, no spaces; format :data:`RECORD_FORMAT`)::

    {"at":{"llama.context_length":3},"data_offset":N,"format":1,"header_sha256":"...",
     "keys":{"llama.context_length":{"raw":"00100000","type":4},"llama.rope.freq_base":null,...},
     "padding":"..."}

``rope_freqs`` is present once a per-pair factor method (ntk-parts, factors) has touched the
factor tensor: ``{"raw": hex}`` the original data bytes of ``rope_freqs.weight`` (a llama3
file), ``{"raw": hex, "tensor": "rope_factors_long.weight"}`` those of LongRoPE's long factors
(a longrope file: changed in place, the short ones never), or ``{"data_length": N}`` when the
file had no rope_freqs.weight (ropepatch appended it; N = the original data section's length,
which revert truncates back to). Absent: the tensor is as it was.
``at`` is absent in records written before touched keys moved to the header's tail,
``padding`` when the original padding was all zeros, and ``link`` (the symlink target text of a
file that was a symlink, replaced by a patched regular file) unless the file was a link.
Next to it, ``ropepatch.options`` (a JSON object, written only for methods with options) holds
the method's options (ntk-parts' ``beta_fast``/``beta_slow``, factors' ``points``) and, when
factors replaced a file's own ``rope_freqs`` (--replace-scaling), ``"replace_scaling": true``:
:func:`read_options` checks it (finite numbers, bounded lists; one line when damaged; revert
does not need it). Records and files written before these fields load as before.
The record is input: :meth:`GgufUndoRecord.from_json` checks every field's type and range
(one-line FormatError naming what is damaged) and :func:`read_provenance` bounds every offset,
length and position by the file it came from, before anything is allocated or written;
:meth:`GgufUndoRecord.to_json` gives back exactly the text ropepatch writes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from ropepatch.errors import FormatError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import KV, GGUFHeader, kv_from_value_raw, make_kv, serialize_header
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.formats.gguf.tensors import (
    GGML_F32,
    MAX_FACTOR_PAIRS,
    ROPE_FACTORS_LONG,
    ROPE_FREQS,
    data_end,
    find_tensor,
    header_factors_tensor,
    overlapping,
)
from ropepatch.formats.jsontext import parse_json
from ropepatch.rope.methods import METHODS
from ropepatch.safeio.commit import PAGE
from ropepatch.safeio.paths import shown

RECORD_FORMAT = 1
_U64 = 1 << 64


def _damaged(path: str, what: str) -> FormatError:
    """A damaged-record error; the one remedy is the original file (revert cannot work)."""
    return FormatError(f"{shown(path)}: key {K.RP_ORIGINAL!r}: {what}; ropepatch cannot undo this "
                       f"patch: re-download or re-convert the original model")


def _not_a_record(path: str) -> FormatError:
    return _damaged(path, f"expected a ropepatch undo record (JSON, format {RECORD_FORMAT}), found "
                          f"something else; the provenance is damaged")


def _recorded_kv(key: str, entry, path: str) -> KV | None:
    """A recorded original entry (``{"type": int, "raw": hex}`` or null = absent) as a KV."""
    if entry is None:
        return None
    try:
        if not isinstance(entry, dict) or type(entry["type"]) is not int or not isinstance(entry["raw"], str):
            raise ValueError("field types")
        return kv_from_value_raw(key, ValueType(entry["type"]), bytes.fromhex(entry["raw"]))
    except (KeyError, ValueError, TypeError, FormatError):
        raise _damaged(path, f"the recorded original of {key!r} is damaged; the provenance cannot "
                             f"be used") from None


def _positions(d: dict, path: str) -> dict[str, int] | None:
    """The recorded ``at`` field: key -> original index; None when absent (legacy layout)."""
    if "at" not in d:
        return None
    at = d["at"]
    if not isinstance(at, dict) or not all(type(i) is int and i >= 0 for i in at.values()):
        raise _damaged(path, "the recorded key positions are damaged; the provenance cannot be used")
    return dict(at)


def _link(d: dict, path: str) -> str | None:
    """The recorded ``link``: a symlink target (a non-empty path without NUL); None: absent."""
    link = d.get("link")
    if link is None:
        return None
    if not isinstance(link, str) or not link or "\0" in link or len(link.encode("utf-8", "replace")) > 4096:
        raise _damaged(path, "the recorded symlink target is not a path; the provenance is damaged")
    return link


@dataclass(frozen=True)
class FreqsRecord:
    """The original state of ``rope_freqs.weight``: ``raw``, its data bytes; None when the file
    had no such tensor (then ``data_length`` is the original data section's length)."""

    raw: bytes | None
    data_length: int = 0
    tensor: str = ROPE_FREQS  # the tensor ``raw`` belongs to (an added one is always rope_freqs)

    def to_dict(self) -> dict:
        if self.raw is None:
            return {"data_length": self.data_length}
        return {"raw": self.raw.hex()} | ({} if self.tensor == ROPE_FREQS else {"tensor": self.tensor})


def _freqs(d: dict, path: str) -> FreqsRecord | None:
    """The recorded ``rope_freqs`` field (see the module docstring); None when absent."""
    if "rope_freqs" not in d:
        return None
    f = d["rope_freqs"]
    bad = _damaged(path, "the recorded original rope_freqs tensor is damaged; the provenance is damaged")
    if not isinstance(f, dict) or len(f) != 1 + ("tensor" in f):
        raise bad
    if "data_length" in f:
        n = f["data_length"]
        if type(n) is not int or not 0 <= n < _U64:
            raise bad
        return FreqsRecord(None, n)
    raw, tensor = f.get("raw"), f.get("tensor", ROPE_FREQS)
    if (not isinstance(raw, str) or not 0 < len(raw) <= MAX_FACTOR_PAIRS * 8 or len(raw) % 8
            or tensor not in (ROPE_FREQS, ROPE_FACTORS_LONG)):
        raise bad
    try:
        return FreqsRecord(bytes.fromhex(raw), tensor=tensor)
    except ValueError:
        raise bad from None


@dataclass(frozen=True)
class GgufUndoRecord:
    """The parsed ``ropepatch.original`` record of one GGUF file."""

    keys: dict[str, KV | None]  # every touched key: its original entry, or None (absent)
    data_offset: int  # the original data offset
    header_sha256: str  # sha256 of the original header bytes [0, data_offset)
    padding: str | None = None  # hex of the original non-zero padding; None: zeros (or legacy)
    at: dict[str, int] | None = None  # original index of each touched key; None: legacy layout

    link: str | None = None  # symlink target text of a file that was a symlink; None: was not
    rope_freqs: FreqsRecord | None = None  # original rope_freqs state; None: never touched
    @classmethod
    def from_json(cls, text, path: str) -> GgufUndoRecord:
        """Parse and check a record; FormatError (one line, starting with ``path``) when any
        field has the wrong type or range."""
        try:
            d = parse_json(text, "<record>", "JSON")
            fmt, keys, off, sha = d["format"], d["keys"], d["data_offset"], d["header_sha256"]
            padding = d.get("padding", "")
        except (FormatError, KeyError, TypeError, AttributeError):
            raise _not_a_record(path) from None
        if not (type(fmt) is int and fmt == RECORD_FORMAT and isinstance(keys, dict)
                and type(off) is int and 0 <= off < _U64 and isinstance(sha, str) and len(sha) == 64
                and all(c in "0123456789abcdef" for c in sha) and isinstance(padding, str)):
            raise _not_a_record(path)
        padding = d.get("padding")  # None: absent (all zeros)
        recorded = {key: _recorded_kv(key, entry, path) for key, entry in keys.items()}
        at = _positions(d, path)
        try:
            if padding is not None:
                bytes.fromhex(padding)
        except ValueError:
            raise _damaged(path, "the recorded padding is not hex; the provenance is damaged") from None
        return cls(recorded, off, sha, padding, at, _link(d, path), _freqs(d, path))

    def to_json(self) -> str:
        """The record as ropepatch writes it (before the page-alignment spaces)."""
        d: dict[str, object] = {
            "format": RECORD_FORMAT,
            "keys": {key: None if kv is None else {"type": int(kv.type), "raw": kv.value_raw.hex()}
                     for key, kv in self.keys.items()},
            "data_offset": self.data_offset,
            "header_sha256": self.header_sha256,
        }
        if self.padding is not None:
            d["padding"] = self.padding
        if self.at is not None:
            d["at"] = self.at
        if self.link is not None:
            d["link"] = self.link
        if self.rope_freqs is not None:
            d["rope_freqs"] = self.rope_freqs.to_dict()
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def original_padding(self, header_len: int) -> bytes:
        """The original bytes between the header and the data (zeros unless recorded)."""
        return bytes.fromhex(self.padding or "") or bytes(max(0, self.data_offset - header_len))


@dataclass(frozen=True)
class Provenance:
    """What ropepatch recorded in a file it patched."""

    version: str
    method: str
    ctx: int
    alpha: float
    record: GgufUndoRecord  # the undo record (ropepatch.original)
    options: dict = field(default_factory=dict)  # the method's options (ropepatch.options); {}: none
    replace_scaling: bool = False  # the plan replaced the file's own rope_freqs (--replace-scaling)


def _finite(v) -> float | int:
    """A provenance number as written, or 0 when the key is absent or not a finite number (the
    informational keys may be damaged without making the undo record unusable)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return v if ok else 0


_MAX_OPTIONS_TEXT = 1 << 16
REPLACED = "replace_scaling"  # in ropepatch.options: the plan used --replace-scaling (factors replaced)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_options(h: GGUFHeader) -> tuple[dict, bool]:
    """The recorded method options (``ropepatch.options``: a JSON object of names to a finite
    number, a list of up to 65536 finite numbers, or null) and whether the plan replaced the
    file's factors (:func:`options_text`); ({}, False) when absent. FormatError (one line) when
    damaged: a plan rebuilt without them would not be the one written."""
    kv = h.entry(K.RP_OPTIONS)
    if kv is None:
        return {}, False
    bad = FormatError(f"{shown(h.path)}: key {K.RP_OPTIONS!r}: expected the method options ropepatch "
                      f"wrote (a JSON object of numbers), found something else; the provenance is "
                      f"damaged ('ropepatch revert' still restores the original)")
    if kv.type != ValueType.STRING or len(kv.value) > _MAX_OPTIONS_TEXT:
        raise bad
    try:
        d = parse_json(kv.value, "<options>", "JSON")
    except FormatError:
        raise bad from None
    replaced = isinstance(d, dict) and d.pop(REPLACED, False)
    ok = type(replaced) is bool and isinstance(d, dict) and len(d) <= 16 and all(
        isinstance(name, str) and (v is None or _number(v) or (
            isinstance(v, list) and len(v) <= MAX_FACTOR_PAIRS and all(_number(x) for x in v)))
        for name, v in d.items())
    if not ok:
        raise bad
    return {name: tuple(float(x) for x in v) if isinstance(v, list) else v for name, v in d.items()}, replaced


def options_text(options, replaced: bool = False) -> str:
    """``ropepatch.options``' value for a plan's options ((name, value) pairs); ``replaced``:
    the factors replaced a file's own rope_freqs (--replace-scaling) instead of multiplying
    them, recorded as ``"replace_scaling": true`` (the one case a rebuilt plan could not tell)."""
    d: dict = {name: list(v) if isinstance(v, tuple) else v for name, v in options}
    if replaced:
        d[REPLACED] = True
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def read_provenance(h: GGUFHeader, options: bool = True) -> Provenance | None:
    """The provenance of a file ropepatch patched; None when it carries no undo record.
    ``options=False`` (revert, which needs only the undo record): skip the method options."""
    raw = h.get(K.RP_ORIGINAL)
    if raw is None:
        return None
    options, replaced = read_options(h) if options else ({}, False)
    return Provenance(
        version=str(h.get(K.RP_VERSION, "?")),
        method=str(h.get(K.RP_METHOD, "?")),
        ctx=int(_finite(h.get(K.RP_CTX))),
        alpha=float(_finite(h.get(K.RP_ALPHA))),
        record=_bounded(GgufUndoRecord.from_json(raw, h.path), h),
        options=options,
        replace_scaling=replaced,
    )


def _bounded(rec: GgufUndoRecord, h: GGUFHeader) -> GgufUndoRecord:
    """``rec`` once every offset, length, key and position in it fits the file ``h`` it came
    from (checked before anything is allocated from it): a first patch only grows the header,
    the padding is shorter than the alignment, the recorded keys are the touched keys of the
    file's architecture, and the positions index the original entries."""
    if rec.data_offset > h.data_offset:
        raise _damaged(h.path, f"recorded original data offset {rec.data_offset} is past the current "
                               f"one ({h.data_offset}); the provenance is damaged")
    if rec.padding is not None and len(rec.padding) // 2 >= max(h.alignment, 1):
        raise _damaged(h.path, f"the recorded padding is {len(rec.padding) // 2} bytes, not less than "
                               f"the alignment ({h.alignment}); the provenance is damaged")
    arch = h.get(K.GENERAL_ARCHITECTURE)
    allowed = {k(t, arch) for t in K.TOUCHED_KEYS + K.LAZY_TOUCHED_KEYS} if isinstance(arch, str) else set()
    if isinstance(arch, str) and not set(rec.keys) <= allowed:
        odd = sorted(set(rec.keys) - allowed)[0]
        raise _damaged(h.path, f"records key {odd!r}, which no patch of a {arch!r} model touches; "
                               f"the provenance is damaged")
    if rec.at is not None and not (set(rec.at) <= set(rec.keys)
                                   and all(i <= len(h.kvs) for i in rec.at.values())):
        raise _damaged(h.path, "the recorded key positions are damaged; the provenance cannot be used")
    if rec.rope_freqs is not None and not _freqs_fit(rec.rope_freqs, h):
        raise _damaged(h.path, "the recorded original rope_freqs tensor does not fit the file's; the "
                               "provenance is damaged")
    method = h.get(K.RP_METHOD)
    if _factor_method(method) and (rec.rope_freqs is None or find_tensor(h, rec.rope_freqs.tensor) is None):
        lost = ("its undo record holds no original rope_freqs state" if rec.rope_freqs is None
                else f"it has no {rec.rope_freqs.tensor}")
        raise _damaged(h.path, f"the file says it was patched with per-pair factors ({method}) but {lost}; "
                               f"the provenance is damaged")
    return rec


def _freqs_fit(f: FreqsRecord, h: GGUFHeader) -> bool:
    """Whether the file can hold what ``f`` says: the same-size F32 tensor, sharing no bytes,
    for recorded bytes; for an added one, an original data length within the data that keeps
    every other tensor's bytes (revert truncates to it), and the tensor, if present, the last
    one (where a patch appends it), F32, past that length."""
    t = find_tensor(h, f.tensor)
    if f.raw is not None:  # and the tensor is the one this file's factors are in
        return (t is not None and t.ggml_type == GGML_F32 and t.shape == (len(f.raw) // 4,)
                and overlapping(h, t) is None and f.tensor == header_factors_tensor(h.kvs))
    if not data_end([x for x in h.tensors if x is not t]) <= f.data_length <= h.data_length:
        return False
    return t is None or (h.tensors[-1] is t and t.ggml_type == GGML_F32 and len(t.shape) == 1
                         and t.offset >= f.data_length)


def _factor_method(name) -> bool:
    return isinstance(name, str) and name in METHODS and METHODS[name].writes_factors


def original_kvs(h: GGUFHeader, prov: Provenance | None) -> list[KV]:
    """The metadata entries as they were before ropepatch touched the file."""
    if prov is None:
        return list(h.kvs)
    recorded = prov.record.keys
    out: list[KV] = []
    for kv in h.kvs:
        if kv.key.startswith(K.RP_PREFIX):
            continue
        if kv.key in recorded:
            kv = recorded[kv.key]
            if kv is None:
                continue  # added by ropepatch
        out.append(kv)
    at = prov.record.at
    if at is None:  # written before touched keys were moved to the tail: they never moved
        return out
    # the first patch moved the touched keys to the header's tail: put them back where they were
    moved = sorted(((at[kv.key], kv) for kv in out if kv.key in at), key=lambda p: p[0])
    out = [kv for kv in out if kv.key not in at]
    for i, kv in moved:
        out.insert(i, kv)
    return out


def header_sha(h: GGUFHeader) -> str:
    """sha256 of ``h``'s header bytes as serialised from its entries, padding included."""
    body = serialize_header(h.version, h.kvs, h.tensor_info_raw, len(h.tensors))
    return hashlib.sha256(body + h.padding).hexdigest()


def new_record(h: GGUFHeader, arch: str) -> GgufUndoRecord:
    """The undo record of a file ropepatch has not patched yet (``at`` not filled in)."""
    present = {kv.key: kv for kv in h.kvs}
    return GgufUndoRecord(
        keys={k(t, arch): present.get(k(t, arch)) for t in K.TOUCHED_KEYS},
        data_offset=h.data_offset,
        header_sha256=header_sha(h),
        padding=h.padding.hex() if any(h.padding) else None,
    )


def record_kv(record: GgufUndoRecord, offset: int) -> KV:
    """The ``ropepatch.original`` entry for an undo record placed at header ``offset``, its JSON
    padded with spaces so the entry ends on a page boundary."""
    text = record.to_json()
    end = offset + len(make_kv(K.RP_ORIGINAL, ValueType.STRING, text).raw)
    return make_kv(K.RP_ORIGINAL, ValueType.STRING, text + " " * (-end % PAGE))
