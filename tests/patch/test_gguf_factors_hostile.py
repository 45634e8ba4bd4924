"""The per-pair factor writer (ntk-parts, factors: rope_freqs.weight) under hostile input (#14):
rope_freqs tensors of the wrong type, shape, values or place; damaged ``rope_freqs`` undo-record
fields and ``ropepatch.options``; a factor file edited by another tool. Every refusal is one
line, exit status 2, and the file keeps its sha256; what is accepted is handled safely (a
revert gives the original bytes)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from conftest import FIXTURES, one_line, sha256

from ropepatch.formats.gguf.header import TensorInfo, make_kv, read_header, serialize_header
from ropepatch.formats.gguf.keys import ValueType
from ropepatch.formats.gguf.tensors import ROPE_FREQS, data_size, encode_tensor_info, find_tensor, pad_to
from ropepatch.patch import gguf as gp

FIXTURE = FIXTURES / "tiny-llama-f32.gguf"
PRISTINE = sha256(FIXTURE)
ONES = (1.0,) * 8


def refused(cli, args, *texts) -> None:
    """``ropepatch ARGS`` refused: one error line; ``validate`` reports instead (check a fails
    naming the reason, exit status 1)."""
    r = cli(*args)
    if args[0] != "validate":
        one_line(r, *texts)
        return
    assert r.returncode == 1 and "Traceback" not in r.stderr and "FAIL a." in r.stdout, r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "FAIL a." in ln)
    assert all(t in line for t in texts), line


def with_tensors(dst, infos, blob: bytes) -> str:
    """A copy of the llama fixture with the tensor ``infos`` appended (offsets as given) and
    ``blob`` appended after its data's padded end (the first appended tensor's usual place)."""
    h = read_header(str(FIXTURE))
    raw = h.tensor_info_raw + b"".join(encode_tensor_info(t) for t in infos)
    head = serialize_header(h.version, h.kvs, raw, len(h.tensors) + len(infos))
    head += bytes(pad_to(len(head), h.alignment) - len(head))
    data = FIXTURE.read_bytes()[h.data_offset:]
    data += bytes(data_size(h.tensors, h.alignment) - len(data)) + blob
    data += bytes(pad_to(len(data), h.alignment) - len(data))
    with open(dst, "wb") as f:
        f.write(head + data)
    return str(dst)


def rope_freqs_file(dst, values=ONES, ggml_type=0, shape=None, offset=None, blob=None) -> str:
    end = data_size(read_header(str(FIXTURE)).tensors, 32)
    fmt = {0: "<%df", 1: "<%de"}.get(ggml_type)
    blob = blob if blob is not None else struct.pack(fmt % len(values), *values)
    info = TensorInfo(ROPE_FREQS, shape or (len(values),), ggml_type, end if offset is None else offset)
    return with_tensors(dst, [info], blob)


NAN, INF = float("nan"), float("inf")
# name -> (file maker, what `gguf --method ntk-parts` says, what it says with --replace-scaling
# (None: accepted; the factors replace the bad ones and revert restores them exactly))
INPUTS = {
    "f16": (lambda d: rope_freqs_file(d, ggml_type=1), "cannot compose", "is ggml type 1, not F32"),
    "q8_0": (lambda d: rope_freqs_file(d, ggml_type=8, shape=(32,), blob=bytes(34)), "cannot compose",
             "is ggml type 8, not F32"),
    "shape-4": (lambda d: rope_freqs_file(d, ONES[:4]), "cannot compose", "has shape [4], not [8]"),
    "shape-16": (lambda d: rope_freqs_file(d, ONES * 2), "cannot compose", "has shape [16], not [8]"),
    "shape-8x2": (lambda d: rope_freqs_file(d, ONES * 2, shape=(8, 2)), "cannot compose", "has shape [8, 2]"),
    "nan": (lambda d: rope_freqs_file(d, (1, 1, 1, NAN, 2, 2, 2, 2)), "cannot compose", None),
    "inf": (lambda d: rope_freqs_file(d, (1, 1, 1, INF, 2, 2, 2, 2)), "cannot compose", None),
    "zero": (lambda d: rope_freqs_file(d, (1, 1, 1, 0, 2, 2, 2, 2)), "cannot compose", None),
    "negative": (lambda d: rope_freqs_file(d, (1, 1, 1, -1, 2, 2, 2, 2)), "cannot compose", None),
    # shares bytes with token_embd.weight (offset 0): llama.cpp refuses the file; writing the
    # factors there would change another tensor
    "overlapping": (lambda d: rope_freqs_file(d, offset=0), "cannot compose", "shares data bytes with tensor"),
    "past-eof": (lambda d: rope_freqs_file(d, offset=1 << 20), "lies outside", "lies outside"),
    "duplicate-name": (lambda d: with_tensors(d, [TensorInfo(ROPE_FREQS, (8,), 0, 429312),
                                                  TensorInfo(ROPE_FREQS, (8,), 0, 429344)],
                                              struct.pack("<16f", *ONES * 2)), "duplicate tensor name",
                       "duplicate tensor name"),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_hostile_rope_freqs_inputs(tmp_path, cli, name):
    make, composed, replaced = INPUTS[name]
    p = make(tmp_path / f"{name}.gguf")
    before = sha256(p)
    one_line(cli("gguf", p, "--ctx", "512", "--method", "ntk-parts"), composed)
    one_line(cli("gguf", p, "--ctx", "512", "--method", "factors", "--factors", "1,2"), composed)
    one_line(cli("revert", p), "lies outside" if name == "past-eof" else "duplicate tensor" if name.startswith(
        "dup") else "no ropepatch provenance")
    r = cli("inspect", p)
    if name in ("past-eof", "duplicate-name"):  # the file itself is corrupt: one line
        one_line(r, composed)
        refused(cli, ("validate", p), composed)
    else:  # readable: the tensor is reported, its values are not used
        assert r.returncode == 0 and "per-pair frequency factors (rope_freqs)" in r.stdout
        assert gp.inspect_gguf(p).current.freq_factors == ()
    assert sha256(p) == before
    out = str(tmp_path / "out.gguf")
    r = cli("gguf", p, "--ctx", "512", "--method", "ntk-parts", "--replace-scaling", "-o", out)
    if replaced is not None:
        one_line(r, replaced)
        assert sha256(p) == before and not (tmp_path / "out.gguf").exists()
        return
    assert r.returncode == 0, r.stderr
    assert gp.inspect_gguf(out).current.freq_factors == gp.patch_gguf(p, 512, "ntk-parts", dry_run=True,
                                                                        replace_scaling=True).plan.target.freq_factors
    assert cli("revert", out).returncode == 0 and sha256(out) == before


# ---- damaged undo records -------------------------------------------------------------------


def set_string(path, key, text) -> None:
    """``path`` with string entry ``key`` set to ``text`` (padded to the old length when it fits,
    so the header keeps its size), the data bytes kept."""
    h = read_header(path)
    old = h.get(key)
    text = text.ljust(len(old)) if len(text) <= len(old) else text
    kvs = [make_kv(key, ValueType.STRING, text) if kv.key == key else kv for kv in h.kvs]
    head = serialize_header(h.version, kvs, h.tensor_info_raw, len(h.tensors))
    head += bytes(pad_to(len(head), h.alignment) - len(head))
    data = open(path, "rb").read()[h.data_offset:]
    with open(path, "wb") as f:
        f.write(head + data)


def record(change):
    def edit(text):
        d = json.loads(text)
        change(d)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))
    return edit


def _dl(delta):
    return record(lambda d: d.update(rope_freqs={"data_length": d["rope_freqs"]["data_length"] + delta}))


RECORDS = {
    "null": (record(lambda d: d.update(rope_freqs=None)), "rope_freqs tensor is damaged"),
    "string": (record(lambda d: d.update(rope_freqs="absent")), "rope_freqs tensor is damaged"),
    "list": (record(lambda d: d.update(rope_freqs=[429312])), "rope_freqs tensor is damaged"),
    "length-float": (record(lambda d: d.update(rope_freqs={"data_length": 1.5})), "rope_freqs tensor is damaged"),
    "length-bool": (record(lambda d: d.update(rope_freqs={"data_length": True})), "rope_freqs tensor is damaged"),
    "length-2^64": (record(lambda d: d.update(rope_freqs={"data_length": 1 << 64})), "rope_freqs tensor is damaged"),
    "raw-odd-hex": (record(lambda d: d.update(rope_freqs={"raw": "0000803"})), "rope_freqs tensor is damaged"),
    "raw-4-values": (record(lambda d: d.update(rope_freqs={"raw": "0000803f" * 4})), "does not fit the file"),
    "raw-16-values": (record(lambda d: d.update(rope_freqs={"raw": "0000803f" * 16})), "does not fit the file"),
    "raw-huge": (record(lambda d: d.update(rope_freqs={"raw": "00" * 600000})), "rope_freqs tensor is damaged"),
    # the data length would cut the last original tensor (revert truncates to it), or lies past
    # where ropepatch appended the tensor
    "length-short-8": (_dl(-8), "does not fit the file"),
    "length-short-32": (_dl(-32), "does not fit the file"),
    "length-long-8": (_dl(8), "does not fit the file"),
    "length-zero": (record(lambda d: d.update(rope_freqs={"data_length": 0})), "does not fit the file"),
    # the field is gone while ropepatch.method says factors were written: the tensor would be
    # taken for the original's (compounding) and revert could not remove it
    "field-removed": (record(lambda d: d.pop("rope_freqs")), "holds no original rope_freqs state"),
}


@pytest.mark.parametrize("case", sorted(RECORDS))
def test_damaged_rope_freqs_record_refused_everywhere(copy_fixture, cli, case):
    edit, text = RECORDS[case]
    p = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(p, 512, "ntk-parts")
    set_string(p, "ropepatch.original", edit(read_header(p).get("ropepatch.original")))
    before = sha256(p)
    for args in (("inspect", p), ("revert", p), ("revert", p, "--dry-run"), ("gguf", p, "--ctx", "1024"),
                 ("gguf", p, "--ctx", "1024", "--method", "ntk-parts", "--alpha", "8"),
                 ("gguf", p, "--ctx", "1024", "--method", "factors", "--factors", "1,2"), ("validate", p)):
        refused(cli, args, "ropepatch.original", text)
    assert sha256(p) == before


def test_absent_claim_on_a_file_that_had_the_tensor_is_refused(tmp_path, cli):
    """A llama3-style file (its own rope_freqs) whose record claims the tensor was absent:
    revert would drop the file's own factors; the rebuilt header does not hash to the
    recorded one, so it is refused and nothing is written."""
    p = rope_freqs_file(tmp_path / "l3.gguf", (1, 1, 1, 1.25, 2, 4, 8, 8))
    pristine = sha256(p)
    gp.patch_gguf(p, 512, "ntk-parts")
    assert gp.inspect_gguf(p).provenance.record.rope_freqs.raw is not None
    end = data_size(read_header(str(FIXTURE)).tensors, 32)
    set_string(p, "ropepatch.original", record(lambda d: d.update(rope_freqs={"data_length": end}))(
        read_header(p).get("ropepatch.original")))
    before = sha256(p)
    one_line(cli("revert", p), "changed outside ropepatch")
    assert sha256(p) == before
    set_string(p, "ropepatch.original", record(lambda d: d.update(rope_freqs={"raw": struct.pack(
        "<8f", 1, 1, 1, 1.25, 2, 4, 8, 8).hex()}))(read_header(p).get("ropepatch.original")))
    assert cli("revert", p).returncode == 0 and sha256(p) == pristine  # the true record still works


def test_forged_raw_claim_is_refused_by_a_re_patch_too(copy_fixture, cli):
    """The reverse forgery: ropepatch ADDED rope_freqs (the record says absent), and the record
    now claims the tensor was the original's. Revert refuses it (the rebuilt header does not hash
    to the recorded one); a re-patch checks the same before building on the record, so it is
    refused too instead of rewriting the tensor as if it were the file's own."""
    p = copy_fixture("tiny-llama-f32.gguf")
    pristine = sha256(p)
    gp.patch_gguf(p, 512, "ntk-parts")
    good = read_header(p).get("ropepatch.original")
    set_string(p, "ropepatch.original", record(lambda d: d.update(rope_freqs={"raw": struct.pack(
        "<8f", *[1.0] * 8).hex()}))(good))
    before = sha256(p)
    for args in (("gguf", p, "--ctx", "1024", "--method", "ntk-parts"), ("gguf", p, "--ctx", "1024"),
                 ("gguf", p, "--ctx", "1024", "--method", "factors", "--factors", "1,2"),
                 ("gguf", p, "--ctx", "1024", "--dry-run"), ("revert", p)):
        one_line(cli(*args), "changed outside ropepatch")
    assert sha256(p) == before
    set_string(p, "ropepatch.original", good)  # the true record: re-patch and revert work again
    assert cli("gguf", p, "--ctx", "1024", "--method", "ntk-parts").returncode == 0
    assert cli("revert", p).returncode == 0 and sha256(p) == pristine


OPTIONS_REFUSED = {  # damaged beyond use: inspect and re-patch refuse (one line); revert works
    "not-json": "points: 1, 2",
    "not-an-object": "[1,2]",
    "nan": '{"points":[NaN,2]}',
    "1e400": '{"points":[1,1e400]}',
    "string-value": '{"points":"1,2"}',
    "nested-list": '{"points":[[1],[2]]}',
    "bool-value": '{"beta_fast":true}',
    "replace-not-bool": '{"points":[1,2],"replace_scaling":"yes"}',
    "too-many-names": json.dumps({f"o{i}": 1 for i in range(17)}),
    "huge-array": '{"points":[' + ",".join(["1"] * 70000) + "]}",
}
# well-formed but not what the method takes: recorded as written, shown by inspect, refused by
# validate (the recorded plan cannot be rebuilt), replaced by the next patch, ignored by revert
OPTIONS_UNUSABLE = {
    "unknown-name": ('{"bogus":1}', "does not take bogus"),
    "non-monotone": ('{"points":[3,1]}', "never decrease"),
    "empty-points": ('{"points":[]}', "found 0"),
    "zero-points": ('{"points":[0,0]}', ""),
}


@pytest.mark.parametrize("case", sorted(OPTIONS_REFUSED))
def test_damaged_options_refused_in_one_line_revert_still_works(copy_fixture, cli, case):
    p = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(p, 512, "factors", options={"points": (1.0, 2.0)})
    set_string(p, "ropepatch.options", OPTIONS_REFUSED[case])
    before = sha256(p)
    for args in (("inspect", p), ("inspect", p, "--json"), ("gguf", p, "--ctx", "1024", "--method", "ntk-parts"),
                 ("validate", p)):
        refused(cli, args, "ropepatch.options", "damaged", "revert")
    assert sha256(p) == before
    r = cli("revert", p)
    assert r.returncode == 0, r.stderr
    assert sha256(p) == PRISTINE


@pytest.mark.parametrize("case", sorted(OPTIONS_UNUSABLE))
def test_unusable_options_are_shown_refused_by_validate_and_replaced(copy_fixture, cli, case):
    text, why = OPTIONS_UNUSABLE[case]
    p = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(p, 512, "factors", options={"points": (1.0, 2.0)})
    set_string(p, "ropepatch.options", text)
    r = cli("inspect", p)
    assert r.returncode == 0 and "  options:  " in r.stdout
    assert cli("inspect", p, "--json").returncode == 0
    r = cli("validate", p, "--no-reference-forward")
    assert r.returncode == 1 and "cannot be rebuilt" in r.stdout and why in r.stdout
    r = cli("gguf", p, "--ctx", "512", "--method", "factors", "--factors", "1,3")
    assert r.returncode == 0, r.stderr
    assert gp.inspect_gguf(p).provenance.options == {"points": (1.0, 3.0), "attn_factor": 1.0}
    assert cli("revert", p).returncode == 0 and sha256(p) == PRISTINE


# ---- a factor file edited by another tool ----------------------------------------------------


def _poke(path, offset: int, raw: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(raw)


@pytest.mark.parametrize("llama3", [False, True])
def test_factor_data_changed_by_another_tool_reverts_and_repatches_correctly(tmp_path, llama3):
    """The factor bytes are ropepatch's to write: revert drops or restores them from the record
    (whatever another tool wrote there) and gives the original bytes; a re-patch writes the
    plan's factors again (computed from the recorded original, never from the edited bytes)."""
    p = (rope_freqs_file(tmp_path / "m.gguf", (1, 1, 1, 1.25, 2, 4, 8, 8)) if llama3
         else shutil.copyfile(FIXTURE, tmp_path / "m.gguf"))
    p = str(p)
    pristine = sha256(p)
    want = gp.patch_gguf(p, 512, "ntk-parts").plan.target.freq_factors
    h = read_header(p)
    at = h.data_offset + find_tensor(h, ROPE_FREQS).offset
    _poke(p, at, struct.pack("<8f", *[3.0] * 8))  # another tool edits the factors
    assert gp.inspect_gguf(p).current.freq_factors == (3.0,) * 8
    r = gp.patch_gguf(p, 512, "ntk-parts")
    assert r.mode == "in-place" and r.data_bytes > 0 and gp.inspect_gguf(p).current.freq_factors == want
    _poke(p, at, struct.pack("<8f", *[3.0] * 8))
    gp.revert_gguf(p)
    assert sha256(p) == pristine


def test_tensor_info_changed_by_another_tool_is_refused(copy_fixture, cli):
    """Another tool retypes the appended rope_freqs (F32 -> F16 with the same bytes): the record
    no longer fits the file, so every command refuses before writing."""
    p = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(p, 512, "ntk-parts")
    h = read_header(p)
    t = find_tensor(h, ROPE_FREQS)
    info = encode_tensor_info(t)
    i = h.raw.index(info)
    _poke(p, i + len(info) - 12, struct.pack("<I", 1))  # the type field
    before = sha256(p)
    for args in (("inspect", p), ("revert", p), ("gguf", p, "--ctx", "1024", "--method", "ntk-parts")):
        one_line(cli(*args), "rope_freqs")
    assert sha256(p) == before


def test_inspect_shows_the_recorded_options(copy_fixture, cli):
    p = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(p, 512, "factors", options={"points": (1.0, 1.5, 3.0)})
    r = cli("inspect", p)
    assert "  options:  attn_factor 1; points 1, 1.5, 3\n" in r.stdout
    d = json.loads(cli("inspect", p, "--json").stdout)["provenance"]
    assert d["options"] == {"points": [1.0, 1.5, 3.0], "attn_factor": 1.0} and d["replace_scaling"] is False
    gp.patch_gguf(p, 512, "ntk-parts", options={"beta_fast": 16.0})
    assert "  options:  beta_fast 16; beta_slow 1\n" in cli("inspect", p).stdout
    gp.patch_gguf(p, 512, "yarn")
    assert "options:" not in cli("inspect", p).stdout
    assert json.loads(cli("inspect", p, "--json").stdout)["provenance"]["options"] == {}


CORPUS = FIXTURES.parent / "tests" / "fuzz_corpus"
FIXED = {  # accepted before the fix (and written to by a patch): now one line, nothing written
    "factors-duplicate-tensor-name.gguf": "duplicate tensor name 'rope_freqs.weight'",
    "factors-rope-freqs-overlaps-token-embd.gguf": "shares data bytes with tensor 'token_embd.weight'",
    "factors-record-data-length-short.gguf": "rope_freqs tensor does not fit the file's",
    "factors-record-without-rope-freqs.gguf": "holds no original rope_freqs state",
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fuzz_corpus_factor_inputs_refused(tmp_path, cli, name):
    p = str(shutil.copyfile(CORPUS / name, tmp_path / name))
    before = sha256(p)
    refused(cli, ("gguf", p, "--ctx", "1024", "--method", "ntk-parts", "--replace-scaling"), FIXED[name])
    assert sha256(p) == before
