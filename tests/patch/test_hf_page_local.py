"""In-place re-patches of safetensors shard headers are page-local, as GGUF re-patches are.

After the first patch, ropepatch's changing ``__metadata__`` entries sit before a
``ropepatch.reserved`` filler that keeps the metadata text the same length, so every in-place
write of a re-patch is one ``pwrite`` of one run inside one 4 KiB page of the file (a kill -9
leaves it all old or all new). When the changed run would span two pages, the shard is written
by the atomic rewrite instead, never by a multi-page ``pwrite``. Real files only: the committed
fixture, and a shard built from it whose own metadata pushes ropepatch's entries across a page
boundary. The ``os.pwrite`` spy only records the calls; it changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, require, sha256
from safetensors import safe_open
from safetensors.numpy import load_file

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import RP_PREVIOUS_CONFIG_SHA256, inspect_hf, patch_hf, revert_hf

FIXTURE = FIXTURES / "hf" / "tiny-llama"
SHARD = "model.safetensors"
PAGE = 4096

# (ctx, method): methods change, and the printed ctx / alpha change length (1024 -> 16384 ->
# 2048, alpha 8.0 -> 128.0 -> 16.0 ...), the last one repeats an earlier one
REPATCHES = [
    (16384, "ntk"),
    (2048, "yarn"),
    (1024, "linear"),
    (16384, "dynamic"),
    (2048, "dynamic"),
    (100000, "yarn"),
    (4096, "ntk"),
    (2048, "yarn"),
]


def _copy(tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURE, d)
    return d


def _shas(d: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(d.iterdir())}


def _diff_pages(before: bytes, after: bytes) -> tuple[int, int, set[int]]:
    assert len(before) == len(after)
    idx = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
    assert idx.size, "nothing changed"
    return int(idx[0]), int(idx[-1]), {int(i) // PAGE for i in idx}


@pytest.fixture
def pwrites(monkeypatch):
    """Every os.pwrite as (file name, offset, length), in call order."""
    calls: list[tuple[str, int, int]] = []
    real = os.pwrite

    def spy(fd, data, offset):
        calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    return calls


def test_repatches_are_one_pwrite_inside_one_page(tmp_path, pwrites):
    d = _copy(tmp_path)
    st = d / SHARD
    pristine = _shas(d)
    r = patch_hf(str(d), 1024, "yarn")
    assert [f.action for f in r.files] == ["rewrite", "rewrite"]  # the first patch grows the header
    n = read_header(str(st)).header_length
    ino = os.stat(st).st_ino
    for ctx, method in REPATCHES:
        before = st.read_bytes()
        pwrites.clear()
        r = patch_hf(str(d), ctx, method)
        after = st.read_bytes()
        assert r.files[0].action == "in-place", (ctx, method)
        assert os.stat(st).st_ino == ino and read_header(str(st)).header_length == n
        first, last, pages = _diff_pages(before, after)
        assert len(pages) == 1, (ctx, method, first, last)
        assert last < 8 + n  # header bytes only, the tensor data is untouched
        # the shard is written twice (with, then without the previous-config entry), each time
        # one pwrite of a run of at most 300 bytes inside one page; nothing else is pwritten
        # in place (config.json is a temp file + rename)
        shard_writes = [(o, k) for name, o, k in pwrites if name == SHARD]
        assert len(shard_writes) == 2, pwrites
        for o, k in shard_writes:
            assert 0 < k <= 300 and o // PAGE == (o + k - 1) // PAGE, (ctx, method, o, k)
        meta = dict(read_header(str(st)).metadata)
        assert meta[hk.RP_METHOD] == method and meta[hk.RP_CTX] == str(ctx)
        assert set(meta[hk.RP_RESERVED]) == {" "}
    rv = revert_hf(str(d))
    assert rv.changed
    assert _shas(d) == pristine


def test_metadata_layout_and_same_length_for_every_patch(tmp_path, cli):
    d = _copy(tmp_path)
    st = d / SHARD
    patch_hf(str(d), 1024, "yarn")
    h = read_header(str(st))
    keys = list(h.metadata)
    assert keys == ["format", hk.RP_VERSION, hk.RP_METHOD, hk.RP_CTX, hk.RP_ALPHA,
                    hk.RP_CONFIG_SHA256, hk.RP_RESERVED, hk.RP_ORIGINAL]
    assert h.metadata_span[0] < PAGE  # the fixture's metadata is the first header entry
    length = len(h.metadata_text.encode())
    for ctx, method in REPATCHES:
        patch_hf(str(d), ctx, method)
        h = read_header(str(st))
        assert len(h.metadata_text.encode()) == length
        assert RP_PREVIOUS_CONFIG_SHA256 not in h.metadata
    # what safetensors (and so transformers) reads: string values, format pt
    with safe_open(str(st), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and all(isinstance(v, str) for v in meta.values())
    # the filler stays out of inspect
    info = inspect_hf(str(d))
    assert hk.RP_RESERVED not in info.shards[0].metadata
    p = cli("inspect", str(d), "--json")
    assert p.returncode == 0, p.stderr
    assert hk.RP_RESERVED not in p.stdout and hk.RP_ORIGINAL not in p.stdout


def test_patch_twice_equals_patch_once_byte_for_byte(tmp_path):
    once = _copy(tmp_path, "once")
    many = _copy(tmp_path, "many")
    patch_hf(str(once), 2048, "yarn")
    patch_hf(str(many), 1024, "yarn")
    for ctx, method in REPATCHES:  # ends with 2048 yarn
        patch_hf(str(many), ctx, method)
    assert _shas(once) == _shas(many)
    r = patch_hf(str(many), 2048, "yarn")
    assert not r.changed


def _with_metadata(src: Path, dst: Path, metadata_text: str) -> None:
    """Write ``src`` to ``dst`` with its ``__metadata__`` value replaced by ``metadata_text``
    (header padded with spaces to a multiple of 8, as the safetensors writer does)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = raw[8 : 8 + n].decode().rstrip(" ")
    old = '{"__metadata__":{"format":"pt"}'
    assert head.startswith(old)
    head = '{"__metadata__":' + metadata_text + head[len(old) :]
    head += " " * (-len(head) % 8)
    dst.write_bytes(struct.pack("<Q", len(head)) + head.encode() + raw[8 + n :])


def _straddling_model(tmp_path: Path, name: str) -> Path:
    """The fixture with a ``note`` metadata entry long enough that, after the first patch,
    ropepatch's method value starts 40 bytes before the end of the file's first page: the run
    a re-patch changes (method ... filler) then spans two pages."""
    probe = _copy(tmp_path, name + "-probe")
    patch_hf(str(probe), 1024, "yarn")
    h = read_header(str(probe / SHARD))
    at = 8 + h.text.encode().index(b'"ropepatch.method":"') + len('"ropepatch.method":"')
    shutil.rmtree(probe)
    d = _copy(tmp_path, name)
    entry = len(',"note":""')
    note = "x" * (PAGE - 40 - at - entry)
    _with_metadata(FIXTURE / SHARD, d / SHARD, json.dumps({"format": "pt", "note": note}, separators=(",", ":")))
    return d


def test_change_across_a_page_boundary_is_an_atomic_rewrite(tmp_path, pwrites):
    d = _straddling_model(tmp_path, "m")
    st = d / SHARD
    pristine = _shas(d)
    tensors = load_file(str(st))
    patch_hf(str(d), 1024, "yarn")
    h1 = read_header(str(st))
    at = 8 + h1.text.encode().index(b'"ropepatch.method":"yarn"') + len('"ropepatch.method":"')
    assert at == PAGE - 40
    before = st.read_bytes()
    ino = os.stat(st).st_ino
    pwrites.clear()
    r = patch_hf(str(d), 16384, "ntk")
    assert r.files[0].action == "rewrite"
    after = st.read_bytes()
    _, _, pages = _diff_pages(before, after)
    assert pages == {0, 1}  # the change spans two pages ...
    assert os.stat(st).st_ino != ino  # ... so the shard was replaced by a rename
    # the shard's first write (all changed values plus the previous-config entry) went through
    # a temp file; dropping that entry afterwards changes bytes of page 1 only, so it is one
    # in-place pwrite. No pwrite into the shard ever spans two pages.
    shard_writes = [(o, k) for name, o, k in pwrites if name == SHARD]
    assert all(o // PAGE == (o + k - 1) // PAGE for o, k in shard_writes), shard_writes
    assert any(name.startswith(".ropepatch-") and k > PAGE for name, _, k in pwrites)
    assert read_header(str(st)).header_length == h1.header_length
    # a correct file: same tensors, the new values, the same bytes as one patch with these args
    assert all(np.array_equal(load_file(str(st))[k], v) for k, v in tensors.items())
    with safe_open(str(st), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["note"].startswith("xxx")
    assert meta[hk.RP_METHOD] == "ntk" and meta[hk.RP_CTX] == "16384"
    once = _straddling_model(tmp_path, "once")
    patch_hf(str(once), 16384, "ntk")
    assert _shas(once) == _shas(d)
    rv = revert_hf(str(d))
    assert rv.files[1].action == "rewrite"
    assert _shas(d) == pristine


@pytest.mark.transformers
def test_transformers_loads_a_repatched_model(tmp_path):
    require("torch")
    transformers = require("transformers")
    d = _copy(tmp_path)
    patch_hf(str(d), 1024, "yarn")
    patch_hf(str(d), 16384, "ntk")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d))
    assert model.config.max_position_embeddings == 16384
