#!/usr/bin/env python3
"""Generate the tiny, deterministic test fixture models used by ropepatch's tests.

Usage:
    python tools/make_fixtures.py [--out DIR]     (default DIR: <repo>/fixtures)

Writes, from one fixed numpy seed:

    DIR/tiny-llama-f32.gguf     architecture "llama" (NORM rope), all tensors F32
    DIR/tiny-llama-q8_0.gguf    same weights, 2-D matrices in Q8_0 (norms F32)
    DIR/tiny-qwen2-f32.gguf     architecture "qwen2" (NEOX rope, q/k/v biases), F32
    DIR/tiny-qwen2-q8_0.gguf    same weights, 2-D matrices in Q8_0 (norms, biases F32)
    DIR/hf/tiny-llama/{config.json,model.safetensors}   LlamaForCausalLM, same model
    DIR/hf/tiny-qwen2/{config.json,model.safetensors}   Qwen2ForCausalLM, same model
    DIR/tiny-exaone-f32.gguf    architecture "exaone" (NEOX rope): the tiny-qwen2 tensors plus
                                per-pair frequency factors (rope_freqs.weight, llama3-style)
    DIR/tiny-llama-longrope-f32.gguf  tiny-llama with LongRoPE: rope.scaling.type longrope,
                                original_context_length 32, attn_factor, rope_factors_long/short
    DIR/tiny-phi3-longrope-f32.gguf   architecture "phi3" (NEOX rope) as convert_hf_to_gguf.py writes
                                a Phi-3-128k model: fused attn_qkv and ffn_up (gate rows, then up),
                                no rope.scaling.type, the same LongRoPE keys and factor tensors

All models share one set of random weights ("HF layout"). The llama GGUF files
store q/k weights permuted exactly like llama.cpp's convert_hf_to_gguf.py does
(HF rotate_half layout -> GGUF NORM/interleaved layout); qwen2 (NEOX) stores them
unpermuted. The llama models have no biases; the qwen2 models add q/k/v biases,
so llama and qwen2 differ only by those biases.

Vocabulary (260 tokens, SentencePiece-style, tokenizer.ggml.model = "llama"):
    0 <unk> (UNKNOWN), 1 <s> (CONTROL, bos), 2 </s> (CONTROL, eos),
    3..258 byte tokens <0x00>..<0xFF> (BYTE), 259 "\u2581" (NORMAL; the SPM space).
add_space_prefix is false, so any UTF-8 text tokenizes to bytes (spaces to the
"\u2581" token) and detokenizes back to the identical text.

The output is byte-for-byte deterministic: running the tool twice gives identical
files (tests/formats/test_fixtures_files.py checks the committed files against a fresh run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
from fixture_spec import (  # the shape, vocabulary and weight scales
    BOS_ID,
    EOS_ID,
    HEAD_DIM,
    LLAMA3_FACTOR,
    LLAMA3_HIGH_FREQ_FACTOR,
    LLAMA3_LOW_FREQ_FACTOR,
    LONGROPE_ATTN_FACTOR,
    LONGROPE_ORIG_CTX,
    LONGROPE_SHORT_TOP,
    LONGROPE_TOP,
    N_CTX_TRAIN,
    N_EMBD,
    N_FF,
    N_HEAD,
    N_HEAD_KV,
    N_LAYER,
    N_ROT,
    N_VOCAB,
    RMS_EPS,
    ROPE_THETA,
    SCORES,
    SEED,
    STD_BIAS,
    STD_EMBED,
    STD_FF_DOWN,
    STD_FF_IN,
    STD_LM_HEAD,
    STD_NORM,
    STD_O,
    STD_QK,
    STD_V,
    TOKEN_TYPES,
    TOKENS,
    UNK_ID,
)
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from safetensors.numpy import save_file


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """All weights in Hugging Face naming and layout (float32, C-contiguous).

    Biases are always drawn (so the random stream is the same for every model);
    only the qwen2 models use them.
    """
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return np.ascontiguousarray((rng.standard_normal(shape) * std).astype(np.float32))

    def norm() -> np.ndarray:
        return np.ascontiguousarray((1.0 + rng.standard_normal(N_EMBD) * STD_NORM).astype(np.float32))

    n_kv = N_HEAD_KV * HEAD_DIM
    w: dict[str, np.ndarray] = {}
    w["model.embed_tokens.weight"] = normal((N_VOCAB, N_EMBD), STD_EMBED)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = normal((N_EMBD, N_EMBD), STD_QK)
        w[p + "self_attn.k_proj.weight"] = normal((n_kv, N_EMBD), STD_QK)
        w[p + "self_attn.v_proj.weight"] = normal((n_kv, N_EMBD), STD_V)
        w[p + "self_attn.o_proj.weight"] = normal((N_EMBD, N_EMBD), STD_O)
        w[p + "self_attn.q_proj.bias"] = normal((N_EMBD,), STD_BIAS)
        w[p + "self_attn.k_proj.bias"] = normal((n_kv,), STD_BIAS)
        w[p + "self_attn.v_proj.bias"] = normal((n_kv,), STD_BIAS)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = normal((N_FF, N_EMBD), STD_FF_IN)
        w[p + "mlp.up_proj.weight"] = normal((N_FF, N_EMBD), STD_FF_IN)
        w[p + "mlp.down_proj.weight"] = normal((N_EMBD, N_FF), STD_FF_DOWN)
    w["model.norm.weight"] = norm()
    w["lm_head.weight"] = normal((N_VOCAB, N_EMBD), STD_LM_HEAD)
    return w


def hf_weights(weights: dict[str, np.ndarray], arch: str) -> dict[str, np.ndarray]:
    """The tensors of the HF model for `arch` (llama: no biases)."""
    if arch == "qwen2":
        return dict(weights)
    return {k: v for k, v in weights.items() if not k.endswith(".bias")}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate_half rows -> NORM rows.

    Within each head, HF row (half*d/2 + j) becomes GGUF row (2*j + half).
    """
    out = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.ascontiguousarray(out)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_qk (GGUF NORM rows -> HF rotate_half rows)."""
    out = w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.ascontiguousarray(out)


def gguf_tensors(weights: dict[str, np.ndarray], arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in numpy (rows=ne1, cols=ne0) layout), in file order."""
    out: list[tuple[str, np.ndarray]] = [("token_embd.weight", weights["model.embed_tokens.weight"])]
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        q = weights[p + "self_attn.q_proj.weight"]
        k = weights[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q = permute_qk(q, N_HEAD)
            k = permute_qk(k, N_HEAD_KV)
        out.append((b + "attn_norm.weight", weights[p + "input_layernorm.weight"]))
        out.append((b + "attn_q.weight", q))
        out.append((b + "attn_k.weight", k))
        out.append((b + "attn_v.weight", weights[p + "self_attn.v_proj.weight"]))
        if arch == "qwen2":
            out.append((b + "attn_q.bias", weights[p + "self_attn.q_proj.bias"]))
            out.append((b + "attn_k.bias", weights[p + "self_attn.k_proj.bias"]))
            out.append((b + "attn_v.bias", weights[p + "self_attn.v_proj.bias"]))
        out.append((b + "attn_output.weight", weights[p + "self_attn.o_proj.weight"]))
        out.append((b + "ffn_norm.weight", weights[p + "post_attention_layernorm.weight"]))
        out.append((b + "ffn_gate.weight", weights[p + "mlp.gate_proj.weight"]))
        out.append((b + "ffn_up.weight", weights[p + "mlp.up_proj.weight"]))
        out.append((b + "ffn_down.weight", weights[p + "mlp.down_proj.weight"]))
    out.append(("output_norm.weight", weights["model.norm.weight"]))
    out.append(("output.weight", weights["lm_head.weight"]))
    return out


def llama3_rope_factors(n_rot: int = N_ROT, base: float = ROPE_THETA, orig_ctx: int = N_CTX_TRAIN,
                        factor: float = LLAMA3_FACTOR, low_freq_factor: float = LLAMA3_LOW_FREQ_FACTOR,
                        high_freq_factor: float = LLAMA3_HIGH_FREQ_FACTOR) -> np.ndarray:
    """rope_freqs.weight as convert_hf_to_gguf.py writes it for rope_type "llama3": per pair,
    1 for wavelengths below orig_ctx/high_freq_factor, ``factor`` above orig_ctx/low_freq_factor,
    a smooth mix in between (float32, n_rot/2 values)."""
    freqs = 1.0 / (base ** (np.arange(0, n_rot, 2, dtype=np.float64) / n_rot))
    low_wavelen, high_wavelen = orig_ctx / low_freq_factor, orig_ctx / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def longrope_factors(n_rot: int = N_ROT, top: float = LONGROPE_TOP, power: float = 1.5) -> np.ndarray:
    """LongRoPE-style per-pair divisors (float32, n_rot/2 values): monotone from 1 at the highest
    frequency to ``top`` at the lowest, ``top ** ((i / (n - 1)) ** power)`` (a searched profile's
    shape; the values themselves are made up: the fixture has random weights)."""
    n = n_rot // 2
    return np.asarray([top ** ((i / (n - 1)) ** power) for i in range(n)], dtype=np.float32)


def phi3_tensors(weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The llama tensors in phi3's layout (convert_hf_to_gguf.py Phi3MiniModel, HF Phi3's
    qkv_proj / gate_up_proj): q/k unpermuted (NEOX), attn_q/k/v fused into attn_qkv (q rows, k
    rows, v rows) and ffn_gate/ffn_up into ffn_up (gate rows, then up rows: ggml_swiglu's halves)."""
    t = dict(gguf_tensors(weights, "qwen2"))
    out = []
    for name, arr in gguf_tensors(weights, "qwen2"):
        blk, _, leaf = name.rpartition(".")[0].rpartition(".")
        if name.endswith(".bias"):  # phi3 has none
            continue
        if leaf in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
            if leaf == "attn_q":
                out.append((f"{blk}.attn_qkv.weight", np.concatenate(
                    [t[f"{blk}.attn_{x}.weight"] for x in "qkv"], axis=0)))
            continue
        if leaf == "ffn_up":
            arr = np.concatenate([t[f"{blk}.ffn_gate.weight"], arr], axis=0)
        out.append((name, arr))
    return out


def write_gguf(path: Path, arch: str, weights: dict[str, np.ndarray], qtype: str) -> None:
    longrope = arch.endswith("-longrope")
    arch = arch.removesuffix("-longrope")
    assert arch in ("llama", "qwen2", "exaone", "phi3") and qtype in ("f32", "q8_0")
    ftype = LlamaFileType.ALL_F32 if qtype == "f32" else LlamaFileType.MOSTLY_Q8_0
    w = GGUFWriter(path, arch)  # adds general.architecture
    w.add_type("model")
    # not "tiny-phi3": llama.cpp's vocab loader gives a general.name containing "phi3" Phi-3's token
    # attributes and then throws (unordered_map::at) on a vocabulary without <|endoftext|>
    w.add_name("tiny-longrope-phi" if arch == "phi3" else f"tiny-{arch}")
    w.add_description(
        "ropepatch test fixture: tiny random-weight model generated by tools/make_fixtures.py"
    )
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_vocab_size(N_VOCAB)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_ROT)
    w.add_rope_freq_base(ROPE_THETA)
    if longrope:  # as convert_hf_to_gguf.py writes a LongRoPE model (Phi3MiniModel); llama: plus the type
        if arch == "llama":
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        w.add_rope_scaling_orig_ctx_len(LONGROPE_ORIG_CTX)
        w.add_rope_scaling_attn_factors(LONGROPE_ATTN_FACTOR)
    if arch == "phi3":
        w.add_sliding_window(0)  # convert_hf_to_gguf.py: 0 = no sliding window (not Phi-4)
    w.add_layer_norm_rms_eps(RMS_EPS)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores(SCORES)
    w.add_token_types(TOKEN_TYPES)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    tensors = phi3_tensors(weights) if arch == "phi3" else gguf_tensors(weights, "qwen2" if arch == "exaone" else arch)
    if arch == "exaone":  # first, as convert_hf_to_gguf.py's generate_extra_tensors puts it
        tensors.insert(0, ("rope_freqs.weight", llama3_rope_factors()))
    if longrope:  # first, long then short, as convert_hf_to_gguf.py's Phi3MiniModel puts them
        tensors[:0] = [("rope_factors_long.weight", longrope_factors()),
                       ("rope_factors_short.weight", longrope_factors(top=LONGROPE_SHORT_TOP))]
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if qtype == "q8_0" and arr.ndim == 2:
            q = gguf.quants.quantize(arr, GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_config(arch: str) -> dict:
    cfg: dict = {
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": N_EMBD,
        "initializer_range": 0.02,
        "intermediate_size": N_FF,
        "max_position_embeddings": N_CTX_TRAIN,
        "num_attention_heads": N_HEAD,
        "num_hidden_layers": N_LAYER,
        "num_key_value_heads": N_HEAD_KV,
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": N_VOCAB,
    }
    if arch == "llama":
        cfg.update({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "mlp_bias": False,
            "head_dim": HEAD_DIM,
            "pretraining_tp": 1,
        })
    else:
        # like real Qwen2 configs: no head_dim key (= hidden_size // num_attention_heads)
        cfg.update({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": N_LAYER,
        })
    return cfg


def write_hf(dirpath: Path, arch: str, weights: dict[str, np.ndarray]) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    text = json.dumps(hf_config(arch), indent=2, sort_keys=True) + "\n"
    (dirpath / "config.json").write_text(text, encoding="utf-8")
    save_file(hf_weights(weights, arch), str(dirpath / "model.safetensors"), metadata={"format": "pt"})


GGUF_FILES = [
    ("tiny-llama-f32.gguf", "llama", "f32"),
    ("tiny-llama-q8_0.gguf", "llama", "q8_0"),
    ("tiny-qwen2-f32.gguf", "qwen2", "f32"),
    ("tiny-qwen2-q8_0.gguf", "qwen2", "q8_0"),
]
HF_DIRS = [("hf/tiny-llama", "llama"), ("hf/tiny-qwen2", "qwen2")]
# models with per-pair frequency factors (kept out of GGUF_FILES: not every method applies to them)
FACTOR_FILES = [("tiny-exaone-f32.gguf", "exaone", "f32"), ("tiny-llama-longrope-f32.gguf", "llama-longrope", "f32"),
                ("tiny-phi3-longrope-f32.gguf", "phi3-longrope", "f32")]

# Every generated path, relative to the output directory (fixtures/README.md is hand-written).
GENERATED_FILES = [name for name, _, _ in GGUF_FILES] + [
    f"{d}/{f}" for d, _ in HF_DIRS for f in ("config.json", "model.safetensors")
] + [name for name, _, _ in FACTOR_FILES]


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    weights = make_weights(SEED)
    for name, arch, qtype in GGUF_FILES:
        write_gguf(out / name, arch, weights, qtype)
    for d, arch in HF_DIRS:
        write_hf(out / d, arch, weights)
    for name, arch, qtype in FACTOR_FILES:
        write_gguf(out / name, arch, weights, qtype)
    return [out / f for f in GENERATED_FILES]


def main(argv: list[str] | None = None) -> int:
    default_out = Path(__file__).resolve().parent.parent / "fixtures"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_out, help=f"output directory (default: {default_out})")
    args = ap.parse_args(argv)
    for p in generate(args.out):
        print(f"{os.path.getsize(p):>9}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
