"""Tests for the tiny fixture models (tools/make_fixtures.py, fixtures/), the files themselves:

- the committed fixtures are byte-identical to a fresh run of the generator;
- GGUF metadata/tensor types are what the generator promises, Q8_0 files hold the
  same weights as the F32 files, GGUF llama q/k == llama.cpp-permuted HF q/k;
- the HF config.json and safetensors metadata are what the generator promises.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers_fixtures import ARCH_OF, FIXTURES, GGUF_NAMES, QTYPE_OF, TOOL, gguf_arrays, mf


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- generator


@pytest.fixture(scope="session")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixtures")
    subprocess.run([sys.executable, str(TOOL), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("rel", mf.GENERATED_FILES)
def test_committed_fixture_is_byte_identical_to_fresh_run(regenerated: Path, rel: str) -> None:
    committed = FIXTURES / rel
    assert committed.is_file(), f"missing committed fixture {rel}; run python tools/make_fixtures.py"
    assert sha256(committed) == sha256(regenerated / rel), (
        f"{rel} differs from a fresh `python tools/make_fixtures.py` run"
    )


def test_generator_writes_exactly_the_listed_files(regenerated: Path) -> None:
    produced = sorted(p.relative_to(regenerated).as_posix() for p in regenerated.rglob("*") if p.is_file())
    assert produced == sorted(mf.GENERATED_FILES)
    committed = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file())
    # plus what tools/make_transformers_refs.py writes (transformers' own numbers for these models)
    refs = ["transformers-refs/refs.json", "transformers-refs/logits.npz"]
    assert committed == sorted(mf.GENERATED_FILES + ["README.md"] + refs)


def test_fixtures_are_small() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 4 * 1024 * 1024, total


# --------------------------------------------------------------------------- GGUF contents


def _field(reader, key):
    f = reader.fields[key]
    return f.types, f.contents()


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_gguf_metadata(name: str) -> None:
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    arch, qtype = ARCH_OF[name], QTYPE_OF[name]
    r = GGUFReader(FIXTURES / name)
    U32, F32 = [GGUFValueType.UINT32], [GGUFValueType.FLOAT32]
    assert _field(r, "general.architecture")[1] == arch
    assert _field(r, "general.name")[1] == f"tiny-{arch}"
    assert _field(r, "general.file_type") == (U32, 0 if qtype == "f32" else 7)
    assert _field(r, f"{arch}.context_length") == (U32, 128)
    assert _field(r, f"{arch}.embedding_length") == (U32, 64)
    assert _field(r, f"{arch}.block_count") == (U32, 2)
    assert _field(r, f"{arch}.feed_forward_length") == (U32, 128)
    assert _field(r, f"{arch}.attention.head_count") == (U32, 4)
    assert _field(r, f"{arch}.attention.head_count_kv") == (U32, 2)
    assert _field(r, f"{arch}.rope.dimension_count") == (U32, 16)
    assert _field(r, f"{arch}.rope.freq_base") == (F32, 10000.0)
    types, eps = _field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    assert types == F32 and eps == pytest.approx(1e-5)
    assert not any(k.startswith(f"{arch}.rope.scaling") for k in r.fields)
    assert _field(r, "tokenizer.ggml.model")[1] == "llama"
    assert len(_field(r, "tokenizer.ggml.tokens")[1]) == mf.N_VOCAB

    names = [t.name for t in r.tensors]
    assert any(n.endswith("attn_q.bias") for n in names) == (arch == "qwen2")
    for t in r.tensors:
        if qtype == "q8_0" and len(t.shape) == 2:
            assert t.tensor_type == GGMLQuantizationType.Q8_0, t.name
        else:
            assert t.tensor_type == GGMLQuantizationType.F32, t.name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_holds_the_same_weights_as_f32(arch: str) -> None:
    f32 = gguf_arrays(FIXTURES / f"tiny-{arch}-f32.gguf")
    q8 = gguf_arrays(FIXTURES / f"tiny-{arch}-q8_0.gguf")
    assert f32.keys() == q8.keys()
    for name, a in f32.items():
        b = q8[name]
        assert a.shape == b.shape, name
        if a.ndim == 1:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            # Q8_0: per 32-block scale d = amax/127 stored as f16, so |error| <= d/2 + 127*|f16 error of d|
            d = np.abs(a).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            err = np.abs(a - b).reshape(-1, 32)
            assert np.all(err <= d * (0.5 + 127 * 2.0**-11) + 1e-7), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_and_hf_weights_correspond(arch: str) -> None:
    from safetensors.numpy import load_file

    g = gguf_arrays(FIXTURES / f"tiny-{arch}-f32.gguf")
    hf = load_file(str(FIXTURES / "hf" / f"tiny-{arch}" / "model.safetensors"))
    assert len(hf) == len(g)
    np.testing.assert_array_equal(g["token_embd.weight"], hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(g["output.weight"], hf["lm_head.weight"])
    for i in range(mf.N_LAYER):
        q, k = g[f"blk.{i}.attn_q.weight"], g[f"blk.{i}.attn_k.weight"]
        hq, hk = hf[f"model.layers.{i}.self_attn.q_proj.weight"], hf[f"model.layers.{i}.self_attn.k_proj.weight"]
        if arch == "llama":
            np.testing.assert_array_equal(q, mf.permute_qk(hq, mf.N_HEAD))
            np.testing.assert_array_equal(k, mf.permute_qk(hk, mf.N_HEAD_KV))
            np.testing.assert_array_equal(mf.unpermute_qk(q, mf.N_HEAD), hq)
            assert not np.array_equal(q, hq)
        else:
            np.testing.assert_array_equal(q, hq)
            np.testing.assert_array_equal(k, hk)
            np.testing.assert_array_equal(g[f"blk.{i}.attn_k.bias"], hf[f"model.layers.{i}.self_attn.k_proj.bias"])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_config(arch: str) -> None:
    path = FIXTURES / "hf" / f"tiny-{arch}" / "config.json"
    text = path.read_text(encoding="utf-8")
    cfg = json.loads(text)
    assert text == json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    assert cfg["model_type"] == arch
    assert cfg["rope_theta"] == 10000.0 and isinstance(cfg["rope_theta"], float)
    assert cfg["max_position_embeddings"] == 128
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (64, 4, 2)
    assert (cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (128, 2, mf.N_VOCAB)
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "float32"
    assert cfg["rope_scaling"] is None


def test_safetensors_metadata() -> None:
    import struct

    for arch in ("llama", "qwen2"):
        raw = (FIXTURES / "hf" / f"tiny-{arch}" / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        assert header["__metadata__"] == {"format": "pt"}
