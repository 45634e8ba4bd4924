"""The GGUF undo record (``ropepatch.original``) and the provenance around it.

The first patch of a file records the original on-disk value bytes (or absence) of every key a
patch may touch (:data:`keys.TOUCHED_KEYS`), their original positions (``at``), the original
data offset, any non-zero padding and the sha256 of the original header, as one line of JSON
(sorted keys, no spaces; format :data:`RECORD_FORMAT`)::

    {"at":{"llama.context_length":3},"data_offset":N,"format":1,"header_sha256":"...",
     "keys":{"llama.context_length":{"raw":"00100000","type":4},"llama.rope.freq_base":null,...},
     "padding":"..."}

``at`` is absent in records written before touched keys moved to the header's tail,
``padding`` when the original padding was all zeros, and ``link`` (the symlink target text of a
file that was a symlink, replaced by a patched regular file) unless the file was a link.
The record is input: :meth:`GgufUndoRecord.from_json` checks every field's type and range
(one-line FormatError naming what is damaged) and :func:`read_provenance` bounds every offset,
length and position by the file it came from, before anything is allocated or written;
:meth:`GgufUndoRecord.to_json` gives back exactly the text ropepatch writes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from ropepatch.errors import FormatError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import KV, GGUFHeader, kv_from_value_raw, make_kv, serialize_header
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.formats.jsontext import parse_json
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
class GgufUndoRecord:
    """The parsed ``ropepatch.original`` record of one GGUF file."""

    keys: dict[str, KV | None]  # every touched key: its original entry, or None (absent)
    data_offset: int  # the original data offset
    header_sha256: str  # sha256 of the original header bytes [0, data_offset)
    padding: str | None = None  # hex of the original non-zero padding; None: zeros (or legacy)
    at: dict[str, int] | None = None  # original index of each touched key; None: legacy layout

    link: str | None = None  # symlink target text of a file that was a symlink; None: was not

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
        return cls(recorded, off, sha, padding, at, _link(d, path))

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


def _finite(v) -> float | int:
    """A provenance number as written, or 0 when the key is absent or not a finite number (the
    informational keys may be damaged without making the undo record unusable)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return v if ok else 0


def read_provenance(h: GGUFHeader) -> Provenance | None:
    """The provenance of a file ropepatch patched; None when it carries no undo record."""
    raw = h.get(K.RP_ORIGINAL)
    if raw is None:
        return None
    return Provenance(
        version=str(h.get(K.RP_VERSION, "?")),
        method=str(h.get(K.RP_METHOD, "?")),
        ctx=int(_finite(h.get(K.RP_CTX))),
        alpha=float(_finite(h.get(K.RP_ALPHA))),
        record=_bounded(GgufUndoRecord.from_json(raw, h.path), h),
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
    if isinstance(arch, str) and not set(rec.keys) <= {k(t, arch) for t in K.TOUCHED_KEYS}:
        odd = sorted(set(rec.keys) - {k(t, arch) for t in K.TOUCHED_KEYS})[0]
        raise _damaged(h.path, f"records key {odd!r}, which no patch of a {arch!r} model touches; "
                               f"the provenance is damaged")
    if rec.at is not None and not (set(rec.at) <= set(rec.keys)
                                   and all(i <= len(h.kvs) for i in rec.at.values())):
        raise _damaged(h.path, "the recorded key positions are damaged; the provenance cannot be used")
    return rec


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
