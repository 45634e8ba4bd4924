"""Bad input: one clear line (file, key, expected, found, what to do), exit code 2, no
traceback, nothing written. Messages are pinned."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess

import pytest
from conftest import build_gguf, llama_kvs, run_cli, sha256

from ropepatch.errors import FormatError, UnsupportedModelError, UsageError, WriteError
from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.patch import gguf as gp


@pytest.fixture
def assert_one_line_error(cli):
    """``check(path, args, pattern)``: the CLI (run in process) fails with exactly one stderr
    line matching ``pattern`` and writes nothing."""

    def check(path, args, pattern):
        before = sha256(path) if os.path.isfile(path) else None
        listing = sorted(os.listdir(os.path.dirname(path) or "."))
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("ropepatch: error: ")
        assert "Traceback" not in r.stderr
        assert re.search(pattern, lines[0]), lines[0]
        if before is not None:
            assert sha256(path) == before
        assert sorted(os.listdir(os.path.dirname(path) or ".")) == listing

    return check


@pytest.fixture
def good(tmp_path):
    return build_gguf(tmp_path / "m.gguf", llama_kvs())


def test_not_a_gguf(tmp_path, assert_one_line_error):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip")
    assert_one_line_error(str(p), ["gguf", str(p), "--ctx", "512"],
                          r"x\.gguf: not a GGUF file: expected magic b'GGUF' at offset 0, found b'PK\\x03\\x04'")


def test_empty_file(tmp_path, assert_one_line_error):
    p = tmp_path / "e.gguf"
    p.write_bytes(b"")
    assert_one_line_error(str(p), ["inspect", str(p)], r"e\.gguf: not a GGUF file: the file is empty")


def test_missing_file(tmp_path):
    """Through the real entry point (a new ``python -m ropepatch`` process): exit status 2."""
    p = str(tmp_path / "nope.gguf")
    r = run_cli("gguf", p, "--ctx", "512")
    assert r.returncode == 2 and "nope.gguf: no such file" in r.stderr


def test_truncated(good, assert_one_line_error):
    data = open(good, "rb").read()
    with open(good, "wb") as f:
        f.write(data[:100])
    assert_one_line_error(good, ["gguf", good, "--ctx", "512"],
                          r"m\.gguf: truncated or corrupt GGUF header: .* needs "
                          r"\d+ bytes at offset \d+, only \d+ remain")


def test_truncated_data(good, assert_one_line_error):
    data = open(good, "rb").read()
    with open(good, "wb") as f:
        f.write(data[:-16])
    assert_one_line_error(good, ["gguf", good, "--ctx", "512"],
                          r"tensor 'token_embd.weight' .* lies outside the \d+ data bytes")


def test_unsupported_version(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "v1.gguf", llama_kvs(), version=1)
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"], r"unsupported GGUF version 1: expected 2 or 3")


def test_big_endian(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "be.gguf", llama_kvs())
    with open(p, "r+b") as f:
        f.seek(4)
        f.write(struct.pack(">I", 3))
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"], r"big-endian GGUF \(version 3\) is not supported")


def test_absurd_counts_do_not_allocate(tmp_path, good, assert_one_line_error):
    # n_kv = 2^63: must be rejected from the size check, not by trying to read that many
    with open(good, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<Q", 1 << 63))
    assert_one_line_error(good, ["gguf", good, "--ctx", "512"], r"9223372036854775808 metadata entries needs \d+ bytes")


def test_absurd_string_length(good, assert_one_line_error):
    data = bytearray(open(good, "rb").read())
    at = 24  # first key's length field
    data[at : at + 8] = struct.pack("<Q", (1 << 62))
    open(good, "wb").write(data)
    assert_one_line_error(good, ["gguf", good, "--ctx", "512"],
                          r"key of metadata entry 0 needs 4611686018427387904 bytes")


def test_absurd_array_count(tmp_path, assert_one_line_error):
    from ropepatch.formats.gguf.header import encode_value

    p = build_gguf(tmp_path / "a.gguf",
                   llama_kvs(extra=[("tokenizer.ggml.scores", T.ARRAY, (T.FLOAT32, b"\0" * 8, 2))]))
    data = bytearray(open(p, "rb").read())
    at = data.index(b"tokenizer.ggml.scores") + len("tokenizer.ggml.scores") + 4 + 4
    data[at : at + 8] = struct.pack("<Q", 1 << 60)
    open(p, "wb").write(data)
    assert encode_value  # imported for symmetry with the writer
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"array of 1152921504606846976 elements in 'tokenizer.ggml.scores'")


def test_unknown_value_type(good, assert_one_line_error):
    data = bytearray(open(good, "rb").read())
    at = data.index(b"general.architecture") + len("general.architecture")
    data[at : at + 4] = struct.pack("<I", 77)
    open(good, "wb").write(data)
    assert_one_line_error(good, ["gguf", good, "--ctx", "512"],
                          r"key 'general.architecture' has unknown value type 77 \(expected 0..12\)")


def test_architecture_without_rope(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "g.gguf", llama_kvs(arch="gpt2"))
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"architecture 'gpt2' does not use rotary position embeddings")


def test_missing_architecture(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "n.gguf", llama_kvs()[1:])
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"], r"missing key 'general.architecture'")


def test_odd_rotary_dims(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "o.gguf", llama_kvs(rope_dim=15))
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"key 'llama.rope.dimension_count': "
                          r"expected an even number of rotary dims > 2 and <= the head dim \(16\), found 15")


def test_missing_rotary_dims_and_head_info(tmp_path, assert_one_line_error):
    kvs = [kv for kv in llama_kvs(rope_dim=None) if "embedding_length" not in kv[0]]
    p = build_gguf(tmp_path / "r.gguf", kvs)
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"cannot find the rotary dimension count: 'llama.rope.dimension_count' is missing")


def test_wrong_key_type(tmp_path, assert_one_line_error):
    kvs = [kv for kv in llama_kvs() if "freq_base" not in kv[0]] + [("llama.rope.freq_base", T.FLOAT64, 10000.0)]
    p = build_gguf(tmp_path / "t.gguf", kvs)
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"key 'llama.rope.freq_base': expected type FLOAT32 \(llama.cpp requires it\), found FLOAT64")


def test_unknown_scaling_type(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "s.gguf", llama_kvs(extra=[("llama.rope.scaling.type", T.STRING, "dynamic")]))
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"expected one of none, linear, yarn, longrope, found 'dynamic' \(llama.cpp aborts on it\)")


def test_ctx_not_larger(good, assert_one_line_error):
    assert_one_line_error(good, ["gguf", good, "--ctx", "128"],
                          r"m\.gguf: --ctx must be larger than the model's original context 128, found 128")


@pytest.mark.parametrize("alpha", ["nan", "-2", "0.5", "inf"])
def test_bad_alpha(good, alpha, assert_one_line_error):
    assert_one_line_error(good, ["gguf", good, "--ctx", "512", "--alpha", alpha],
                          r"--alpha must be a finite number >= 1, found")


def test_output_equal_to_input(good, assert_one_line_error):
    assert_one_line_error(good, ["gguf", good, "--ctx", "512", "-o", good], r"-o/--output names the input file itself")


def test_existing_scaling_refused(tmp_path, cli, assert_one_line_error):
    p = build_gguf(tmp_path / "y.gguf", llama_kvs(extra=[
        ("llama.rope.scaling.type", T.STRING, "yarn"), ("llama.rope.scaling.factor", T.FLOAT32, 4.0)]))
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"already uses yarn rope scaling \(factor 4\); "
                          r"ntk cannot compose with it: pass --replace-scaling")
    r = cli("gguf", p, "--ctx", "512", "--replace-scaling")
    assert r.returncode == 0, r.stderr
    cur = gp.inspect_gguf(p).current
    assert cur.scaling_type.value == "none" and cur.freq_base > 10000


def test_freq_factor_tensor_refused(tmp_path, assert_one_line_error):
    p = build_gguf(tmp_path / "l3.gguf", llama_kvs(),
                   tensors=[("token_embd.weight", (8, 4), 0), ("rope_freqs.weight", (8,), 0)])
    assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                          r"per-pair rope frequency factors \(llama3's rope_freqs or LongRoPE's")


@contextlib.contextmanager
def read_only(path):
    """Make ``path`` read-only even for root: chmod, plus the immutable attribute as root."""
    mode = os.stat(path).st_mode
    os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)
    immutable = False
    if os.access(path, os.W_OK):  # root: permissions are not enforced
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            os.chmod(path, mode)
            pytest.skip("cannot make a file read-only for root here (no chattr)")
        immutable = True
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        os.chmod(path, mode)


def test_read_only_file(good, assert_one_line_error):
    with read_only(good):
        assert_one_line_error(good, ["gguf", good, "--ctx", "512"],
                              r"m\.gguf: file is read-only; make it writable \(chmod u\+w\) "
                              r"or write a copy with -o OUT")


def test_read_only_directory(tmp_path, cli, assert_one_line_error):
    d = tmp_path / "ro"
    d.mkdir()
    p = build_gguf(d / "m.gguf", llama_kvs())
    with read_only(d):
        assert_one_line_error(p, ["gguf", p, "--ctx", "512"],
                              r"directory .*ro is read-only; write a patched copy elsewhere with -o OUT")
    # -o to a writable place works and leaves the input as it was
    out = str(tmp_path / "copy.gguf")
    before = sha256(p)
    with read_only(d):
        r = cli("gguf", p, "--ctx", "512", "-o", out)
    assert r.returncode == 0, r.stderr
    assert sha256(p) == before and gp.inspect_gguf(out).current.n_ctx_train == 512


def test_not_enough_space_is_checked_before_writing(tmp_path):
    from ropepatch.safeio.files import check_space

    with pytest.raises(WriteError, match=r"needs .* MiB free in .* for the rewrite, found .* MiB"):
        check_space(str(tmp_path), 1 << 62, "m.gguf")


def test_library_errors_are_one_family(good, tmp_path):
    from ropepatch import RopepatchError

    for exc in (FormatError, UnsupportedModelError, UsageError, WriteError):
        assert issubclass(exc, RopepatchError)
    with pytest.raises(RopepatchError):
        gp.patch_gguf(good, 64)


def test_unknown_method_and_bad_numbers(good, cli):
    r = cli("gguf", good, "--ctx", "abc")
    assert r.returncode == 2 and "expected a whole number of tokens, found 'abc'" in r.stderr
    r = cli("gguf", good, "--ctx", "512", "--method", "dynamo")
    assert r.returncode == 2 and "invalid choice: 'dynamo'" in r.stderr
