"""GGUF under hostile conditions (issue 12): forged or damaged undo records, and a file changed
by another tool after patching. Every refusal is one line, exit status 2, and nothing is
written."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
from _helpers_gguf_hostile import FIXTURE, tree
from conftest import FIXTURES, one_line, sha256

from ropepatch.errors import FormatError
from ropepatch.formats.gguf.header import KV, read_header, serialize_header
from ropepatch.patch import gguf as gp

CTX = "llama.context_length"


# ---- records are input -------------------------------------------------------------------


def forge(path: str, change) -> None:
    """Edit the undo record of the patched ``path`` with ``change(dict)`` and recompute its
    header_sha256 the way a careful attacker would (the original header with the forged raw
    values, as ropepatch rebuilds it), keeping the record entry's length."""
    h, h0 = read_header(path), read_header(str(FIXTURES / FIXTURE))
    text = h.get("ropepatch.original")
    d = json.loads(text)
    change(d)
    kvs = []
    for kv in h0.kvs:
        e = d["keys"].get(kv.key)
        if e is not None:
            kb = kv.key.encode()
            kv = KV(kv.key, kv.type, None, struct.pack("<Q", len(kb)) + kb + struct.pack("<I", e["type"])
                    + bytes.fromhex(e["raw"]))
        kvs.append(kv)
    body = serialize_header(h0.version, kvs, h0.tensor_info_raw, len(h0.tensors))
    d["header_sha256"] = hashlib.sha256(body + bytes(max(0, d["data_offset"] - len(body)))).hexdigest()
    new = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert len(new) <= len(text)
    data = bytearray(open(path, "rb").read())
    i = data.index(text.encode())
    data[i : i + len(text)] = new.ljust(len(text)).encode()
    open(path, "wb").write(data)


def _string(s: bytes) -> str:
    return (struct.pack("<Q", len(s)) + s).hex()


def _set(key: str, type_: int | None = None, raw: str | None = None, append: str = ""):
    """A record change: the recorded original of ``key`` gets ``type_``/``raw`` (+ ``append``)."""

    def change(d):
        e = d["keys"].get(key) or {"type": type_, "raw": raw}
        d["keys"][key] = {"type": e["type"] if type_ is None else type_,
                          "raw": (e["raw"] if raw is None else raw) + append}
    return change


F32 = lambda x: struct.pack("<f", x).hex()  # noqa: E731
FORGED = {
    # the case: 4 junk bytes after a valid value (the rebuilt header would misparse)
    "junk-after-value": (_set(CTX, append="deadbeef"), "is damaged"),
    "value-cut-short": (_set(CTX, raw="8000"), "is damaged"),
    "array-with-junk": (_set(CTX, 9, struct.pack("<IQI", 4, 1, 128).hex() + "00"), "is damaged"),
    # well-formed values ropepatch itself rejects for the key
    "ctx-as-string": (_set(CTX, 8, _string(b"abc")), "expected an integer"),
    "ctx-zero": (_set(CTX, raw="00000000"), "expected a positive training context"),
    "ctx-as-float": (_set(CTX, 6, F32(128.0)), "expected an integer"),
    "ctx-as-bool": (_set(CTX, 7, "01"), "expected an integer"),
    "base-nan": (_set("llama.rope.freq_base", 6, F32(float("nan"))), "expected a finite base > 1"),
    # fields bounded by the file
    "foreign-key": (_set("general.alignment", 4, "40000000"), "which no patch"),
    "padding-past-alignment": (lambda d: d.update(padding="11" * 64), "not less than the alignment"),
    "position-out-of-range": (lambda d: d["at"].update({CTX: 10**9}), "key positions are damaged"),
    "link-not-a-string": (lambda d: d.update(link=7), "symlink target is not a path"),
    "link-with-nul": (lambda d: d.update(link="a\0b"), "symlink target is not a path"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_record_is_refused_before_anything_is_written(copy_fixture, cli, case):
    change, text = FORGED[case]
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    forge(p, change)
    snap = tree(os.path.dirname(p))
    one_line(cli("revert", p), text)
    one_line(cli("revert", p, "--dry-run"), text)
    one_line(cli("gguf", p, "--ctx", "1024"), text)
    one_line(cli("revert", p, "-o", p + ".out"), text)
    assert tree(os.path.dirname(p)) == snap


def test_record_with_junk_names_the_remedy(copy_fixture):
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    forge(p, FORGED["junk-after-value"][0])
    with pytest.raises(FormatError, match="re-download or re-convert the original model"):
        gp.inspect_gguf(p)


def test_file_changed_by_another_tool_after_patching_is_refused(copy_fixture, cli):
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    h = read_header(p)
    kv = h.entry("general.name")
    data = bytearray(open(p, "rb").read())
    i = data.index(kv.raw) + len(kv.raw) - 1
    data[i] ^= 0x01  # another tool edits a value ropepatch never touches (same size)
    open(p, "wb").write(data)
    snap = sha256(p)
    one_line(cli("revert", p), "changed outside ropepatch")
    assert sha256(p) == snap
