"""Hugging Face models as hostile input (#12): undo records are input. Every field is checked,
lengths are bounded by the shard before anything is allocated, the header and config.json to
restore are rebuilt and verified (sha256, parsed back by ropepatch's own reader) before anything
is written; a shard re-saved by another tool is refused.

Real files, the CLI in process (_helpers_hf_hostile.py).
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
from _helpers_hf_hostile import SHARD, model, one_line_error, patched, record_of, set_field, set_record, snapshot
from conftest import require
from safetensors.numpy import load_file, save_file

from ropepatch.errors import FormatError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import patch_hf, revert_hf

# ---- undo records are input ----------------------------------------------------------------


@pytest.mark.parametrize("key, value, found", [
    ("header_length", 2**62, "an integer from 2 to 100000000, found 4611686018427387904"),
    ("header_length", 2**70, "an integer from 2 to 100000000, found 1180591620717411303424"),
    ("header_length", 300_000_000, "found 300000000"),
    ("header_length", 3e8, "found 300000000.0"),
    ("header_length", True, "found true"),
    ("metadata", "x", "holds malformed original metadata"),
    ("metadata", "[1,2]", "holds malformed original metadata"),
    ("metadata", '{"a":1}', "holds malformed original metadata"),
    ("metadata", '{"format":"pt"},"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}', "malformed original metadata"),
    ("metadata", "[" * 100_000 + "]" * 100_000, "malformed original metadata"),
    ("link", 5, "field 'link': expected a symlink target"),
    ("link", "a\0b", "field 'link': expected a symlink target"),
    ("config_link", [1], "field 'config_link': expected a symlink target"),
    ("config", 5, "field 'config': expected a string, found 5"),
    ("pad", "x" * 8, "field 'pad'"),
    ("header_sha256", "abc", "field 'header_sha256': expected 64 lowercase hex digits"),
])
def test_bad_record_field_is_one_line_and_nothing_is_written(tmp_path, cli, key, value, found):
    d = patched(tmp_path)
    set_field(d, key, value)
    before = snapshot(d)
    for args in (["revert", str(d)], ["hf", str(d), "--ctx", "2048"], ["inspect", str(d)]):
        err = one_line_error(cli(*args), found)
        assert "run the same command again" not in err
    assert snapshot(d) == before  # config.json included


@pytest.mark.parametrize("text, found", [
    ("[" * 100_000 + "]" * 100_000, "nesting"),
    ('{"v":' + "1" * 5000 + "}", "too many digits"),
    ('{"v":1,"config":"\\ud800"}', "unpaired surrogate"),
    ('{"v":1,"v":1}', "duplicate key"),
    ("", "Expecting value"),
])
def test_hostile_record_json_is_one_line(tmp_path, cli, text, found):
    d = patched(tmp_path)
    set_record(d, text)
    before = snapshot(d)
    one_line_error(cli("revert", str(d)), f"{hk.RP_ORIGINAL} is not valid JSON", found)
    assert snapshot(d) == before


def test_lengths_are_bounded_by_the_shard_before_any_allocation(tmp_path):
    """A header_length the format allows (99 MB) but the shard cannot have held: refused before
    the 99 MB header is built (ropepatch only ever grows a header)."""
    d = patched(tmp_path)
    set_field(d, "header_length", 99_000_000)
    before = snapshot(d)
    tracemalloc.start()
    with pytest.raises(FormatError, match=r"records an original header of 99000000 bytes, more than the shard's \d+"):
        revert_hf(str(d))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20 and snapshot(d) == before


def test_records_carry_hashes_and_old_records_still_revert(tmp_path):
    d = model(tmp_path)
    pristine = snapshot(d)
    raw, cfg = (d / SHARD).read_bytes(), (d / "config.json").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    patch_hf(str(d), 4096, "yarn")
    rec = record_of(d)
    assert rec["header_sha256"] == hashlib.sha256(raw[: 8 + n]).hexdigest()
    assert rec["config_sha256"] == hashlib.sha256(cfg).hexdigest()
    revert_hf(str(d))
    assert snapshot(d) == pristine
    # a record written before the hashes existed: what it holds is still checked, and it reverts
    patch_hf(str(d), 4096, "yarn")
    rec = record_of(d)
    del rec["header_sha256"], rec["config_sha256"]
    set_record(d, json.dumps(rec, separators=(",", ":")))
    revert_hf(str(d))
    assert snapshot(d) == pristine


@pytest.mark.parametrize("key", ["header_sha256", "config_sha256"])
def test_hash_mismatch_is_refused(tmp_path, cli, key):
    d = patched(tmp_path)
    set_field(d, key, "0" * 64)
    before = snapshot(d)
    one_line_error(cli("revert", str(d)), "does not match its recorded sha256 000000000000")
    one_line_error(cli("hf", str(d), "--ctx", "2048"), "does not match its recorded sha256")
    assert snapshot(d) == before


def _resave_numpy(p: str, drop: bool) -> None:
    meta = dict(read_header(p).metadata)
    t = load_file(p)
    if drop:
        t.pop(sorted(t)[0])
    save_file(t, p, metadata=meta)


def _resave_torch(p: str, drop: bool) -> None:
    require("torch")
    from safetensors.torch import load_file as tload
    from safetensors.torch import save_file as tsave

    meta = dict(read_header(p).metadata)
    t = tload(p)
    if drop:
        t.pop(sorted(t)[-1])
    tsave(t, p, metadata=meta)


@pytest.mark.parametrize("resave", [pytest.param(_resave_numpy, id="numpy"),
                                    pytest.param(_resave_torch, id="torch", marks=pytest.mark.transformers)])
def test_shard_resaved_by_another_tool_is_refused_not_restored(tmp_path, cli, resave):
    """The metadata (with ropepatch's record) survives a re-save that drops a tensor: revert must
    see that the shard is no longer the one it patched, and neither claim a restore nor write."""
    d = patched(tmp_path)
    resave(str(d / SHARD), True)
    before = snapshot(d)
    err = one_line_error(cli("revert", str(d)), "changed by another tool after ropepatch patched it",
                         "nothing written", absent=("--force", " -o "))
    assert "restored" not in err
    one_line_error(cli("hf", str(d), "--ctx", "2048"), "changed by another tool")
    assert snapshot(d) == before


def test_resave_that_keeps_the_header_still_reverts(tmp_path):
    """A round trip through the safetensors library that writes the same header bytes back is not
    a change: revert restores the original exactly."""
    d = model(tmp_path)
    pristine = snapshot(d)
    patch_hf(str(d), 4096, "yarn")
    _resave_numpy(str(d / SHARD), False)
    revert_hf(str(d))
    assert snapshot(d) == pristine
