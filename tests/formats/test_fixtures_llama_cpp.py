"""Tests for the tiny fixture models (tools/make_fixtures.py, fixtures/) in llama.cpp:

- every GGUF fixture loads in llama-cpp-python, reports n_ctx_train 128 and its
  rope.freq_base, tokenizes/detokenizes arbitrary UTF-8, decodes a 100-token
  prompt with finite, non-constant logits, and RoPE visibly matters;
- the HF fixtures are the same models as the F32 GGUF files (numpy reference
  forward pass of the HF weights == llama.cpp logits; with torch+transformers
  installed, also transformers' logits == llama.cpp logits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _helpers_fixtures import ARCH_OF, FIXTURES, GGUF_NAMES, gguf_arrays, mf
from conftest import require

PROMPT = "The quick brown fox jumps over the lazy dog."
UNICODE_TEXT = "Grüße, naïve café — 東京 👍 «ok»\n\ttabs  and  spaces "


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
    g = gguf_arrays(FIXTURES / "tiny-llama-f32.gguf")
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
