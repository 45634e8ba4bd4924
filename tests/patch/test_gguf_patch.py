"""GGUF patching end to end: every method on every fixture, loaded in the real llama-cpp-python
runtime; revert byte-identical; re-patches in place; non-compounding; -o, --dry-run,
--no-record; split models."""

from __future__ import annotations

import os
import struct

import pytest
from conftest import FIXTURES, GGUF_FIXTURES, build_gguf, llama_kvs, require, sha256

from ropepatch.errors import NotPatchedError, UsageError
from ropepatch.formats.gguf.header import read_header
from ropepatch.patch import gguf as gp
from ropepatch.rope.methods import METHODS, ntk_base

llama_cpp = require("llama_cpp")

CTX = 512  # 4x the fixtures' training context of 128
F32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]  # noqa: E731


def load_runtime(path: str):
    """What llama-cpp-python reads from the file: (n_ctx_train, metadata dict)."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, verbose=False)
    try:
        return llama_cpp.llama_model_n_ctx_train(llm.model), dict(llm.metadata)
    finally:
        llm.close()


def expected_values(method: str, arch: str, base=10000.0, d=16, L=128, ctx=CTX) -> dict:
    s = ctx / L
    exp = {f"{arch}.context_length": str(ctx)}
    if method == "ntk":
        exp[f"{arch}.rope.freq_base"] = F32(ntk_base(base, d, s))
    elif method == "dynamic":
        exp[f"{arch}.rope.freq_base"] = F32(base * ((s * ctx / L) - (s - 1)) ** (d / (d - 2)))
    elif method in ("linear", "yarn"):
        exp[f"{arch}.rope.freq_base"] = base
        exp[f"{arch}.rope.scaling.type"] = method
        exp[f"{arch}.rope.scaling.factor"] = s
        if method == "yarn":
            exp[f"{arch}.rope.scaling.original_context_length"] = str(L)
    else:
        exp[f"{arch}.rope.freq_base"] = base
    return exp


@pytest.mark.parametrize("fixture", GGUF_FIXTURES)
@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].writes_factors])  # see test_gguf_factors
def test_patch_loads_in_llama_cpp_and_reverts(copy_fixture, fixture, method):
    path = copy_fixture(fixture)
    before = sha256(path)
    arch = "qwen2" if "qwen2" in fixture else "llama"
    res = gp.patch_gguf(path, CTX, method)
    assert res.mode == "rewrite"
    n_ctx_train, meta = load_runtime(path)
    assert n_ctx_train == CTX
    for key, want in expected_values(method, arch).items():
        if isinstance(want, float):
            assert float(meta[key]) == pytest.approx(want, rel=1e-6), key
        else:
            assert meta[key] == want, key
    assert meta["ropepatch.method"] == method
    # tensor bytes are untouched: the data section is identical to the original's
    h0, h1 = read_header(str(FIXTURES / fixture)), read_header(path)
    with open(FIXTURES / fixture, "rb") as a, open(path, "rb") as b:
        a.seek(h0.data_offset)
        b.seek(h1.data_offset)
        assert a.read() == b.read()
    assert h1.data_offset % 4096 == h0.data_offset % 4096  # block-aligned copy
    gp.revert_gguf(path)
    assert sha256(path) == before


@pytest.mark.parametrize("fixture", ["tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_repatch_is_in_place_and_never_compounds(copy_fixture, tmp_path, fixture):
    path = copy_fixture(fixture)
    before = sha256(path)
    gp.patch_gguf(path, CTX, "ntk")
    size = os.path.getsize(path)
    inode = os.stat(path).st_ino
    # patch twice == patch once: the second identical patch writes nothing
    snap = sha256(path)
    assert gp.patch_gguf(path, CTX, "ntk").mode == "no-op"
    assert sha256(path) == snap
    # every later re-patch (any method) is written in place, same inode and size
    for method, ctx in (("yarn", 1024), ("linear", 300), ("dynamic", 2048), ("ntk", 1024)):
        res = gp.patch_gguf(path, ctx, method)
        assert res.mode == "in-place", method
        assert os.stat(path).st_ino == inode and os.path.getsize(path) == size
        assert res.bytes_written < 4096
        info = gp.inspect_gguf(path)
        assert info.original.n_ctx_train == 128 and info.original.freq_base == 10000.0
        assert info.current.n_ctx_train == ctx
    # non-compounding: ntk 1024 on a file patched 5 times == ntk 1024 on the pristine file
    fresh = copy_fixture(fixture, "fresh.gguf")
    gp.patch_gguf(fresh, 1024, "ntk")
    assert sha256(fresh) == sha256(path)
    n_ctx_train, meta = load_runtime(path)
    assert n_ctx_train == 1024
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_output_copy_leaves_input_untouched(copy_fixture, tmp_path):
    path = copy_fixture("tiny-llama-q8_0.gguf")
    before = sha256(path)
    out = str(tmp_path / "out.gguf")
    res = gp.patch_gguf(path, CTX, "yarn", out=out)
    assert res.mode == "rewrite" and sha256(path) == before
    assert load_runtime(out)[0] == CTX
    restored = str(tmp_path / "restored.gguf")
    gp.revert_gguf(out, out=restored)
    assert sha256(restored) == before


def test_dry_run_writes_nothing(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    res = gp.patch_gguf(path, CTX, "yarn", dry_run=True)
    assert res.mode == "dry-run" and res.changes
    assert sha256(path) == before
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".ropepatch")]


def test_alpha_overrides_scale(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(path, CTX, "ntk", alpha=8.0)
    _, meta = load_runtime(path)
    assert float(meta["llama.rope.freq_base"]) == pytest.approx(F32(ntk_base(10000.0, 16, 8.0)), rel=1e-6)
    assert float(meta["ropepatch.alpha"]) == 8.0


def test_no_record_patches_in_place_without_provenance(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    size, inode = os.path.getsize(path), os.stat(path).st_ino
    res = gp.patch_gguf(path, CTX, "ntk", record=False)
    assert res.mode == "in-place" and any("revert" in w for w in res.warnings)
    assert os.path.getsize(path) == size and os.stat(path).st_ino == inode
    n_ctx_train, meta = load_runtime(path)
    assert n_ctx_train == CTX
    assert not [k for k in meta if k.startswith("ropepatch.")]
    with pytest.raises(NotPatchedError, match="not patched by ropepatch"):
        gp.revert_gguf(path)
    # yarn needs keys the file does not have: --no-record cannot add them
    with pytest.raises(UsageError, match="would be added"):
        gp.patch_gguf(path, 1024, "yarn", record=False)


def test_split_models_patch_first_split_only(tmp_path):
    first = build_gguf(tmp_path / "m-00001-of-00002.gguf", llama_kvs())
    second = build_gguf(tmp_path / "m-00002-of-00002.gguf", [])
    s2 = sha256(second)
    gp.patch_gguf(first, CTX)
    assert gp.inspect_gguf(first).current.n_ctx_train == CTX
    assert sha256(second) == s2
    with pytest.raises(UsageError, match=r"split 2 of 2.*pass m-00001-of-00002\.gguf"):
        gp.patch_gguf(second, CTX)


def test_rotary_dims_fall_back_to_head_dim(tmp_path):
    # no rope.dimension_count: llama.cpp uses key_length, else embedding_length / head_count
    p = build_gguf(tmp_path / "a.gguf", llama_kvs(rope_dim=None))
    assert gp.inspect_gguf(p).current.rope_dim == 64 // 4
    from ropepatch.formats.gguf.keys import ValueType as T

    p = build_gguf(tmp_path / "b.gguf", llama_kvs(rope_dim=None, extra=[("llama.attention.key_length", T.UINT32, 32)]))
    assert gp.inspect_gguf(p).current.rope_dim == 32


def test_revert_refuses_a_file_changed_behind_our_back(copy_fixture):
    from ropepatch.errors import WriteError

    path = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(path, CTX)
    # simulate an outside edit of an untouched key (same size, in place)
    h = read_header(path)
    kv = h.entry("llama.attention.layer_norm_rms_epsilon")
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(kv.raw) + len(kv.raw) - 4
        f.seek(at)
        f.write(struct.pack("<f", 1e-3))
    snap = sha256(path)
    with pytest.raises(WriteError, match="changed outside ropepatch"):
        gp.revert_gguf(path)
    assert sha256(path) == snap


def test_smollm2_style_numbers():
    """The issue's acceptance numbers: b=100000, d=64, 8k -> 16k gives 100000 * 2^(64/62)."""
    assert ntk_base(100000.0, 64, 2.0) == pytest.approx(100000 * 2 ** (64 / 62))
    assert F32(ntk_base(100000.0, 64, 2.0)) == 204522.28125


def test_fixture_copies_are_independent():
    # guard: tests must never modify the committed fixtures
    for name in GGUF_FIXTURES:
        assert read_header(str(FIXTURES / name)).get("ropepatch.original") is None
