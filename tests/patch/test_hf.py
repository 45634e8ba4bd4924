"""Hugging Face models: config.json rope settings, safetensors provenance, exact revert.

Real files, no mocks: small model directories are built in tmp_path (config.json written with
indent 2 and 4, safetensors written with safetensors.numpy, a 2-shard directory with an index, an
HF-cache-like blobs/ + snapshots/ layout of symlinks) and the committed fixtures/hf models are
copied when present. The transformers checks run when transformers and torch are installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, require, sha256
from safetensors.numpy import load_file, save_file

from ropepatch.check import hf_reference as ref
from ropepatch.errors import FormatError, NotPatchedError, RopepatchError, UnsupportedModelError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.config import load_config, read_rope
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import inspect_hf, patch_hf, plan_hf, plan_hf_snippets, resolve_model, revert_hf
from ropepatch.rope.methods import ntk_base

METHODS = ["ntk", "dynamic", "linear", "yarn"]
L, N = 128, 512


# ---- building models ----------------------------------------------------------------------


def llama_config(**over) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": L,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "vocab_size": 32,
    }
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not ...}


def tensors(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.standard_normal((32, 64)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "model.norm.weight": np.ones(64, dtype=np.float32),
        "lm_head.weight": rng.standard_normal((32, 64)).astype(np.float16),
    }


def write_config(d: Path, cfg: dict, indent=2) -> None:
    (d / "config.json").write_text(json.dumps(cfg, indent=indent) + "\n")


def make_model(d: Path, cfg: dict | None = None, indent=2, shards=1, metadata=None) -> Path:
    """A model directory: config.json + 1 safetensors file, or ``shards`` files plus an index."""
    d.mkdir(parents=True, exist_ok=True)
    write_config(d, cfg or llama_config(), indent)
    t = tensors()
    meta = {"format": "pt"} if metadata is None else metadata
    if shards == 1:
        save_file(t, str(d / "model.safetensors"), metadata=meta or None)
        return d
    names = sorted(t)
    wm = {}
    for i in range(shards):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: t[n] for n in names[i::shards]}
        save_file(part, str(d / fn), metadata=meta or None)
        wm.update({n: fn for n in part})
    (d / hk.INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}, indent=2))
    return d


def fixture_model(tmp_path: Path, name: str) -> Path:
    """A copy of fixtures/hf/NAME, or an equivalent model built here when it is absent."""
    src = FIXTURES / "hf" / name
    dst = tmp_path / name
    if (src / "config.json").is_file() and (src / "model.safetensors").is_file():
        shutil.copytree(src, dst)
        return dst
    over = {"model_type": "qwen2", "head_dim": ..., "architectures": ["Qwen2ForCausalLM"]} if "qwen" in name else {}
    return make_model(dst, llama_config(**over))


def snapshot(d: Path) -> dict:
    """Every file's bytes hash and link target, to prove byte-identical restores."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() or p.is_symlink():
            out[str(p.relative_to(d))] = (sha256(p) if p.exists() else None, os.readlink(p) if p.is_symlink() else None)
    return out


def cfg_of(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def meta_of(p: Path) -> dict:
    return dict(read_header(str(p)).metadata or {})


# ---- each method, end to end --------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("method", METHODS)
def test_patch_and_revert_each_method(tmp_path, name, method):
    d = fixture_model(tmp_path, name)
    before = snapshot(d)
    text0 = (d / "config.json").read_text()
    tensors_before = load_file(str(d / "model.safetensors"))
    r = patch_hf(str(d), N, method)
    assert r.changed and not r.dry_run
    cfg = cfg_of(d)
    s = N / L
    if method == "ntk":
        assert cfg["rope_theta"] == pytest.approx(10000.0 * s ** (16 / 14), rel=1e-12)
        assert cfg["rope_scaling"] is None
        assert cfg["max_position_embeddings"] == N
    elif method == "dynamic":
        assert cfg["rope_scaling"] == {"factor": 4.0, "rope_type": "dynamic"}
        assert isinstance(cfg["rope_scaling"]["factor"], float)
        assert cfg["max_position_embeddings"] == L  # the ORIGINAL length
        assert cfg["rope_theta"] == 10000.0
    elif method == "linear":
        assert cfg["rope_scaling"] == {"factor": 4.0, "rope_type": "linear"}
        assert cfg["max_position_embeddings"] == L
    else:
        assert cfg["rope_scaling"] == {
            "factor": 4.0, "original_max_position_embeddings": L, "rope_type": "yarn"}
        assert cfg["max_position_embeddings"] == N
    # provenance in the shard, "format" kept, tensors untouched
    meta = meta_of(d / "model.safetensors")
    assert meta["format"] == "pt"
    assert meta[hk.RP_METHOD] == method and meta[hk.RP_CTX] == str(N)
    assert float(meta[hk.RP_ALPHA]) == 4.0
    rec = json.loads(meta[hk.RP_ORIGINAL])
    assert rec["config"] == text0 and rec["metadata"] == '{"format":"pt"}'
    after = load_file(str(d / "model.safetensors"))
    assert all(np.array_equal(after[k], v) for k, v in tensors_before.items())
    assert json.loads(json.dumps(r.to_dict()))["patched"]["rope_type"] == hk.METHOD_ROPE_TYPE[method]
    info = inspect_hf(str(d))
    assert json.loads(json.dumps(info.to_dict()))["record"]["method"] == method
    assert info.patched and info.record["method"] == method and info.record["ctx"] == N
    assert info.original.max_position_embeddings == L and info.original.rope_type == "default"
    assert info.rope.effective_ctx == N
    # revert: config.json and the shard byte-identical
    rv = revert_hf(str(d))
    assert rv.changed
    assert snapshot(d) == before
    with pytest.raises(NotPatchedError, match=r"no shard carries a ropepatch.original record; nothing to revert"):
        revert_hf(str(d))


def test_indent4_unsorted_keys_and_order_kept(tmp_path):
    cfg = llama_config()
    del cfg["rope_scaling"]  # the key is absent: it is added at the end (keys are not sorted)
    cfg = {"model_type": "llama", **{k: v for k, v in cfg.items() if k != "model_type"}}
    d = make_model(tmp_path / "m", cfg, indent=4)
    text0 = (d / "config.json").read_text()
    patch_hf(str(d), N, "yarn")
    text = (d / "config.json").read_text()
    expected = dict(cfg, max_position_embeddings=N)
    expected["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    assert text == json.dumps(expected, indent=4) + "\n"
    assert list(json.loads(text))[: len(cfg)] == list(cfg)
    revert_hf(str(d))
    assert (d / "config.json").read_text() == text0


def test_tab_indent_and_crlf_kept(tmp_path):
    d = make_model(tmp_path / "m")
    text = json.dumps(llama_config(), indent="\t").replace("\n", "\r\n") + "\r\n"
    (d / "config.json").write_bytes(text.encode())
    patch_hf(str(d), N, "linear")
    new = (d / "config.json").read_bytes().decode()
    assert "\r\n\t\"rope_scaling\": {\r\n\t\t\"factor\": 4.0," in new
    assert new.endswith("}\r\n")
    revert_hf(str(d))
    assert (d / "config.json").read_bytes() == text.encode()


def test_alpha_and_partial_rotary(tmp_path):
    d = make_model(tmp_path / "m", llama_config(partial_rotary_factor=0.5))
    r = patch_hf(str(d), N, "ntk", alpha=8.0)
    assert r.plan.original.rope_dim == 8
    assert cfg_of(d)["rope_theta"] == pytest.approx(ntk_base(10000.0, 8, 8.0))
    assert cfg_of(d)["rope_theta"] == pytest.approx(10000.0 * 8.0 ** (8 / 6))
    patch_hf(str(d), N, "dynamic", alpha=2.0)
    assert cfg_of(d)["rope_scaling"] == {"factor": 2.0, "rope_type": "dynamic"}


# ---- header paths: in place vs rewrite ------------------------------------------------------


def test_first_patch_rewrites_then_repatch_in_place(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    n0 = read_header(str(st)).header_length
    r1 = patch_hf(str(d), N, "ntk")
    assert [f.action for f in r1.files] == ["rewrite", "rewrite"]
    h1 = read_header(str(st))
    assert h1.header_length > n0 and h1.header_length % 8 == 0
    ino = os.stat(st).st_ino
    r2 = patch_hf(str(d), 2048, "yarn")
    assert r2.files[0].action == "in-place"
    assert os.stat(st).st_ino == ino  # same inode: written in place
    assert read_header(str(st)).header_length == h1.header_length
    # revert goes back to the original (smaller) header: a rewrite
    rv = revert_hf(str(d))
    assert [f.action for f in rv.files] == ["rewrite", "rewrite"]
    assert read_header(str(st)).header_length == n0


def _pad_header(path: Path, extra: int) -> None:
    """Re-write a safetensors file with ``extra`` spaces of header padding."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = raw[8 : 8 + n] + b" " * extra
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])


def test_metadata_that_fits_is_written_in_place(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    _pad_header(st, 8192)
    before = snapshot(d)
    ino = os.stat(st).st_ino
    r = patch_hf(str(d), N, "yarn")
    assert r.files[0].action == "in-place"
    assert os.stat(st).st_ino == ino
    h = read_header(str(st))
    assert h.header_length == read_header(str(st)).header_length  # unchanged length
    assert load_file(str(st)).keys() == tensors().keys()
    rv = revert_hf(str(d))
    assert rv.files[1].action == "in-place"  # [config, shard]
    assert snapshot(d) == before


def test_file_without_metadata_gets_format_pt_and_reverts_exactly(tmp_path):
    d = make_model(tmp_path / "m", metadata={})
    st = d / "model.safetensors"
    assert read_header(str(st)).metadata is None
    before = snapshot(d)
    patch_hf(str(d), N, "linear")
    meta = meta_of(st)
    assert list(meta)[0] == "format" and meta["format"] == "pt"
    revert_hf(str(d))
    assert snapshot(d) == before


def test_other_metadata_and_tensor_order_kept(tmp_path):
    d = make_model(tmp_path / "m", metadata={"format": "pt", "note": "ünïcode ok"})
    st = d / "model.safetensors"
    h0 = read_header(str(st))
    patch_hf(str(d), N, "ntk")
    h1 = read_header(str(st))
    assert [t.name for t in h1.tensors] == [t.name for t in h0.tensors]
    assert [(t.begin, t.end) for t in h1.tensors] == [(t.begin, t.end) for t in h0.tensors]
    meta = dict(h1.metadata)
    assert list(meta)[:2] == list(h0.metadata) and meta["note"] == "ünïcode ok"
    # the text outside __metadata__ is untouched
    a, b = h1.metadata_span
    a0, b0 = h0.metadata_span
    assert h1.json_text[:a] == h0.json_text[:a0] and h1.json_text[b:] == h0.json_text[b0:]


# ---- never compound, no-op --------------------------------------------------------------------


def test_patch_twice_equals_patch_once(tmp_path):
    once = make_model(tmp_path / "once")
    twice = make_model(tmp_path / "twice")
    patch_hf(str(once), 1024, "ntk")
    patch_hf(str(twice), 512, "yarn")
    patch_hf(str(twice), 4096, "dynamic", alpha=3.0)
    patch_hf(str(twice), 1024, "ntk")
    assert (once / "config.json").read_bytes() == (twice / "config.json").read_bytes()
    m1, m2 = meta_of(once / "model.safetensors"), meta_of(twice / "model.safetensors")
    assert m1 == m2
    assert json.loads(m1[hk.RP_ORIGINAL])["config"] == json.dumps(llama_config(), indent=2) + "\n"
    r = inspect_hf(str(twice))
    assert r.original.rope_theta == 10000.0 and r.original.max_position_embeddings == L


def test_same_patch_again_writes_nothing(tmp_path):
    d = make_model(tmp_path / "m")
    patch_hf(str(d), N, "yarn")
    before = snapshot(d)
    mtimes = {p: os.stat(p).st_mtime_ns for p in d.iterdir()}
    r = patch_hf(str(d), N, "yarn")
    assert not r.changed
    assert {f.action for f in r.files} == {"unchanged"}
    assert "nothing written" in r.messages[-1]
    assert snapshot(d) == before
    assert {p: os.stat(p).st_mtime_ns for p in d.iterdir()} == mtimes


def test_dry_run_writes_nothing(tmp_path):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    r = patch_hf(str(d), N, "yarn", dry_run=True)
    assert r.dry_run and r.changed
    assert r.patched.rope_type == "yarn" and r.patched.max_position_embeddings == N
    assert {c.key for c in r.changes} == {"max_position_embeddings", "rope_scaling"}
    assert snapshot(d) == before


# ---- layouts: sharded, single file, out dir, symlinks, hard links ----------------------------


def test_sharded_directory(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    before = snapshot(d)
    m = resolve_model(str(d))
    assert [Path(s).name for s in m.shards] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    r = patch_hf(str(d), N, "yarn")
    assert len(r.shards) == 2
    for s in m.shards:
        meta = meta_of(Path(s))
        assert meta[hk.RP_METHOD] == "yarn"
        assert json.loads(meta[hk.RP_ORIGINAL])["header_length"] > 0
    assert (d / hk.INDEX_NAME).read_bytes() == (tmp_path / "m" / hk.INDEX_NAME).read_bytes()
    revert_hf(str(d))
    assert snapshot(d) == before


def test_single_safetensors_path(tmp_path):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    patch_hf(str(d / "model.safetensors"), N, "dynamic")
    assert cfg_of(d)["rope_scaling"]["rope_type"] == "dynamic"
    revert_hf(str(d / "model.safetensors"))
    assert snapshot(d) == before


def test_one_shard_of_sharded_model_refused(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    with pytest.raises(UsageError, match=r"model-00001-of-00002\.safetensors: one shard of a 2-shard model; pass the directory .*/m so config\.json and every shard stay consistent"):
        patch_hf(str(d / "model-00001-of-00002.safetensors"), N, "ntk")


def test_out_dir_leaves_input_untouched(tmp_path):
    d = make_model(tmp_path / "m")
    (d / "tokenizer.json").write_text('{"tok": 1}')
    (d / "pytorch_model.bin").write_bytes(b"x" * 10)
    before = snapshot(d)
    out = tmp_path / "out"
    r = patch_hf(str(d), N, "yarn", out=str(out))
    assert snapshot(d) == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == '{"tok": 1}'
    assert cfg_of(out)["rope_scaling"]["rope_type"] == "yarn"
    assert r.out == str(out) and r.config_path == str(out / "config.json")
    revert_hf(str(out))
    after = snapshot(out)
    assert after["config.json"] == before["config.json"]
    assert after["model.safetensors"] == before["model.safetensors"]


def test_out_dir_errors(tmp_path):
    d = make_model(tmp_path / "m")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match=r"-o .*/full: directory is not empty; give a new or empty directory"):
        patch_hf(str(d), N, "ntk", out=str(tmp_path / "full"))
    with pytest.raises(UsageError, match=r"-o .*/m: is the model directory itself; omit -o to patch in place"):
        patch_hf(str(d), N, "ntk", out=str(d))


def make_hf_cache(tmp_path: Path) -> tuple[Path, Path]:
    """models--x--y/{blobs/<sha>, snapshots/<rev>/name -> ../../blobs/<sha>} like huggingface_hub."""
    src = make_model(tmp_path / "src")
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        h = sha256(f)
        shutil.copyfile(f, blobs / h)
        os.symlink(f"../../blobs/{h}", snap / f.name)
    return blobs, snap


def test_symlinked_snapshot_is_not_written_through(tmp_path):
    blobs, snap = make_hf_cache(tmp_path)
    blobs_before = snapshot(blobs)
    snap_before = snapshot(snap)
    r = patch_hf(str(snap), N, "yarn")
    assert snapshot(blobs) == blobs_before  # the shared blobs are untouched
    for name in ("config.json", "model.safetensors"):
        assert not (snap / name).is_symlink()
    assert {f.action for f in r.files} == {"replaced-symlink"}
    assert any("replaced the link with a patched regular file, the blob is untouched" in m for m in r.messages)
    assert cfg_of(snap)["rope_scaling"]["rope_type"] == "yarn"
    rv = revert_hf(str(snap))
    assert {f.action for f in rv.files} == {"restored-symlink"}
    assert snapshot(snap) == snap_before  # links back, same targets
    assert snapshot(blobs) == blobs_before


def test_symlink_restored_as_regular_file_when_blob_changed(tmp_path):
    blobs, snap = make_hf_cache(tmp_path)
    snap_before = snapshot(snap)
    patch_hf(str(snap), N, "ntk")
    target = os.path.realpath(tmp_path / "models--org--tiny" / "blobs" / os.path.basename(snap_before["model.safetensors"][1]))
    os.chmod(target, 0o644)
    with open(target, "r+b") as f:  # somebody else changed the blob
        f.seek(-1, 2)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    rv = revert_hf(str(snap))
    acts = {Path(f.path).name: f.action for f in rv.files}
    assert acts == {"config.json": "restored-symlink", "model.safetensors": "rewrite"}
    assert any("no longer holds the original; restored the bytes as a regular file" in m for m in rv.messages)
    assert sha256(snap / "model.safetensors") == snap_before["model.safetensors"][0]


def test_hard_link_is_not_written_through(tmp_path):
    d = make_model(tmp_path / "m")
    other = tmp_path / "elsewhere.safetensors"
    os.link(d / "model.safetensors", other)
    h = sha256(other)
    r = patch_hf(str(d), N, "ntk")
    assert r.files[0].action == "replaced-hardlink"
    assert any("wrote a new file so the other links keep the original" in m for m in r.messages)
    assert sha256(other) == h
    assert os.stat(d / "model.safetensors").st_nlink == 1


# ---- other config shapes ----------------------------------------------------------------------


def test_transformers_v5_rope_parameters(tmp_path):
    cfg = llama_config(rope_scaling=..., rope_theta=...)
    cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "default"}
    d = make_model(tmp_path / "m", cfg)
    before = snapshot(d)
    patch_hf(str(d), N, "yarn")
    new = cfg_of(d)
    assert "rope_scaling" not in new and "rope_theta" not in new
    assert new["rope_parameters"] == {
        "factor": 4.0, "original_max_position_embeddings": L, "rope_theta": 500000.0, "rope_type": "yarn"}
    assert new["max_position_embeddings"] == N
    patch_hf(str(d), N, "ntk")
    assert cfg_of(d)["rope_parameters"] == {"rope_theta": pytest.approx(500000.0 * 4 ** (16 / 14)), "rope_type": "default"}
    revert_hf(str(d))
    assert snapshot(d) == before


def test_multimodal_text_config(tmp_path):
    text = llama_config()
    text.pop("architectures")
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
           "text_config": text, "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32}}
    d = make_model(tmp_path / "m", cfg)
    rope = read_rope(load_config(str(d / "config.json")))
    assert rope.section == ("text_config",) and rope.model_type == "llama"
    r = patch_hf(str(d), N, "dynamic")
    new = cfg_of(d)
    assert new["text_config"]["rope_scaling"] == {"factor": 4.0, "rope_type": "dynamic"}
    assert "rope_scaling" not in new and new["vision_config"] == cfg["vision_config"]
    assert [c.key for c in r.changes] == ["text_config.rope_scaling"]


def test_replace_existing_scaling(tmp_path):
    llama3 = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
              "original_max_position_embeddings": 128, "rope_type": "llama3"}
    d = make_model(tmp_path / "m", llama_config(rope_scaling=llama3, max_position_embeddings=1024))
    before = snapshot(d)
    with pytest.raises(UnsupportedModelError, match=r"config\.json: rope_scaling\.rope_type is 'llama3' \(factor 8\); yarn cannot compose with an existing llama3 scaling: ropepatch hf --replace-scaling \(replace_scaling=True\) discards it and applies yarn to the unscaled model \(original context 128\)"):
        patch_hf(str(d), 4096, "yarn")
    assert snapshot(d) == before
    r = patch_hf(str(d), 4096, "yarn", replace_scaling=True)
    assert r.plan.original.n_ctx_train == 128 and r.plan.alpha == 32.0
    assert cfg_of(d)["rope_scaling"] == {"factor": 32.0, "original_max_position_embeddings": 128, "rope_type": "yarn"}
    assert cfg_of(d)["max_position_embeddings"] == 4096
    # re-patching starts from the recorded original (llama3), so it still needs replace_scaling
    with pytest.raises(UnsupportedModelError, match="cannot compose with an existing llama3 scaling"):
        patch_hf(str(d), 4096, "ntk")
    revert_hf(str(d))
    assert snapshot(d) == before


@pytest.mark.parametrize(
    "scaling, pattern",
    [
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
         r"rope_scaling\.rope_type is 'yarn' \(factor 4\); ntk cannot compose with an existing yarn scaling"),
        ({"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8, "original_max_position_embeddings": 64},
         r"rope_scaling\.rope_type is 'longrope' \(no factor\); ntk cannot compose with an existing longrope scaling"),
        ({"type": "linear", "factor": 2.0},
         r"rope_scaling\.rope_type is 'linear' \(factor 2\); ntk cannot compose with an existing linear scaling"),
    ],
)
def test_incompatible_scaling_refused(tmp_path, scaling, pattern):
    d = make_model(tmp_path / "m", llama_config(rope_scaling=scaling))
    before = snapshot(d)
    with pytest.raises(UnsupportedModelError, match=pattern):
        patch_hf(str(d), N, "ntk")
    assert snapshot(d) == before
    patch_hf(str(d), N, "ntk", replace_scaling=True)
    assert cfg_of(d)["rope_scaling"] is None


def test_model_type_rope_restrictions_and_legacy_keys(tmp_path):
    d = make_model(tmp_path / "phi3", llama_config(model_type="phi3", architectures=["Phi3ForCausalLM"]))
    with pytest.raises(UnsupportedModelError, match=r"config\.json: transformers' phi3 config accepts rope_type default or longrope only, and yarn writes 'yarn': use --method ntk \(it changes rope_theta only\)"):
        patch_hf(str(d), N, "yarn")
    patch_hf(str(d), N, "ntk")
    # GPT-NeoX spellings: rotary_emb_base is the base, rotary_pct the rotated fraction
    cfg = llama_config(model_type="gpt_neox", head_dim=..., rope_theta=..., rotary_emb_base=10000, rotary_pct=0.25)
    d = make_model(tmp_path / "neox", cfg)
    rope = read_rope(load_config(str(d / "config.json")))
    assert (rope.rope_theta, rope.rope_dim, rope.layout.value) == (10000.0, 4, "neox")
    patch_hf(str(d), N, "ntk")
    new = cfg_of(d)
    assert new["rotary_emb_base"] == pytest.approx(10000 * 4.0 ** (4 / 2)) and "rope_theta" not in new
    # partial_rotary_factor omitted: the model type's transformers default
    d = make_model(tmp_path / "phi", llama_config(model_type="phi", head_dim=...))
    assert read_rope(load_config(str(d / "config.json"))).rope_dim == 8


def test_factor_one_scaling_is_no_scaling(tmp_path):
    d = make_model(tmp_path / "m", llama_config(rope_scaling={"type": "linear", "factor": 1.0}))
    patch_hf(str(d), N, "yarn")
    assert cfg_of(d)["rope_scaling"]["rope_type"] == "yarn"


def test_mrope_refused_even_with_replace(tmp_path):
    d = make_model(tmp_path / "m", llama_config(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}))
    with pytest.raises(UnsupportedModelError, match=r"rope_scaling uses multimodal rotary sections \(mrope_section\); ropepatch cannot rewrite it without breaking the vision positions: edit config\.json by hand"):
        patch_hf(str(d), N, "yarn", replace_scaling=True)


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
         r"config\.json: not valid JSON: Expecting property name enclosed in double quotes at line 3 column 1; fix or re-download config\.json"),
        (lambda d: _bad_config_case(d, "[1, 2]"), FormatError,
         r"config\.json: expected a JSON object at the top level, found list"),
        (lambda d: write_config(d, llama_config(rope_theta=...)), FormatError,
         r"config\.json: no rope_theta \(expected a positive number at rope_theta or rope_scaling\.rope_theta, found none\); add the model's rope_theta to config\.json"),
        (lambda d: write_config(d, llama_config(max_position_embeddings=...)), FormatError,
         r"config\.json: max_position_embeddings must be a positive integer, found none; add the model's training context to config\.json"),
        (lambda d: write_config(d, llama_config(max_position_embeddings="4k")), FormatError,
         r'config\.json: max_position_embeddings must be a positive integer, found "4k"'),
        (lambda d: write_config(d, llama_config(head_dim=..., hidden_size=...)), FormatError,
         r"config\.json: cannot derive the head size: expected head_dim or hidden_size and num_attention_heads as positive integers"),
        (lambda d: write_config(d, llama_config(rope_scaling="yarn")), FormatError,
         r'config\.json: rope_scaling must be an object or null, found "yarn"; fix config\.json'),
        (lambda d: write_config(d, llama_config(model_type="gpt2")), UnsupportedModelError,
         r"config\.json: model_type 'gpt2' does not use rotary position embeddings"),
        (lambda d: write_config(d, llama_config(rope_scaling=..., rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})), UnsupportedModelError,
         r"config\.json: rope_parameters holds per-layer-type settings \(full_attention, sliding_attention\); ropepatch only patches a single rope block"),
        (lambda d: os.remove(d / "config.json"), FormatError,
         r"/m: no config\.json \(expected it next to the safetensors weights\)"),
        (lambda d: os.remove(d / "model.safetensors"), FormatError,
         r"/m: no \*\.safetensors weights next to config\.json; ropepatch records its undo data in safetensors headers"),
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
         r"model\.safetensors: not a valid safetensors file: header length 200000000 exceeds the 100000000-byte limit; the file is corrupt or not safetensors"),
        (lambda p: _write_raw(p, _tensor_header(), b"\0" * 16, n=5000),
         r"model\.safetensors: not a valid safetensors file: header length 5000 runs past the end of the \d+-byte file; the file is truncated or not safetensors"),
        (lambda p: p.write_bytes(b"\x01\x02"),
         r"not a valid safetensors file: file is 2 bytes, shorter than the 8-byte header length"),
        (lambda p: _write_raw(p, _tensor_header(meta={"format": "pt", "step": 5}), b"\0" * 16),
         r"not a valid safetensors file: __metadata__ value for 'step' must be a string, found 5; re-save the file with string metadata"),
        (lambda p: _write_raw(p, _tensor_header(meta=["pt"]), b"\0" * 16),
         r"not a valid safetensors file: __metadata__ must be an object of strings, found list"),
        (lambda p: _write_raw(p, b'[{"a": 1}]', b""),
         r"not a valid safetensors file: header must start with '\{', found '\['"),
        (lambda p: _write_raw(p, b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "a": {}}', b"\0" * 16),
         r"not a valid safetensors file: duplicate key 'a' in the header JSON; re-save the file"),
        (lambda p: _write_raw(p, b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', b"\0" * 16),
         r"not a valid safetensors file: malformed header JSON"),
        (lambda p: _write_raw(p, _tensor_header(), b"\0" * 20),
         r"not a valid safetensors file: tensors cover 16 data bytes but the file holds 20; the file is truncated or has trailing bytes"),
        (lambda p: _write_raw(p, _tensor_header(offsets=(4, 20)), b"\0" * 20),
         r"not a valid safetensors file: tensor 'a' starts at data offset 4 and leaves a hole at 0"),
        (lambda p: _write_raw(p, _tensor_header(offsets=(0, 12)), b"\0" * 12),
         r"not a valid safetensors file: tensor 'a' \(F32 \[4\]\) needs 16 bytes but data_offsets span 12"),
        (lambda p: _write_raw(p, _tensor_header(extra={"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), b"\0" * 16),
         r"not a valid safetensors file: tensor 'b' starts at data offset 8 and overlaps the previous tensor"),
        (lambda p: _write_raw(p, _tensor_header(extra={"b": {"dtype": "Q4", "shape": [2], "data_offsets": [16, 18]}}), b"\0" * 18),
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
    raises_one_line(FormatError, r"model-00002-of-00002\.safetensors: not a valid safetensors file: tensors cover \d+ data bytes but the file holds \d+", patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before


def test_index_errors(tmp_path):
    d = make_model(tmp_path / "m", shards=2)
    os.remove(d / "model-00002-of-00002.safetensors")
    before = snapshot(d)
    raises_one_line(FormatError, r"model\.safetensors\.index\.json: lists 1 shard\(s\) missing from .*/m: model-00002-of-00002\.safetensors; download them or fix the index", patch_hf, str(d), N, "ntk")
    assert snapshot(d) == before
    (d / hk.INDEX_NAME).write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors",}}')
    raises_one_line(FormatError, r"model\.safetensors\.index\.json: not valid JSON: .*; fix or re-download it", patch_hf, str(d), N, "ntk")
    (d / hk.INDEX_NAME).write_text('{"weight_map": {"a": "../x.safetensors"}}')
    raises_one_line(FormatError, r"shard name '\.\./x\.safetensors' is not a plain file name", patch_hf, str(d), N, "ntk")


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        ({"ctx": 128}, UsageError, r"--ctx must be larger than the model's original context 128, found 128"),
        ({"ctx": 512, "alpha": float("nan")}, UsageError, r"--alpha must be a finite number >= 1, found nan"),
        ({"ctx": 512, "method": "rope9"}, UsageError, r"unknown method 'rope9': expected one of ntk, dynamic, linear, yarn, none"),
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
    raises_one_line(UsageError, r"x\.txt: expected a Hugging Face model directory \(config\.json \+ \*\.safetensors\) or a \.safetensors file with config\.json beside it", patch_hf, str(tmp_path / "x.txt"), N)


def test_config_edited_after_patch(tmp_path):
    d = make_model(tmp_path / "m")
    patch_hf(str(d), N, "ntk")
    cfg = cfg_of(d)
    cfg["torch_dtype"] = "bfloat16"
    write_config(d, cfg)
    before = snapshot(d)
    raises_one_line(UsageError, r"config\.json: changed since ropepatch patched it \(sha256 [0-9a-f]{12} matches neither the patched nor the original text\); reverting would discard that change: undo it, or pass --force \(force=True\) to discard it", revert_hf, str(d))
    raises_one_line(UsageError, r"patching would discard that change", patch_hf, str(d), N, "yarn")
    assert snapshot(d) == before
    assert any("changed since ropepatch patched it" in m for m in inspect_hf(str(d)).messages)
    revert_hf(str(d), force=True)
    assert cfg_of(d) == llama_config()


def test_tampered_record(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    save_file(tensors(), str(st), metadata={"format": "pt", hk.RP_ORIGINAL: "{not json"})
    raises_one_line(FormatError, r"model\.safetensors: ropepatch\.original is not valid JSON \(.*\); the header was edited by another tool: restore the file from its source", revert_hf, str(d))


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


# ---- plan and snippets ----------------------------------------------------------------------


def test_plan_and_snippets(tmp_path):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    plan = plan_hf(str(d), N, "yarn")
    sn = plan_hf_snippets(plan)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    assert sn["transformers_v4"] == {"rope_theta": 10000.0, "rope_scaling": yarn, "max_position_embeddings": N}
    assert sn["transformers_v5"] == {"rope_parameters": {**yarn, "rope_theta": 10000.0}, "max_position_embeddings": N}
    assert json.loads(sn["vllm_hf_overrides"]) == sn["transformers_v4"]
    assert sn["vllm_args"].endswith(f"--max-model-len {N}")
    sn = plan_hf_snippets(plan_hf(str(d), N, "dynamic"))
    assert sn["rope_scaling"] == {"rope_type": "dynamic", "factor": 4.0}
    assert sn["max_position_embeddings"] == L and sn["notes"]
    sn = plan_hf_snippets(plan_hf(str(d), N, "ntk"))
    assert sn["rope_scaling"] is None and sn["transformers_v5"]["rope_parameters"]["rope_type"] == "default"
    assert sn["rope_theta"] == pytest.approx(10000.0 * 4 ** (16 / 14))
    assert snapshot(d) == before
    # a patched model plans from its originals
    patch_hf(str(d), 4096, "linear")
    assert plan_hf(str(d), N, "yarn") == plan


def test_inspect_unpatched(tmp_path):
    d = fixture_model(tmp_path, "tiny-qwen2")
    info = inspect_hf(str(d))
    assert not info.patched and info.record is None and info.original is None
    assert info.rope.model_type == "qwen2" and info.rope.head_dim == 16 and info.rope.rope_dim == 16
    assert info.params.layout.value == "neox" and info.params.n_ctx_train == L
    assert json.loads(json.dumps(info.to_dict()))["rope"]["rope_type"] == "default"


# ---- the NumPy reference against transformers ------------------------------------------------


def test_reference_formulas_without_torch():
    inv, att = ref.yarn_inv_freq(10000.0, 16, 4.0, 128)
    base = ref.default_inv_freq(10000.0, 16)[0]
    assert att == pytest.approx(1 + 0.1 * math.log(4.0))
    assert inv[0] == pytest.approx(base[0])  # highest frequency extrapolated
    assert inv[-1] == pytest.approx(base[-1] / 4.0)  # lowest interpolated
    dyn = ref.dynamic_inv_freq(10000.0, 16, 4.0, 128, seq_len=512)[0]
    assert dyn == pytest.approx(ref.default_inv_freq(10000.0 * (4 * 512 / 128 - 3) ** (16 / 14), 16)[0])
    assert np.array_equal(ref.dynamic_inv_freq(10000.0, 16, 4.0, 128, seq_len=64)[0], base)


def default_rope(cfg, model_type):
    """transformers' default-rope inverse frequencies: ROPE_INIT_FUNCTIONS["default"] (v4) or
    the model's own RotaryEmbedding.compute_default_rope_parameters (v5)."""
    import importlib

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" in ROPE_INIT_FUNCTIONS:
        return ROPE_INIT_FUNCTIONS["default"](cfg, None)
    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("RotaryEmbedding")
               and hasattr(getattr(mod, n), "compute_default_rope_parameters"))
    return cls.compute_default_rope_parameters(cfg)


@pytest.mark.transformers
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "partial"])
@pytest.mark.parametrize("method", METHODS)
def test_reference_matches_transformers(tmp_path, name, method):
    transformers = require("transformers")
    require("torch")
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if name == "partial":  # phi: partial rotary (d = 8 of head_dim 16), base 500000
        d = make_model(tmp_path / "m", llama_config(
            model_type="phi", architectures=["PhiForCausalLM"], partial_rotary_factor=0.5,
            rope_theta=500000.0, head_dim=..., rms_norm_eps=..., layer_norm_eps=1e-05))
    else:
        d = fixture_model(tmp_path, name)
    patch_hf(str(d), 1000, method)
    cfg = AutoConfig.from_pretrained(str(d))
    doc = load_config(str(d / "config.json"))
    rope = read_rope(doc)
    rtype = rope.rope_type
    for seq_len in (None, 700, 3000):
        if rtype == "default":
            inv, att = default_rope(cfg, rope.model_type)
        else:
            inv, att = ROPE_INIT_FUNCTIONS[rtype](cfg, None, seq_len=seq_len)
        want, want_att = ref.hf_inv_freq(doc, seq_len=seq_len)
        assert len(want) == rope.rope_dim // 2 == inv.shape[0]
        np.testing.assert_allclose(inv.numpy(), want, rtol=2e-6, atol=0)
        assert att == pytest.approx(want_att, rel=1e-12)
    assert transformers.__version__


@pytest.mark.transformers
def test_transformers_loads_patched_model(tmp_path):
    require("transformers")
    torch = require("torch")
    from transformers import AutoModelForCausalLM

    d = fixture_model(tmp_path, "tiny-llama")
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    with torch.no_grad():
        m0 = AutoModelForCausalLM.from_pretrained(str(d))
        base = m0(ids).logits
    patch_hf(str(d), 1024, "yarn")  # the header now carries ropepatch.* metadata
    with torch.no_grad():
        m1 = AutoModelForCausalLM.from_pretrained(str(d))
        out = m1(ids).logits
    rope = getattr(m1.config, "rope_parameters", None) or m1.config.rope_scaling  # v5 / v4
    assert rope["rope_type"] == "yarn"
    assert out.shape == base.shape and not torch.allclose(out, base)
    revert_hf(str(d))
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(str(d))(ids).logits
    assert torch.equal(again, base)


def test_errors_are_ropepatch_errors():
    assert issubclass(FormatError, RopepatchError) and issubclass(UsageError, RopepatchError)
