"""Shared test helpers: paths of the committed fixtures and a tiny synthetic GGUF builder."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# helper modules that the test files of one folder share (tests/*/_helpers_*.py, imported by
# name): pytest rewrites their asserts too, so a failing check there explains itself
pytest.register_assert_rewrite("_helpers_eval", "_helpers_fixtures", "_helpers_gguf_hostile", "_helpers_hf",
                               "_helpers_hf_hostile")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GGUF_FIXTURES = [
    "tiny-llama-f32.gguf",
    "tiny-llama-q8_0.gguf",
    "tiny-qwen2-f32.gguf",
    "tiny-qwen2-q8_0.gguf",
]


EXTRAS = {"torch": "hf-test", "transformers": "hf-test"}  # else the "test" extra


def require(module: str):
    """Import a module the suite needs (the README's test command installs it). A missing or
    broken install FAILS the run with one line saying what to install: it is never a skip."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or OSError from a broken llama-cpp-python build
        extra = EXTRAS.get(module, "test")
        pytest.fail(f"{module} is required by the test suite and does not import ({type(exc).__name__}: "
                    f"{exc}); install it: pip install -e '.[{extra}]'", pytrace=False)
    if module == "llama_cpp":
        _llama_defaults_as_ropepatch_loads(mod)
    return mod


def _llama_defaults_as_ropepatch_loads(llama_cpp) -> None:
    """Tests that call ``llama_cpp.Llama`` directly load as ropepatch's binding does: without
    weight repacking where :func:`ropepatch.runtime.binding.repack_off` says so (a CPU with AMX,
    whose repacked kernels SIGSEGV the whole test process on some hosts: llama.cpp #20824;
    measured on a Xeon VM with the Q8_0 fixtures). Elsewhere nothing changes."""
    from ropepatch.runtime.binding import repack_off

    low = llama_cpp.llama_cpp  # the module whose default params ``Llama.__init__`` asks for
    if not repack_off() or getattr(low, "_ropepatch_no_repack", False):
        return
    plain = low.llama_model_default_params

    def defaults():
        params = plain()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = defaults
    low._ropepatch_no_repack = True


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def copy_fixture(tmp_path):
    """Copy a committed fixture into tmp_path (tests never modify fixtures/)."""

    def _copy(name: str, dest_name: str | None = None) -> str:
        dst = tmp_path / (dest_name or name)
        shutil.copyfile(FIXTURES / name, dst)
        return str(dst)

    return _copy


def one_line(r, *texts) -> str:
    """The CLI result ``r`` failed with exit status 2 and one ``ropepatch: error:`` line holding
    each of ``texts``; returns that line."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("ropepatch: error: ") and "Traceback" not in r.stderr
    for t in texts:
        assert t in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A private temporary directory for ropepatch's temporary model copies (other test runs
    may share /tmp): ``tempfile``'s directory and ``$TMPDIR`` point at it."""
    import tempfile

    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    return d


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m ropepatch ARGS`` as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "ropepatch", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )


@dataclass(frozen=True)
class CliResult:
    """What one command line produced: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run ``ropepatch ARGS`` in this process (``ropepatch.cli.main``): :func:`run_cli` without a
    new interpreter, for tests that do not need a real process; argparse's exits (``-h``,
    usage errors) become the exit status."""
    from ropepatch.cli import main

    def _run(*args: str) -> CliResult:
        capsys.readouterr()  # drop what the test printed before
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = 0 if e.code is None else e.code
        out = capsys.readouterr()
        return CliResult(rc, out.out, out.err)

    return _run


# ---- synthetic GGUF files (for header-level tests; not loadable by llama.cpp) ---------------


def build_gguf(path, kvs, tensors=(("token_embd.weight", (8, 4), 0),), version=3, alignment=32,
               data_fill=b"\x11") -> str:
    """Write a GGUF with metadata ``kvs`` = [(key, ValueType, value)] and F32 tensors of
    ``(name, shape, ggml_type)``, through ropepatch's own encoder."""
    from ropepatch.formats.gguf.header import GGML_BLOCK_SIZES, make_kv, serialize_header

    entries = [make_kv(k, t, v) for k, t, v in kvs]
    infos, offset, blobs = b"", 0, []
    for name, shape, gt in tensors:
        block, size = GGML_BLOCK_SIZES[gt]
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block * size
        nb = name.encode()
        infos += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in shape)
        infos += struct.pack("<IQ", gt, offset)
        blobs.append((offset, data_fill * nbytes))
        offset += -(-nbytes // alignment) * alignment
    head = serialize_header(version, entries, infos, len(tensors))
    head += bytes(-len(head) % alignment)
    data = bytearray(offset)
    for off, blob in blobs:
        data[off : off + len(blob)] = blob
    with open(path, "wb") as f:
        f.write(head + bytes(data))
    return str(path)


def llama_kvs(arch="llama", ctx=128, base=10000.0, rope_dim=16, extra=()):
    from ropepatch.formats.gguf.keys import ValueType as T

    kvs = [
        ("general.architecture", T.STRING, arch),
        ("general.name", T.STRING, "synthetic"),
        (f"{arch}.context_length", T.UINT32, ctx),
        (f"{arch}.embedding_length", T.UINT32, 64),
        (f"{arch}.attention.head_count", T.UINT32, 4),
        (f"{arch}.rope.freq_base", T.FLOAT32, base),
    ]
    if rope_dim is not None:
        kvs.append((f"{arch}.rope.dimension_count", T.UINT32, rope_dim))
    return kvs + list(extra)
