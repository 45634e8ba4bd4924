"""GGUF header reading and writing (v2/v3, little-endian).

The reader maps the file and walks only the header: scalar and string values are decoded,
arrays are skipped over (their raw bytes are kept, never decoded into Python lists), tensor
infos are read for bounds checks. Every length and count is checked against the bytes that
remain before anything is sliced, so a hostile header cannot drive an allocation.

The writer re-serialises a header from a list of :class:`KV` entries: entries that came from
the file are emitted as their original raw bytes, so untouched keys are byte-identical.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from ropepatch.errors import FormatError
from ropepatch.formats.gguf.ggml import GGML_BLOCK_SIZES, ggml_nbytes  # noqa: F401 - GGML_BLOCK_SIZES: API
from ropepatch.formats.gguf.keys import GENERAL_ALIGNMENT, ValueType
from ropepatch.formats.gguf.source import open_regular

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4

# struct format and size of each scalar value type
_SCALAR = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}
_SCALAR_SIZE = {t: struct.calcsize(f) for t, f in _SCALAR.items()}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ArrayValue:
    """An array value, left undecoded: its element type and count."""

    elem_type: ValueType
    count: int


@dataclass(frozen=True)
class KV:
    """One metadata entry. ``raw`` is the whole on-disk entry (key, type and value)."""

    key: str
    type: ValueType
    value: object  # int / float / bool / str, or ArrayValue
    raw: bytes

    @property
    def value_raw(self) -> bytes:
        """The on-disk bytes of the value alone (after the key and the type tag)."""
        return self.raw[8 + len(self.key.encode()) + 4 :]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data start


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header. ``data_offset`` is where tensor data starts (header + padding)."""

    path: str
    version: int
    kvs: tuple[KV, ...]
    tensors: tuple[TensorInfo, ...]
    tensor_info_raw: bytes  # the tensor-info block, verbatim
    header_end: int  # end of the tensor-info block
    alignment: int
    data_offset: int
    file_size: int
    padding: bytes  # bytes between header_end and data_offset (normally zeros)
    raw: bytes  # the whole header region, bytes [0, data_offset)

    def get(self, key: str, default=None):
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return default

    def entry(self, key: str) -> KV | None:
        for kv in self.kvs:
            if kv.key == key:
                return kv
        return None

    @property
    def data_length(self) -> int:
        return self.file_size - self.data_offset


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(
                f"{self.path}: truncated or corrupt GGUF header: {what} needs {n} bytes at offset "
                f"{self.pos}, only {self.size - self.pos} remain; re-download or re-convert the file"
            )

    def scalar(self, t: ValueType, what: str):
        n = _SCALAR_SIZE[t]
        self.need(n, what)
        (v,) = struct.unpack_from(_SCALAR[t], self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what + " length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(
                f"{self.path}: {what} at offset {self.pos - n} is not valid UTF-8; the file is corrupt"
            ) from None

    def skip_string(self, what: str) -> None:
        n = self.u64(what + " length")
        self.need(n, what)
        self.pos += n


def _value_type(c: _Cursor, code: int, key: str) -> ValueType:
    try:
        return ValueType(code)
    except ValueError:
        raise FormatError(
            f"{c.path}: key {key!r} has unknown value type {code} (expected 0..12); the file is corrupt"
        ) from None


def _read_value(c: _Cursor, t: ValueType, key: str):
    if t in _SCALAR:
        return c.scalar(t, f"value of {key!r}")
    if t == ValueType.STRING:
        return c.string(f"value of {key!r}")
    # array: skip over the elements without decoding them
    et = _value_type(c, c.u32(f"array type of {key!r}"), key)
    count = c.u64(f"array length of {key!r}")
    if et == ValueType.ARRAY:
        raise FormatError(f"{c.path}: key {key!r} is a nested array, which GGUF does not allow")
    if et == ValueType.STRING:
        # each string is at least its 8-byte length: reject counts the file cannot hold
        c.need(count * 8, f"array of {count} strings in {key!r}")
        # hot loop (vocabularies have 10^5 strings): hop over length-prefixed strings
        unpack, buf, pos, end = _U64.unpack_from, c.buf, c.pos, c.size - 8
        for _ in range(count):
            if pos > end:
                break
            pos += 8 + unpack(buf, pos)[0]
        else:
            if pos <= c.size:
                c.pos = pos
                return ArrayValue(et, count)
        c.need(pos - c.pos + 8, f"array of {count} strings in {key!r}")
    else:
        c.need(count * _SCALAR_SIZE[et], f"array of {count} elements in {key!r}")
        c.pos += count * _SCALAR_SIZE[et]
    return ArrayValue(et, count)


def _read_version(c: _Cursor, buf, path: str, file_size: int) -> int:
    if file_size < 4 or bytes(buf[:4]) != MAGIC:
        found = bytes(buf[:4])
        raise FormatError(
            f"{path}: not a GGUF file: expected magic b'GGUF' at offset 0, found {found!r}"
        )
    c.pos = 4
    version = c.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise FormatError(
                f"{path}: big-endian GGUF (version {version >> 24}) is not supported; convert it "
                f"to little-endian with gguf-convert-endian"
            )
        raise FormatError(
            f"{path}: unsupported GGUF version {version}: expected 2 or 3; re-convert the model "
            f"with a current llama.cpp"
        )
    return version


def _read_kvs(c: _Cursor, buf, path: str, n_kv: int) -> list[KV]:
    # every KV needs >= 8 (key len) + 4 (type) + 1 bytes
    c.need(n_kv * 13, f"{n_kv} metadata entries")
    kvs: list[KV] = []
    seen: dict[str, int] = {}
    for i in range(n_kv):
        start = c.pos
        key = c.string(f"key of metadata entry {i}")
        if key in seen:  # llama.cpp refuses these; a reader keeping first or last would differ
            raise FormatError(
                f"{path}: duplicate key {key!r} (metadata entries {seen[key]} and {i}); llama.cpp "
                f"refuses such files; the file is corrupt"
            )
        seen[key] = i
        t = _value_type(c, c.u32(f"type of {key!r}"), key)
        value = _read_value(c, t, key)
        kvs.append(KV(key, t, value, bytes(buf[start : c.pos])))
    return kvs


def _read_tensor_infos(c: _Cursor, path: str, n_tensors: int) -> list[TensorInfo]:
    # every tensor info needs >= 8+4+8+4+8 bytes
    c.need(n_tensors * 32, f"{n_tensors} tensor infos")
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = c.string(f"name of tensor {i}")
        if name in seen:  # llama.cpp refuses these (gguf.cpp: "duplicate tensor name")
            raise FormatError(f"{path}: duplicate tensor name {name!r}; llama.cpp refuses such files; the file "
                              f"is corrupt")
        seen.add(name)
        n_dims = c.u32(f"dimension count of tensor {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise FormatError(
                f"{path}: tensor {name!r} has {n_dims} dimensions, expected at most {GGML_MAX_DIMS}; "
                f"the file is corrupt"
            )
        shape = tuple(c.u64(f"shape of tensor {name!r}") for _ in range(n_dims))
        gt = c.u32(f"type of tensor {name!r}")
        off = c.u64(f"offset of tensor {name!r}")
        tensors.append(TensorInfo(name, shape, gt, off))
    return tensors


def _alignment(kvs: list[KV], path: str) -> int:
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == GENERAL_ALIGNMENT:
            if kv.type != ValueType.UINT32 or kv.value == 0 or kv.value & (kv.value - 1):
                raise FormatError(
                    f"{path}: key {GENERAL_ALIGNMENT!r} must be a UINT32 power of two, found "
                    f"{kv.type.name} {kv.value!r}"
                )
            alignment = kv.value
    return alignment


def _check_data(tensors: list[TensorInfo], path: str, header_end: int, alignment: int,
                file_size: int) -> int:
    """The data offset, once the data section holds every tensor; FormatError otherwise."""
    data_offset = -(-header_end // alignment) * alignment
    if data_offset > file_size:
        raise FormatError(
            f"{path}: truncated GGUF: tensor data should start at offset {data_offset}, but the "
            f"file has {file_size} bytes"
        )
    data_length = file_size - data_offset
    for t in tensors:
        nbytes = ggml_nbytes(t.ggml_type, t.shape)
        if t.offset % alignment or (nbytes is not None and t.offset + nbytes > data_length):
            raise FormatError(
                f"{path}: tensor {t.name!r} (offset {t.offset}, {nbytes} bytes) lies outside the "
                f"{data_length} data bytes or is misaligned; the file is truncated or corrupt"
            )
    return data_offset


def parse_header(buf, path: str, file_size: int, shown_as: str | None = None) -> GGUFHeader:
    """Parse a GGUF header from ``buf`` (the file's bytes, e.g. an mmap). Errors name the file
    as ``shown_as`` (default ``path``; callers pass an escaped name so a message stays one
    line)."""
    name = path if shown_as is None else shown_as
    c = _Cursor(buf, name)
    version = _read_version(c, buf, name, file_size)
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("metadata count")
    kvs = _read_kvs(c, buf, name, n_kv)
    tstart = c.pos
    tensors = _read_tensor_infos(c, name, n_tensors)
    header_end = c.pos
    alignment = _alignment(kvs, name)
    data_offset = _check_data(tensors, name, header_end, alignment, file_size)
    return GGUFHeader(
        path=path,
        version=version,
        kvs=tuple(kvs),
        tensors=tuple(tensors),
        tensor_info_raw=bytes(buf[tstart:header_end]),
        header_end=header_end,
        alignment=alignment,
        data_offset=data_offset,
        file_size=file_size,
        padding=bytes(buf[header_end:data_offset]),
        raw=bytes(buf[:data_offset]),
    )


def read_header(path: str, shown_as: str | None = None) -> GGUFHeader:
    """Read and validate the header of the GGUF file at ``path`` (tensor data is not read).
    ``shown_as``: the file's name in error messages (default ``path``)."""
    name = path if shown_as is None else shown_as
    fd = open_regular(path, name)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise FormatError(f"{name}: not a GGUF file: the file is empty")
        try:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                return parse_header(mm, path, size, name)
        except (OSError, ValueError) as e:  # mmap refused (e.g. a file that shrank to 0)
            reason = (getattr(e, "strerror", None) or str(e)).replace("\n", " ")
            raise FormatError(f"{name}: cannot map the GGUF file: {reason}") from None
    finally:
        os.close(fd)


# ---- writing ------------------------------------------------------------------------------


def _encode_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encode_value(t: ValueType, value) -> bytes:
    """On-disk bytes of a scalar or string value (arrays: ``(elem_type, bytes_payload, count)``)."""
    if t in _SCALAR:
        return struct.pack(_SCALAR[t], value)
    if t == ValueType.STRING:
        return _encode_str(value)
    if t == ValueType.ARRAY:
        et, payload, count = value
        return struct.pack("<IQ", et, count) + payload
    raise ValueError(f"cannot encode {t!r}")  # pragma: no cover


def make_kv(key: str, t: ValueType, value) -> KV:
    """A new metadata entry with its on-disk bytes."""
    raw = _encode_str(key) + struct.pack("<I", t) + encode_value(t, value)
    shown = ArrayValue(ValueType(value[0]), value[2]) if t == ValueType.ARRAY else value
    if t == ValueType.FLOAT32:
        shown = struct.unpack("<f", struct.pack("<f", value))[0]
    return KV(key, t, shown, raw)


def kv_from_value_raw(key: str, t: ValueType, value_raw: bytes) -> KV:
    """Rebuild an entry from its recorded value bytes (used by revert). FormatError unless
    ``value_raw`` is exactly one well-formed value of type ``t`` (no bytes missing, none left
    over: a trailing byte would shift every entry after it)."""
    raw = _encode_str(key) + struct.pack("<I", t) + value_raw
    c = _Cursor(raw, "<record>")
    c.pos = len(raw) - len(value_raw)
    value = _read_value(c, t, key)
    if c.pos != len(raw):
        raise FormatError(f"<record>: value of {key!r} has {len(raw) - c.pos} bytes left over")
    return KV(key, t, value, raw)


def filler_kv(key: str, n_bytes: int) -> KV:
    """An ARRAY[UINT8] entry of ``n_bytes`` zeros: header slack for later in-place patches."""
    return make_kv(key, ValueType.ARRAY, (ValueType.UINT8, bytes(n_bytes), n_bytes))


def filler_overhead(key: str) -> int:
    """Size of a filler entry with zero payload bytes."""
    return len(filler_kv(key, 0).raw)


def serialize_header(version: int, kvs, tensor_info_raw: bytes, n_tensors: int) -> bytes:
    """Magic, version, counts, entries, tensor infos - without the trailing alignment padding."""
    parts = [MAGIC, struct.pack("<IQQ", version, n_tensors, len(kvs))]
    parts.extend(kv.raw for kv in kvs)
    parts.append(tensor_info_raw)
    return b"".join(parts)
