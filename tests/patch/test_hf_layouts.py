"""Hugging Face models in every layout and config shape: a 2-shard directory with an index, one
.safetensors path, -o directories, an HF-cache-like blobs/ + snapshots/ layout of symlinks, hard
links; transformers v5 rope_parameters, a multimodal text_config, existing rope scalings
(replaced or refused), model-type restrictions and legacy keys.

Real files, no mocks: the model directories are built in tmp_path (_helpers_hf.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _helpers_hf import L, N, cfg_of, llama_config, make_model, meta_of, snapshot
from conftest import sha256

from ropepatch.errors import UnsupportedModelError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.config import load_config, read_rope
from ropepatch.patch.hf import patch_hf, resolve_model, revert_hf

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
    with pytest.raises(UsageError, match=r"model-00001-of-00002\.safetensors: one shard of a 2-shard model; pass the "
                                         r"directory .*/m so config\.json and every shard stay consistent"):
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
    target = os.path.realpath(tmp_path / "models--org--tiny" / "blobs"
                              / os.path.basename(snap_before["model.safetensors"][1]))
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
    assert cfg_of(d)["rope_parameters"] == {"rope_theta": pytest.approx(500000.0 * 4 ** (16 / 14)),
                                            "rope_type": "default"}
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
    with pytest.raises(UnsupportedModelError, match=r"config\.json: rope_scaling\.rope_type is 'llama3' \(factor 8\); "
                                                    r"yarn cannot compose with an existing llama3 scaling: ropepatch "
                                                    r"hf --replace-scaling \(replace_scaling=True\) discards it and "
                                                    r"applies yarn to the unscaled model \(original context 128\)"):
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
        ({"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
          "original_max_position_embeddings": 64},
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
    with pytest.raises(UnsupportedModelError, match=r"config\.json: transformers' phi3 config accepts rope_type "
                                                    r"default or longrope only, and yarn writes 'yarn': use --method "
                                                    r"ntk \(it changes rope_theta only\)"):
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
    with pytest.raises(UnsupportedModelError, match=r"rope_scaling uses multimodal rotary sections \(mrope_section\); "
                                                    r"ropepatch cannot rewrite it without breaking the vision "
                                                    r"positions: edit config\.json by hand"):
        patch_hf(str(d), N, "yarn", replace_scaling=True)
