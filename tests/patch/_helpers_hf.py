"""Shared by the test_hf_*.py files: small Hugging Face model directories built in tmp_path
(config.json written with indent 2 or 4, safetensors written with safetensors.numpy, one file or
shards plus an index), copies of the committed fixtures/hf models when present, and snapshots of
every file's bytes and link target to prove byte-identical restores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from conftest import FIXTURES, sha256
from safetensors.numpy import save_file

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header

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
