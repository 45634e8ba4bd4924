"""Golden-byte tests of the GGUF header writer and reader."""

from __future__ import annotations

import struct

import pytest
from conftest import FIXTURES, GGUF_FIXTURES, build_gguf, llama_kvs

from ropepatch.formats.gguf.header import (
    GGML_BLOCK_SIZES,
    ArrayValue,
    filler_kv,
    make_kv,
    read_header,
    serialize_header,
)
from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.patch import gguf as gp

KEY = "0300000000000000" "612e62"  # u64 length 3, then "a.b"
GOLDEN = [
    (T.UINT32, 16384, KEY + "04000000" "00400000"),
    (T.FLOAT32, 100000.0, KEY + "06000000" "0050c347"),
    (T.STRING, "yarn", KEY + "08000000" "0400000000000000" "7961726e"),
    (T.BOOL, True, KEY + "07000000" "01"),
    (T.FLOAT64, 2.5, KEY + "0c000000" "0000000000000440"),
    (T.UINT64, 7, KEY + "0a000000" "0700000000000000"),
    (T.INT32, -1, KEY + "05000000" "ffffffff"),
]


@pytest.mark.parametrize("t,value,hexbytes", GOLDEN)
def test_kv_encoding_golden(t, value, hexbytes):
    kv = make_kv("a.b", t, value)
    assert kv.raw.hex() == hexbytes
    assert kv.value == value


def test_exact_bytes_of_a_whole_header():
    kvs = [make_kv("general.architecture", T.STRING, "llama"), make_kv("llama.context_length", T.UINT32, 128)]
    body = serialize_header(3, kvs, b"", 0)
    assert body.hex() == (
        "47475546"  # magic "GGUF"
        "03000000"  # version 3
        "0000000000000000"  # 0 tensors
        "0200000000000000"  # 2 KVs
        "1400000000000000" + b"general.architecture".hex() + "08000000" + "0500000000000000" + b"llama".hex()
        + "1400000000000000" + b"llama.context_length".hex() + "04000000" + "80000000"
    )


def test_filler_is_a_uint8_array_of_zeros():
    kv = filler_kv("ropepatch.reserved", 5)
    assert kv.raw == struct.pack("<Q", 18) + b"ropepatch.reserved" + struct.pack("<IIQ", 9, 0, 5) + bytes(5)
    assert kv.value == ArrayValue(T.UINT8, 5)


def test_block_sizes_match_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for tid, sizes in GGML_BLOCK_SIZES.items():
        if tid == 9:  # Q8_1: ggml's block_q8_1 is 2 halves + 32 int8 = 36; gguf-py says 40
            continue
        assert GGML_QUANT_SIZES[GGMLQuantizationType(tid)] == sizes, tid


@pytest.mark.parametrize("fixture", GGUF_FIXTURES)
def test_reader_round_trips_fixture_headers_exactly(fixture):
    path = FIXTURES / fixture
    h = read_header(str(path))
    body = serialize_header(h.version, h.kvs, h.tensor_info_raw, len(h.tensors))
    with open(path, "rb") as f:
        assert f.read(h.data_offset) == body + h.padding
    # and agrees with gguf-py's reader on every key and tensor
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    assert [kv.key for kv in h.kvs] == [f.name for f in r.fields.values() if not f.name.startswith("GGUF.")]
    assert [t.name for t in h.tensors] == [t.name for t in r.tensors]
    assert h.data_offset == r.data_offset


def test_first_patch_layout_keeps_block_alignment_and_slack(tmp_path):
    p = build_gguf(tmp_path / "m.gguf", llama_kvs())
    old = read_header(p)
    gp.patch_gguf(p, 1024, "yarn")
    new = read_header(p)
    assert (new.data_offset - old.data_offset) % 4096 == 0
    assert new.get("ropepatch.reserved").count >= gp.MIN_SLACK
    assert new.header_end == new.data_offset  # the filler absorbs all padding
    # order: the original keys a patch never touches keep their order, then the undo record,
    # then one slot per touched key (the key, or a placeholder where it is absent), then
    # ropepatch's keys, with the filler at the very end; the slots start on a page boundary so
    # every re-patch is one pwrite inside one page (docs/reliability.md)
    keys = [kv.key for kv in new.kvs]
    touched = ["llama.context_length", "llama.rope.freq_base", "llama.rope.scaling.type",
               "llama.rope.scaling.factor", "llama.rope.scaling.original_context_length"]
    untouched = [kv.key for kv in old.kvs if kv.key not in touched]
    n = len(untouched)
    assert keys[:n] == untouched
    assert keys[n:] == ["ropepatch.original", *touched, "ropepatch.version", "ropepatch.method",
                        "ropepatch.ctx", "ropepatch.alpha", "ropepatch.reserved"]
    assert (24 + sum(len(kv.raw) for kv in new.kvs[: n + 1])) % 4096 == 0


@pytest.mark.parametrize("t,value,hexbytes", GOLDEN)
def test_recorded_value_bytes_must_be_exactly_one_value(t, value, hexbytes):
    """An undo record's raw value is rebuilt only when it is one whole value of its type: a
    byte missing or left over would shift every entry after it in the reverted header."""
    from ropepatch.errors import FormatError
    from ropepatch.formats.gguf.header import kv_from_value_raw

    value_raw = bytes.fromhex(hexbytes)[len(KEY) // 2 + 4 :]
    assert kv_from_value_raw("a.b", t, value_raw).raw.hex() == hexbytes
    for bad in (value_raw + b"\0", value_raw + b"junk", value_raw[:-1]):
        with pytest.raises(FormatError):
            kv_from_value_raw("a.b", t, bad)


def test_reader_opens_regular_files_only(tmp_path):
    """The reader's own last line of defence (callers stat first): a FIFO opens non-blocking and
    is refused, a directory too; messages name the file as the caller shows it."""
    import os

    from ropepatch.errors import FormatError

    fifo = tmp_path / "f.gguf"
    os.mkfifo(fifo)
    for p in (str(fifo), str(tmp_path)):
        with pytest.raises(FormatError, match="expected a regular .gguf file"):
            read_header(p)
    with pytest.raises(FormatError, match=r"^shown\\nname: cannot read the GGUF file: no such file"):
        read_header(str(tmp_path / "missing"), shown_as="shown\\nname")
