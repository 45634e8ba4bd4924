"""Pure-Python safetensors header codec (no torch, no safetensors import; no file writes).

File layout: ``u64 LE N`` | ``N`` bytes of UTF-8 JSON (starts with ``{``, may end with padding
spaces) | tensor data. The JSON object maps tensor names to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the data start) plus an optional
``"__metadata__"`` string->string map.

Public API::

    read_header(path: str, where=None) -> SafetensorsHeader  # validated, FormatError otherwise
    parse_header(path, raw, file_size, where=None) -> SafetensorsHeader  # the same, from bytes
    with_metadata_text(hdr, value_text: str | None) -> str  # header JSON with __metadata__ replaced
    metadata_json(meta: Mapping[str, str]) -> str           # compact JSON for a metadata map
    pad_header(json_text, current_length, slack=...) -> bytes  # the N' header bytes to write
    framed(header: bytes) -> bytes                         # u64 length prefix + header

Editing is surgical: only the text of the ``__metadata__`` value changes (or the member is
inserted right after the opening ``{`` when the file had none); every tensor entry, the entry
order, the spacing and "format" are kept byte for byte, so an exact undo record is just the old
metadata text and the old header length. A new header that fits in the old length is padded with
spaces to that length; one that does not grows by whole pages, leaving
:data:`~ropepatch.formats.hf.keys.ST_HEADER_SLACK` spare bytes so later edits fit in place.
Writing is :func:`ropepatch.safeio.commit.commit_header`'s job (called from
:mod:`ropepatch.patch.hf_write`).
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ropepatch.errors import FormatError
from ropepatch.formats.hf.keys import ST_HEADER_SLACK, ST_MAX_HEADER, ST_METADATA

# element size in bits for every dtype the safetensors format defines
DTYPE_BITS: Mapping[str, int] = MappingProxyType({
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
})

_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry (offsets relative to the data section)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header.

    ``text`` is the whole N-byte header region decoded (JSON followed by padding); ``json_end``
    is the index just past the closing brace, so ``text[json_end:]`` is the padding.
    ``metadata_span`` is the ``(start, end)`` of the ``__metadata__`` VALUE inside ``text`` and
    ``metadata_member_start`` the index of its key's opening quote (both None when absent).
    """

    path: str
    file_size: int
    header_length: int
    text: str
    json_end: int
    metadata: Mapping[str, str] | None
    metadata_span: tuple[int, int] | None
    metadata_member_start: int | None
    tensors: tuple[TensorEntry, ...]

    @property
    def data_offset(self) -> int:
        """Absolute file offset of the tensor data."""
        return 8 + self.header_length

    @property
    def data_length(self) -> int:
        return self.file_size - self.data_offset

    @property
    def json_text(self) -> str:
        """The header JSON without its trailing padding."""
        return self.text[: self.json_end]

    @property
    def padding(self) -> str:
        return self.text[self.json_end :]

    @property
    def metadata_text(self) -> str | None:
        """The exact on-disk text of the ``__metadata__`` value (None when absent)."""
        if self.metadata_span is None:
            return None
        a, b = self.metadata_span
        return self.text[a:b]

    @property
    def header_bytes(self) -> bytes:
        """The N header bytes exactly as on disk (without the u64 length prefix)."""
        return self.text.encode("utf-8")


def _bad(path: str, what: str) -> FormatError:
    return FormatError(f"{path}: not a valid safetensors file: {what}")


def _no_dupes(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        d: dict = {}
        for k, v in pairs:
            if k in d:
                raise _bad(path, f"duplicate key {_short(k)} in the header JSON; re-save the file")
            d[k] = v
        return d

    return hook


def _scan_object(path: str, text: str) -> tuple[list[tuple[str, int, int, int, Any]], int]:
    """Members of the top-level object as (key, key_start, value_start, value_end, value)."""
    decoder = json.JSONDecoder(object_pairs_hook=_no_dupes(path))
    members: list[tuple[str, int, int, int, Any]] = []
    seen: set[str] = set()
    try:
        i = 1  # text[0] == "{" checked by the caller
        i = _WS.match(text, i).end()
        if text.startswith("}", i):
            return members, i + 1
        while True:
            if not text.startswith('"', i):
                raise ValueError(f"expected a quoted key at header byte {i}")
            key, j = json.decoder.scanstring(text, i + 1)
            j = _WS.match(text, j).end()
            if not text.startswith(":", j):
                raise ValueError(f"expected ':' at header byte {j}")
            v0 = _WS.match(text, j + 1).end()
            value, v1 = decoder.raw_decode(text, v0)
            if key in seen:
                raise _bad(path, f"duplicate key {_short(key)} in the header JSON; re-save the file")
            seen.add(key)
            members.append((key, i, v0, v1, value))
            i = _WS.match(text, v1).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
                continue
            if text.startswith("}", i):
                return members, i + 1
            raise ValueError(f"expected ',' or '}}' at header byte {i}")
    except ValueError as e:
        raise _bad(path, f"malformed header JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise _bad(path, "header JSON is nested too deeply; the file is corrupt or not safetensors") from None


def _read_raw(path: str, where: str) -> tuple[int, int, bytes]:
    """``(file size, N, the N header bytes)``, checked against the size limits before anything
    is allocated. Opened non-blocking, and a FIFO, device or directory is refused before a read
    (the caller checks the path first; this catches one swapped in since)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FormatError(f"{where}: cannot read: {_reason(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _bad(where, "not a regular file (a FIFO, device or directory?)")
        size = st.st_size
        prefix = os.pread(fd, 8, 0)
        if len(prefix) < 8:
            raise _bad(where, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > ST_MAX_HEADER:
            raise _bad(
                where,
                f"header length {n} exceeds the {ST_MAX_HEADER}-byte limit; the file is corrupt "
                f"or not safetensors",
            )
        if 8 + n > size:
            raise _bad(
                where,
                f"header length {n} runs past the end of the {size}-byte file; the file is "
                f"truncated or not safetensors",
            )
        chunks, got = [], 0
        while got < n:
            chunk = os.pread(fd, min(n - got, 1 << 24), 8 + got)
            if not chunk:
                raise _bad(where, "file shrank while being read")
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise FormatError(f"{where}: cannot read: {_reason(e)}") from None
    finally:
        os.close(fd)
    return size, n, b"".join(chunks)


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).replace("\n", " ")


def _metadata_value(path: str, value: Any) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(path, f"__metadata__ must be an object of strings, found {type(value).__name__}")
    for mk, mv in value.items():
        if not isinstance(mv, str):
            raise _bad(
                path,
                f"__metadata__ value for {_short(mk)} must be a string, found "
                f"{json.dumps(mv)[:40]}; re-save the file with string metadata",
            )
        for s in (mk, mv):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(path, f"__metadata__ holds a string with an unpaired surrogate ({_short(s)}); "
                                 f"re-save the file with valid text") from None
    return MappingProxyType(dict(value))


def _check_coverage(path: str, tensors: list[TensorEntry], data_length: int) -> None:
    """Contiguous, no holes, exactly covering the data section (what safetensors checks)."""
    pos = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != pos:
            what = "overlaps the previous tensor" if t.begin < pos else f"leaves a hole at {pos}"
            raise _bad(path, f"tensor {_short(t.name)} starts at data offset {t.begin} and {what}")
        pos = t.end
    if pos != data_length:
        raise _bad(
            path,
            f"tensors cover {pos} data bytes but the file holds {data_length}; the file is "
            f"truncated or has trailing bytes",
        )


def read_header(path: str, where: str | None = None) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path`` (``where``: the name
    messages use, e.g. the path escaped for one line; default ``path``)."""
    where = path if where is None else where
    size, _, raw = _read_raw(path, where)
    return parse_header(path, raw, size, where)


def parse_header(path: str, raw: bytes, file_size: int, where: str | None = None) -> SafetensorsHeader:
    """Validate ``raw``, the N header bytes of a ``file_size``-byte safetensors file at ``path``
    (read from disk, or rebuilt before writing it: the check that what is written parses)."""
    where = path if where is None else where
    n = len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(where, f"header is not UTF-8 (byte {e.start})") from None
    if not text.startswith("{"):
        raise _bad(where, f"header must start with '{{', found {text[:1]!r}")
    members, json_end = _scan_object(where, text)
    rest = text[json_end:]
    if rest.strip(" \t\n\r"):
        raise _bad(where, f"unexpected bytes after the header JSON at header byte {json_end}")

    metadata: Mapping[str, str] | None = None
    span: tuple[int, int] | None = None
    member_start: int | None = None
    tensors: list[TensorEntry] = []
    for key, k0, v0, v1, value in members:
        if key == ST_METADATA:
            span, member_start = (v0, v1), k0
            metadata = _metadata_value(where, value)
        else:
            tensors.append(_tensor_entry(where, key, value))
    _check_coverage(where, tensors, file_size - 8 - n)
    return SafetensorsHeader(
        path, file_size, n, text, json_end, metadata, span, member_start, tuple(tensors)
    )


def _short(v: Any) -> str:
    """``v`` for a one-line message: its repr (control characters escaped), cut at 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _tensor_entry(path: str, name: str, value: Any) -> TensorEntry:
    shown = _short(name)
    if not isinstance(value, dict):
        raise _bad(path, f"entry {shown} must be an object, found {type(value).__name__}")
    dtype = value.get("dtype")
    shape = value.get("shape")
    offs = value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _bad(path, f"tensor {shown} has unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(path, f"tensor {shown} shape must be a list of non-negative integers, found {_short(shape)}")
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
        or offs[0] > offs[1]
    ):
        raise _bad(path, f"tensor {shown} data_offsets must be [begin, end] with begin <= end, found {_short(offs)}")
    span = offs[1] - offs[0]
    count = 0 if 0 in shape else 1
    for d in shape if count else ():  # stop once the product outgrows the span (no huge integers)
        count *= d
        if count > 8 * span + 8:
            break
    bits = count * DTYPE_BITS[dtype]
    if bits % 8:
        raise _bad(path, f"tensor {shown}: {count} x {dtype} is not a whole number of bytes")
    if span != bits // 8:
        raise _bad(
            path,
            f"tensor {shown} ({dtype} {_short(shape)}) needs {'more than ' if count > 8 * span + 8 else ''}"
            f"{bits // 8} bytes but data_offsets span {span}",
        )
    return TensorEntry(name, dtype, tuple(shape), offs[0], offs[1])


def metadata_json(meta: Mapping[str, str]) -> str:
    """Compact JSON for a metadata map (the spelling the safetensors writer uses)."""
    return json.dumps(dict(meta), separators=(",", ":"), ensure_ascii=False)


def with_metadata_text(hdr: SafetensorsHeader, value_text: str | None) -> str:
    """The header JSON (no padding) with the ``__metadata__`` value replaced by ``value_text``.

    When the header has no ``__metadata__``, the member is inserted right after the opening
    brace. ``value_text=None`` removes a member that was inserted that way (the undo of the
    insertion; FormatError when the member is anywhere else).
    """
    text = hdr.json_text
    if value_text is None:
        if hdr.metadata_span is None:
            return text
        b = hdr.metadata_span[1]
        if hdr.metadata_member_start != 1:
            raise _bad(hdr.path, "__metadata__ is not where ropepatch put it; the header was rewritten by another tool")
        if text.startswith(",", b):
            return text[:1] + text[b + 1 :]
        if text.startswith("}", b):
            return text[:1] + text[b:]
        raise _bad(hdr.path, "__metadata__ is not where ropepatch put it; the header was rewritten by another tool")
    if hdr.metadata_span is not None:
        a, b = hdr.metadata_span
        return text[:a] + value_text + text[b:]
    member = f'"{ST_METADATA}":{value_text}'
    empty = _WS.match(text, 1).end() == len(text) - 1  # "{ }"
    return text[:1] + member + ("" if empty else ",") + text[1:]


_PAGE = 4096


def pad_header(json_text: str, current_length: int, slack: int = ST_HEADER_SLACK) -> bytes:
    """The header bytes to write: padded with spaces to ``current_length`` when the JSON fits,
    else grown by whole 4 KiB pages until ``slack`` spare bytes remain. Keeping the tensor data's
    offset the same modulo 4096 (as the GGUF writer does) lets a filesystem that can share
    blocks (reflink) do so in the kernel copy, and keeps the 8-byte alignment."""
    data = json_text.encode("utf-8")
    length = current_length
    if len(data) > current_length:
        length += _PAGE * -(-(len(data) + slack - current_length) // _PAGE)
    return data + b" " * (length - len(data))


def framed(header: bytes) -> bytes:
    """The file's bytes before the tensor data for the N header bytes ``header``: the u64 LE
    length prefix followed by ``header``."""
    return struct.pack("<Q", len(header)) + header
