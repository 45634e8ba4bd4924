"""Hugging Face models as bad input: a broken config.json, safetensors file, shard or index, bad
arguments and paths, a config.json edited after patching, a tampered or edited undo record. Each
is one line and writes nothing.

Real files, no mocks: the model directories are built in tmp_path (_helpers_hf.py).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from _helpers_hf import N, cfg_of, llama_config, make_model, snapshot, tensors, write_config
from safetensors.numpy import load_file, save_file

from ropepatch.errors import FormatError, RopepatchError, UnsupportedModelError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import inspect_hf, patch_hf, revert_hf

# ---- bad input: one line, nothing written ---------------------------------------------------


def raises_one_line(exc, pattern, fn, *args, **kw):
    with pytest.raises(exc, match=pattern) as ei:
        fn(*args, **kw)
    assert "\n" not in str(ei.value)
    return ei.value


def _bad_config_case(d: Path, text: str) -> None:
    (d / "config.json").write_text(text)


@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda d: _bad_config_case(d, '{"model_type": "llama",\n  "rope_theta": 1e4,\n}'), FormatError,
         r"config\.json: not valid JSON: Expecting property name enclosed in double quotes at line 3 column 1; "
         r"fix or re-download config\.json"),
        (lambda d: _bad_config_case(d, "[1, 2]"), FormatError,
         r"config\.json: expected a JSON object at the top level, found list"),
        (lambda d: write_config(d, llama_config(rope_theta=...)), FormatError,
         r"config\.json: no rope_theta \(expected a positive number at rope_theta or rope_scaling\.rope_theta, found "
         r"none\); add the model's rope_theta to config\.json"),
        (lambda d: write_config(d, llama_config(max_position_embeddings=...)), FormatError,
         r"config\.json: max_position_embeddings must be a positive integer, found none; "
         r"add the model's training context to config\.json"),
        (lambda d: write_config(d, llama_config(max_position_embeddings="4k")), FormatError,
         r'config\.json: max_position_embeddings must be a positive integer, found "4k"'),
        (lambda d: write_config(d, llama_config(head_dim=..., hidden_size=...)), FormatError,
         r"config\.json: cannot derive the head size: expected head_dim or hidden_size and num_attention_heads as "
         r"positive integers"),
        (lambda d: write_config(d, llama_config(rope_scaling="yarn")), FormatError,
         r'config\.json: rope_scaling must be an object or null, found "yarn"; fix config\.json'),
        (lambda d: write_config(d, llama_config(model_type="gpt2")), UnsupportedModelError,
         r"config\.json: model_type 'gpt2' does not use rotary position embeddings"),
        (lambda d: write_config(d, llama_config(rope_scaling=..., rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})), UnsupportedModelError,
         r"config\.json: rope_parameters holds per-layer-type settings \(full_attention, sliding_attention\); "
         r"ropepatch only patches a single rope block"),
        (lambda d: os.remove(d / "config.json"), FormatError,
         r"/m: no config\.json \(expected it next to the safetensors weights\)"),
        (lambda d: os.remove(d / "model.safetensors"), FormatError,
         r"/m: no \*\.safetensors weights next to config\.json; "
         r"ropepatch records its undo data in safetensors headers"),
    ],
)
def test_bad_config(tmp_path, mutate, exc, pattern):
    d = make_model(tmp_path / "m")
    mutate(d)
    before = snapshot(d)
    raises_one_line(exc, pattern, patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before


def _write_raw(path: Path, header: bytes, data: bytes, n: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)


def _tensor_header(meta=None, extra=None, offsets=(0, 16)) -> bytes:
    h = {}
    if meta is not None:
        h["__metadata__"] = meta
    h["a"] = {"dtype": "F32", "shape": [4], "data_offsets": list(offsets)}
    h.update(extra or {})
    return json.dumps(h).encode()


@pytest.mark.parametrize(
    "write, pattern",
    [
        (lambda p: _write_raw(p, b"{}", b"", n=200_000_000),
         r"model\.safetensors: not a valid safetensors file: header length 200000000 exceeds the 100000000-byte limit; "
         r"the file is corrupt or not safetensors"),
        (lambda p: _write_raw(p, _tensor_header(), b"\0" * 16, n=5000),
         r"model\.safetensors: not a valid safetensors file: header length 5000 runs past the end of the \d+-byte "
         r"file; the file is truncated or not safetensors"),
        (lambda p: p.write_bytes(b"\x01\x02"),
         r"not a valid safetensors file: file is 2 bytes, shorter than the 8-byte header length"),
        (lambda p: _write_raw(p, _tensor_header(meta={"format": "pt", "step": 5}), b"\0" * 16),
         r"not a valid safetensors file: __metadata__ value for 'step' must be a string, found 5; "
         r"re-save the file with string metadata"),
        (lambda p: _write_raw(p, _tensor_header(meta=["pt"]), b"\0" * 16),
         r"not a valid safetensors file: __metadata__ must be an object of strings, found list"),
        (lambda p: _write_raw(p, b'[{"a": 1}]', b""),
         r"not a valid safetensors file: header must start with '\{', found '\['"),
        (lambda p: _write_raw(p, b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "a": {}}',
                              b"\0" * 16),
         r"not a valid safetensors file: duplicate key 'a' in the header JSON; re-save the file"),
        (lambda p: _write_raw(p, b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', b"\0" * 16),
         r"not a valid safetensors file: malformed header JSON"),
        (lambda p: _write_raw(p, _tensor_header(), b"\0" * 20),
         r"not a valid safetensors file: tensors cover 16 data bytes but the file holds 20; "
         r"the file is truncated or has trailing bytes"),
        (lambda p: _write_raw(p, _tensor_header(offsets=(4, 20)), b"\0" * 20),
         r"not a valid safetensors file: tensor 'a' starts at data offset 4 and leaves a hole at 0"),
        (lambda p: _write_raw(p, _tensor_header(offsets=(0, 12)), b"\0" * 12),
         r"not a valid safetensors file: tensor 'a' \(F32 \[4\]\) needs 16 bytes but data_offsets span 12"),
        (lambda p: _write_raw(p, _tensor_header(extra={"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}),
                              b"\0" * 16),
         r"not a valid safetensors file: tensor 'b' starts at data offset 8 and overlaps the previous tensor"),
        (lambda p: _write_raw(p, _tensor_header(extra={"b": {"dtype": "Q4", "shape": [2], "data_offsets": [16, 18]}}),
                              b"\0" * 18),
         r"not a valid safetensors file: tensor 'b' has unknown dtype 'Q4'"),
    ],
)
def test_bad_safetensors(tmp_path, write, pattern):
    d = make_model(tmp_path / "m")
    write(d / "model.safetensors")
    before = snapshot(d)
    raises_one_line(FormatError, pattern, patch_hf, str(d), N, "ntk")
    raises_one_line(FormatError, pattern, inspect_hf, str(d))
    assert snapshot(d) == before


def test_bad_shard_in_a_sharded_model_writes_nothing(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    second = d / "model-00002-of-00002.safetensors"
    raw = bytearray(second.read_bytes())
    second.write_bytes(bytes(raw[:-3]))  # truncated
    before = snapshot(d)
    raises_one_line(FormatError,
                    r"model-00002-of-00002\.safetensors: not a valid safetensors file: tensors cover \d+ data bytes "
                    r"but the file holds \d+",
                    patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before


def test_index_errors(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    os.remove(d / "model-00002-of-00002.safetensors")
    before = snapshot(d)
    raises_one_line(FormatError,
                    r"model\.safetensors\.index\.json: lists 1 shard\(s\) missing from .*/m: "
                    r"model-00002-of-00002\.safetensors; download them or fix the index",
                    patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before
    (d / hk.INDEX_NAME).write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors",}}')
    raises_one_line(FormatError,
                    r"model\.safetensors\.index\.json: not valid JSON: .*; fix or re-download it",
                    patch_hf, str(d), N, "ntk")
    (d / hk.INDEX_NAME).write_text('{"weight_map": {"a": "../x.safetensors"}}')
    raises_one_line(FormatError,
                    r"shard name '\.\./x\.safetensors' is not a plain file name", patch_hf, str(d), N, "ntk")


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        ({"ctx": 128}, UsageError, r"--ctx must be larger than the model's original context 128, found 128"),
        ({"ctx": 512, "alpha": float("nan")}, UsageError, r"--alpha must be a finite number >= 1, found nan"),
        ({"ctx": 512, "method": "rope9"}, UsageError,
         r"unknown method 'rope9': expected one of ntk, dynamic, linear, yarn, none"),
    ],
)
def test_bad_arguments(tmp_path, kw, exc, pattern):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    raises_one_line(exc, pattern, patch_hf, str(d), **kw)
    assert snapshot(d) == before


def test_bad_paths(tmp_path):
    raises_one_line(UsageError, r"/nope: no such file or directory", patch_hf, str(tmp_path / "nope"), N)
    (tmp_path / "x.txt").write_text("x")
    raises_one_line(UsageError,
                    r"x\.txt: expected a Hugging Face model directory \(config\.json \+ \*\.safetensors\) or a "
                    r"\.safetensors file with config\.json beside it",
                    patch_hf, str(tmp_path / "x.txt"), N)


def test_config_edited_after_patch(tmp_path):
    d = make_model(tmp_path / "m")
    patch_hf(str(d), N, "ntk")
    cfg = cfg_of(d)
    cfg["torch_dtype"] = "bfloat16"
    write_config(d, cfg)
    before = snapshot(d)
    raises_one_line(UsageError,
                    r"config\.json: changed since ropepatch patched it \(sha256 [0-9a-f]{12} matches neither the "
                    r"patched nor the original text\); reverting would discard that change: undo it, or pass --force "
                    r"\(force=True\) to discard it",
                    revert_hf, str(d))
    raises_one_line(UsageError, r"patching would discard that change", patch_hf, str(d), N, "yarn")
    assert snapshot(d) == before
    assert any("changed since ropepatch patched it" in m for m in inspect_hf(str(d)).messages)
    revert_hf(str(d), force=True)
    assert cfg_of(d) == llama_config()


def test_tampered_record(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    save_file(tensors(), str(st), metadata={"format": "pt", hk.RP_ORIGINAL: "{not json"})
    raises_one_line(FormatError,
                    r"model\.safetensors: ropepatch\.original is not valid JSON \(.*\); the header was edited by "
                    r"another tool: restore the file from its source",
                    revert_hf, str(d))


def test_registry_rope_types_are_the_hf_spellings():
    """Each method's HF rope_type (registry data) is one of the rope_type values read back."""
    known = {v for k, v in vars(hk).items() if k.startswith("RT_")}
    assert set(hk.METHOD_ROPE_TYPE.values()) <= known
    assert {hk.METHOD_ROPE_TYPE[m] for m in hk.ROPE_TYPE_METHOD.values()} == set(hk.ROPE_TYPE_METHOD)


@pytest.mark.parametrize("field,value,expected", [
    ("header_length", 10**12, r"an integer from 2 to 100000000, found 1000000000000"),
    ("header_length", "64", r"an integer from 2 to 100000000, found \"64\""),
    ("pad", "x", r"a string of spaces, tabs and line breaks, or null, found \"x\""),
    ("config", None, r"a string, found null"),
    ("link", 3, r"a symlink target \(1 to 4096 characters, no NUL\) or null, found 3"),
])
def test_bad_record_field_refused_before_writing(tmp_path, field, value, expected):
    d = make_model(tmp_path / "m")
    patch_hf(str(d), N, "yarn")
    st = d / "model.safetensors"
    meta = dict(read_header(str(st)).metadata)
    rec = json.loads(meta[hk.RP_ORIGINAL])
    # the record text ropepatch wrote is exactly the compact spelling of its fields
    assert json.dumps(rec, separators=(",", ":"), ensure_ascii=False) == meta[hk.RP_ORIGINAL]
    rec[field] = value
    meta[hk.RP_ORIGINAL] = json.dumps(rec)
    save_file(load_file(str(st)), str(st), metadata=meta)
    before = snapshot(d)
    pattern = (rf"model\.safetensors: ropepatch\.original field '{field}': expected {expected}; "
               r"the header was edited by another tool: restore the file from its source")
    raises_one_line(FormatError, pattern, revert_hf, str(d))
    raises_one_line(FormatError, pattern, patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before


def test_errors_are_ropepatch_errors():
    assert issubclass(FormatError, RopepatchError) and issubclass(UsageError, RopepatchError)
