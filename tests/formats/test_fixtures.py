"""Tests for the tiny fixture models (tools/make_fixtures.py, fixtures/).

- the committed fixtures are byte-identical to a fresh run of the generator;
- GGUF metadata/tensor types are what the generator promises, Q8_0 files hold the
  same weights as the F32 files, GGUF llama q/k == llama.cpp-permuted HF q/k;
- every GGUF fixture loads in llama-cpp-python, reports n_ctx_train 128 and its
  rope.freq_base, tokenizes/detokenizes arbitrary UTF-8, decodes a 100-token
  prompt with finite, non-constant logits, and RoPE visibly matters;
- the HF fixtures are the same models as the F32 GGUF files (numpy reference
  forward pass of the HF weights == llama.cpp logits; with torch+transformers
  installed, also transformers' logits == llama.cpp logits).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
TOOL = REPO / "tools" / "make_fixtures.py"

sys.path.insert(0, str(TOOL.parent))
import make_fixtures as mf  # noqa: E402

sys.path.pop(0)

GGUF_NAMES = [name for name, _, _ in mf.GGUF_FILES]
ARCH_OF = {name: arch for name, arch, _ in mf.GGUF_FILES}
QTYPE_OF = {name: q for name, _, q in mf.GGUF_FILES}

PROMPT = "The quick brown fox jumps over the lazy dog."
UNICODE_TEXT = "Grüße, naïve café — 東京 👍 «ok»\n\ttabs  and  spaces "


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


def _gguf_arrays(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    out = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_holds_the_same_weights_as_f32(arch: str) -> None:
    f32 = _gguf_arrays(FIXTURES / f"tiny-{arch}-f32.gguf")
    q8 = _gguf_arrays(FIXTURES / f"tiny-{arch}-q8_0.gguf")
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

    g = _gguf_arrays(FIXTURES / f"tiny-{arch}-f32.gguf")
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


# --------------------------------------------------------------------------- llama.cpp


_MODELS: dict[tuple, object] = {}


def new_llama(name: str, **kw):
    """A Llama on a fixture: n_ctx 512, logits for every token, F32 KV cache (tight comparisons)."""
    llama_cpp = require("llama_cpp")
    return llama_cpp.Llama(
        model_path=str(FIXTURES / name),
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
        **kw,
    )


def load(name: str):
    """One cached default Llama per fixture (closed at the end of the module)."""
    if name not in _MODELS:
        _MODELS[name] = new_llama(name)
    return _MODELS[name]


@pytest.fixture(scope="module", autouse=True)
def _close_cached_models():
    yield
    # close explicitly: Llama.__del__ at interpreter exit fails noisily once llama_cpp is torn down
    while _MODELS:
        _MODELS.popitem()[1].close()


def logits_of(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_llama_cpp_loads_and_decodes(name: str) -> None:
    llama_cpp = require("llama_cpp")
    arch = ARCH_OF[name]
    llm = load(name)
    assert llama_cpp.llama_model_n_ctx_train(llm.model) == 128
    assert float(llm.metadata[f"{arch}.rope.freq_base"]) == 10000.0
    assert int(llm.metadata[f"{arch}.context_length"]) == 128
    assert llm.n_vocab() == mf.N_VOCAB
    toks = llm.tokenize(PROMPT.encode())
    assert toks[0] == mf.BOS_ID and len(toks) == len(PROMPT) + 1
    logits = logits_of(llm, toks)
    assert logits.shape == (len(toks), mf.N_VOCAB)
    assert np.all(np.isfinite(logits))
    assert logits.std(axis=1).min() > 1.0  # not constant per position
    assert np.abs(np.diff(logits, axis=0)).max() > 1.0  # varies with the input


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_tokenizer_roundtrip(name: str) -> None:
    llm = load(name)
    data = UNICODE_TEXT.encode("utf-8")
    toks = llm.tokenize(data, add_bos=False)
    assert mf.UNK_ID not in toks
    assert llm.detokenize(toks) == data
    with_bos = llm.tokenize(data)
    assert with_bos[0] == mf.BOS_ID and with_bos[1:] == toks
    assert llm.detokenize(with_bos) == data  # <s> is not rendered
    all_bytes = bytes(range(1, 256))
    assert llm.detokenize(llm.tokenize(all_bytes, add_bos=False)) == all_bytes


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_decodes_a_100_token_prompt(name: str) -> None:
    llm = load(name)
    text = (PROMPT + " ") * 3
    toks = llm.tokenize(text.encode())[:100]
    assert len(toks) == 100
    logits = logits_of(llm, toks)
    assert np.all(np.isfinite(logits))
    assert logits.std(axis=1).min() > 1.0


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf"])
def test_rope_base_visibly_changes_logits(name: str) -> None:
    """Position 0 is not rotated; later positions must react to a different freq_base."""
    toks = load(name).tokenize(PROMPT.encode())
    ref = logits_of(load(name), toks)
    other = new_llama(name, rope_freq_base=100.0)
    try:
        changed = logits_of(other, toks)
    finally:
        other.close()
    np.testing.assert_allclose(changed[0], ref[0], atol=1e-4)
    assert np.abs(changed[1:] - ref[1:]).max(axis=1).mean() > 0.5


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_logits_close_to_f32(arch: str) -> None:
    toks = load(f"tiny-{arch}-f32.gguf").tokenize(PROMPT.encode())
    a = logits_of(load(f"tiny-{arch}-f32.gguf"), toks)
    b = logits_of(load(f"tiny-{arch}-q8_0.gguf"), toks)
    # Q8_0 weights *and* Q8_0-quantized activations (ggml's q8_0 dot product): measured
    # mean |diff| ~1.8% and max ~14% of the logit std; argmax agrees at >95% of positions.
    diff = np.abs(a - b)
    assert diff.mean() < 0.04 * a.std()
    assert diff.max() < 0.3 * a.std()
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() > 0.85
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------- HF == GGUF


def load_hf(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    return cfg, load_file(str(model_dir / "model.safetensors"))


def hf_reference_logits(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Plain numpy (float64) forward pass of a HF Llama/Qwen2 checkpoint (rotate_half RoPE)."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    eps = cfg["rms_norm_eps"]
    T = len(tokens)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]

    def rope(x):  # x: (T, heads, hd)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(T, n_head, hd))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(T, n_kv, hd))
        v = lin(h, p + "self_attn.v_proj").reshape(T, n_kv, hd)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v, n_head // n_kv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(T, n_head * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_fixture_equals_gguf_numpy_reference(arch: str) -> None:
    llm = load(f"tiny-{arch}-f32.gguf")
    toks = llm.tokenize(PROMPT.encode())
    got = logits_of(llm, toks)
    ref = hf_reference_logits(*load_hf(FIXTURES / "hf" / f"tiny-{arch}"), toks)
    np.testing.assert_allclose(got, ref, atol=2e-3 * ref.std())


def test_hf_numpy_reference_detects_a_wrong_permutation() -> None:
    """Sanity check of the check above: HF llama with unpermuted (GGUF-layout) q/k gives other logits."""
    llm = load("tiny-llama-f32.gguf")
    toks = llm.tokenize(PROMPT.encode())
    got = logits_of(llm, toks)
    cfg, w = load_hf(FIXTURES / "hf" / "tiny-llama")
    g = _gguf_arrays(FIXTURES / "tiny-llama-f32.gguf")
    for i in range(mf.N_LAYER):
        w[f"model.layers.{i}.self_attn.q_proj.weight"] = g[f"blk.{i}.attn_q.weight"]
        w[f"model.layers.{i}.self_attn.k_proj.weight"] = g[f"blk.{i}.attn_k.weight"]
    wrong = hf_reference_logits(cfg, w, toks)
    assert np.abs(got - wrong).max() > 0.5


@pytest.mark.transformers
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_fixture_equals_gguf_transformers(arch: str) -> None:
    torch = require("torch")
    transformers = require("transformers")
    llm = load(f"tiny-{arch}-f32.gguf")
    toks = llm.tokenize(PROMPT.encode())
    got = logits_of(llm, toks)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(FIXTURES / "hf" / f"tiny-{arch}"))
    model.eval()
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0].double().numpy()
    np.testing.assert_allclose(got, ref, atol=2e-3 * ref.std())
