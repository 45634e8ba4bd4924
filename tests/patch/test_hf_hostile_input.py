"""Hugging Face models as hostile input (#12): special files and bounded reads, and OS errors.

1. FIFOs, devices and directories are refused before any open that could block, JSON is capped
   in size and decoded by the one hostile-input decoder;
2. every OS error is one line, names escaped.

Real files, the CLI in process; a FIFO that could hang fails the test instead (``no_hang``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from _helpers_hf_hostile import SHARD, model, one_line_error, patched, snapshot
from safetensors.numpy import load_file, save_file

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import inspect_hf


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when a call blocks, e.g. on a FIFO."""
    def _alarm(*_):
        raise TimeoutError("blocked: a special file was opened")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---- 1. special files, bounded reads, hostile JSON ----------------------------------------------


def _swap_for_fifo(p: Path) -> None:
    if p.exists():
        p.unlink()
    os.mkfifo(p)


@pytest.mark.parametrize("name, kind", [
    ("config.json", "FIFO"), ("model.safetensors", "FIFO"), ("model.safetensors.index.json", "FIFO"),
    ("config.json", "directory"), ("model.safetensors", "character device"), ("extra.safetensors", "FIFO"),
])
def test_special_files_are_refused_before_any_open(tmp_path, cli, no_hang, name, kind):
    d = model(tmp_path)
    p = d / name
    if kind == "FIFO":
        _swap_for_fifo(p)
    elif kind == "directory":
        p.unlink()
        p.mkdir()
    else:
        p.unlink()
        p.symlink_to("/dev/zero")
    before = snapshot(d)
    for args in (["inspect", str(d)], ["hf", str(d), "--ctx", "4096"], ["revert", str(d)]):
        one_line_error(cli(*args), f"{name}: expected a regular", kind)
    assert snapshot(d) == before


@pytest.mark.parametrize("source", ["fifo", "/dev/zero", "/dev/null", "dir"])
def test_from_hf_special_file_is_refused_at_once(tmp_path, cli, no_hang, copy_fixture, source):
    g = copy_fixture("tiny-llama-f32.gguf")
    src = {"fifo": str(tmp_path / "cfg"), "dir": str(tmp_path)}.get(source, source)
    if source == "fifo":
        os.mkfifo(src)
    one_line_error(cli("gguf", g, "--from-hf", src), "expected a regular config.json")


def test_config_size_is_capped(tmp_path, cli):
    d = model(tmp_path)
    with open(d / "config.json", "a") as f:
        f.write(" " * (hk.CONFIG_MAX_BYTES + 1))
    one_line_error(cli("hf", str(d), "--ctx", "4096"), f"at most {hk.CONFIG_MAX_BYTES} bytes are read")


def _config_text(d: Path) -> str:
    return (d / "config.json").read_text()


@pytest.mark.parametrize("mutate, found", [
    (lambda t: '{"a":' + "[" * 100_000 + "]" * 100_000 + "}", "nesting"),
    (lambda t: t.rstrip()[:-1] + ', "x": ' + "7" * 5000 + "}", "too many digits"),
    (lambda t: t.replace('"model_type": "llama"', '"model_type": "llama\\ud800"'), "unpaired surrogate"),
    (lambda t: t.replace('"head_dim": 16', '"head_dim": ' + "1" + "0" * 400), "head_dim must be at most"),
    (lambda t: t.replace('"max_position_embeddings": 128', '"max_position_embeddings": ' + "9" * 40),
     "max_position_embeddings must be at most"),
    (lambda t: t.replace('"rope_scaling": null', '"rope_scaling": {"rope_type": "linear", "factor": 1e308}'),
     "factor must be at most"),
])
def test_hostile_config_json_is_one_line(tmp_path, cli, mutate, found):
    d = model(tmp_path)
    text = mutate(_config_text(d))
    assert text != _config_text(d)
    (d / "config.json").write_text(text)
    before = snapshot(d)
    for args in (["inspect", str(d)], ["hf", str(d), "--ctx", "4096"], ["plan", str(d), "--ctx", "4096"]):
        one_line_error(cli(*args), found)
    assert snapshot(d) == before


@pytest.mark.parametrize("text, found", [
    ("[" * 100_000 + "]" * 100_000, "nesting"),
    ('{"weight_map": {"a": ' + "1" * 5000 + "}}", "too many digits"),
    ('{"weight_map": {"a": "m\\ud800.safetensors"}}', "unpaired surrogate"),
    ('{"weight_map": {"a": "a\\u0000b"}}', "is not a plain file name"),
])
def test_hostile_index_json_is_one_line(tmp_path, cli, text, found):
    d = model(tmp_path)
    (d / hk.INDEX_NAME).write_text(text)
    one_line_error(cli("hf", str(d), "--ctx", "4096"), found)


@pytest.mark.parametrize("value", ["²", "١٢", "9" * 5000, "12\n"])
def test_hostile_ctx_in_shard_metadata(tmp_path, cli, value):
    """``int("²")`` raises and ``int("١٢")`` is 12: inspect shows any non-ASCII-decimal value as
    the string it is, and patch / revert are unaffected."""
    d = patched(tmp_path)
    p = str(d / SHARD)
    meta = dict(read_header(p).metadata)
    meta[hk.RP_CTX] = value
    save_file(load_file(p), p, metadata=meta)
    r = cli("inspect", str(d), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["record"]["ctx"] == value
    assert cli("inspect", str(d)).returncode == 0
    assert cli("revert", str(d)).returncode == 0


def test_shard_header_with_unpaired_surrogate_metadata(tmp_path, cli):
    d = model(tmp_path)
    h = b'{"__metadata__":{"format":"pt","x":"\\ud800"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (d / SHARD).write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 4)
    one_line_error(cli("hf", str(d), "--ctx", "4096"), "unpaired surrogate")


# ---- 2. every OS error is one line --------------------------------------------------------------------


def test_os_errors_are_one_line_with_escaped_names(tmp_path, cli):
    d = model(tmp_path)
    (tmp_path / "afile").write_text("x")
    os.symlink("loop", tmp_path / "loop")
    odd = tmp_path / "a\nb"
    shutil.copytree(d, odd)
    (odd / "config.json").unlink()
    cases = [
        (["hf", str(tmp_path / "nope"), "--ctx", "4096"], "nope: no such file or directory"),
        (["hf", str(tmp_path / "nope"), "--ctx", "4096", "-o", str(tmp_path)], "no such file or directory"),
        (["hf", str(tmp_path / "afile" / "m"), "--ctx", "4096"], "a component of the path is not a directory"),
        (["revert", str(tmp_path / "afile" / "config.json")], "a component of the path is not a directory"),
        (["hf", str(tmp_path / "loop"), "--ctx", "4096"], "too many levels of symbolic links"),
        (["inspect", str(tmp_path / "loop" / "config.json")], "too many levels of symbolic links"),
        (["hf", str(tmp_path / ("x" * 300)), "--ctx", "4096"], "file name too long"),
        (["hf", str(d), "--ctx", "4096", "-o", str(tmp_path / ("y" * 300))], "file name too long"),
        (["hf", str(odd), "--ctx", "4096"], "a\\nb: no config.json"),
        (["hf", str(tmp_path / "x\ny"), "--ctx", "4096"], "x\\ny: no such file or directory"),
    ]
    before = snapshot(d)
    for args, part in cases:
        one_line_error(cli(*args), part)
    assert snapshot(d) == before


def test_config_symlink_loop_and_dangling_shard(tmp_path, cli):
    d = model(tmp_path)
    (d / "config.json").unlink()
    os.symlink("config.json", d / "config.json")
    one_line_error(cli("hf", str(d), "--ctx", "4096"), "config.json: cannot read the config.json: too many levels")
    d = model(tmp_path, "m2")
    os.symlink("nowhere", d / "b.safetensors")
    one_line_error(cli("inspect", str(d)), "b.safetensors: cannot read the safetensors file: no such file")
    assert inspect_hf  # the library entry point the CLI calls
