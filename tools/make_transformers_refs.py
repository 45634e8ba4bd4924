#!/usr/bin/env python3
"""Regenerate fixtures/transformers-refs/: what transformers itself computes for the configs
ropepatch writes, so the default test suite checks the HF side against transformers without
installing torch (tests/check/test_transformers_refs.py). Needs the `hf-test` extra:

    pip install -e '.[hf-test]' && python tools/make_transformers_refs.py

Writes `refs.json` (transformers and torch versions; for each model x method: the config
ropepatch writes when extending to 1000 tokens, and transformers' inverse frequencies and
attention factor at seq_len None, 700 and 3000) and `logits.npz` (transformers' logits of the
HF fixtures on the PROMPT tokens that tests/formats/test_fixtures_llama_cpp.py uses).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ropepatch.formats.hf.apply import apply_plan  # noqa: E402
from ropepatch.formats.hf.config import read_rope, unscaled_params  # noqa: E402
from ropepatch.formats.hf.json_doc import load_config, parse_config  # noqa: E402
from ropepatch.rope.methods import make_plan  # noqa: E402

OUT = os.path.join(ROOT, "fixtures", "transformers-refs")
CTX = 1000
SEQ_LENS = (None, 700, 3000)
METHODS = ("ntk", "dynamic", "linear", "yarn")


def base_configs() -> dict[str, dict]:
    """The models: the two HF fixtures and a partial-rotary phi config (d = 8 of head_dim 16)."""
    out = {n: load_config(os.path.join(ROOT, "fixtures", "hf", n, "config.json")).data
           for n in ("tiny-llama", "tiny-qwen2")}
    phi = copy.deepcopy(out["tiny-llama"])
    phi.update(model_type="phi", architectures=["PhiForCausalLM"], partial_rotary_factor=0.5,
               rope_theta=500000.0, layer_norm_eps=1e-05)
    for k in ("head_dim", "rms_norm_eps"):
        phi.pop(k, None)
    out["partial"] = phi
    return out


def patched(cfg: dict, method: str) -> dict:
    """The config ropepatch writes for ``method`` to CTX tokens (pure: no files)."""
    doc = parse_config(json.dumps(cfg), "config.json")
    rope = read_rope(doc)
    plan = make_plan(unscaled_params(rope), CTX, method)
    return apply_plan(doc, rope, plan)[0]


def transformers_inv_freq(cfg: dict, seq_len):
    """transformers' (inv_freq, attention_factor) for ``cfg``, as its rotary embedding computes it."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tc = AutoConfig.for_model(**copy.deepcopy(cfg))  # transformers edits the rope block in place
    rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype != "default":
        inv, att = ROPE_INIT_FUNCTIONS[rtype](tc, None, seq_len=seq_len)
    elif "default" in ROPE_INIT_FUNCTIONS:
        inv, att = ROPE_INIT_FUNCTIONS["default"](tc, None)
    else:
        mt = cfg["model_type"]
        mod = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
        cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("RotaryEmbedding")
                   and hasattr(getattr(mod, n), "compute_default_rope_parameters"))
        inv, att = cls.compute_default_rope_parameters(tc)
    return [float(v) for v in inv.double().numpy()], float(att)


def fixture_logits(tokens: dict[str, list[int]]) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for arch, toks in tokens.items():
        model = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "fixtures", "hf", f"tiny-{arch}"))
        model.eval()
        with torch.no_grad():
            out[arch] = model(torch.tensor([toks])).logits[0].double().numpy()
    return out


def prompt_tokens() -> dict[str, list[int]]:
    """The PROMPT's tokens per fixture, from llama.cpp's own tokenizer (the test feeds these)."""
    import llama_cpp

    prompt = "The quick brown fox jumps over the lazy dog."
    out = {}
    for arch in ("llama", "qwen2"):
        llm = llama_cpp.Llama(os.path.join(ROOT, "fixtures", f"tiny-{arch}-f32.gguf"), n_ctx=256, verbose=False)
        out[arch] = list(llm.tokenize(prompt.encode()))
        llm.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    import torch
    import transformers

    entries = []
    for name, cfg in base_configs().items():
        for method in METHODS:
            pc = patched(cfg, method)
            for seq_len in SEQ_LENS:
                inv, att = transformers_inv_freq(pc, seq_len)
                entries.append({"model": name, "method": method, "seq_len": seq_len, "config": pc,
                                "inv_freq": inv, "attention_factor": att})
                print(f"{name:10} {method:8} seq_len {seq_len}: {len(inv)} frequencies, attention {att:.6g}")
    toks = prompt_tokens()
    os.makedirs(args.out, exist_ok=True)
    refs = {"transformers": transformers.__version__, "torch": torch.__version__, "ctx": CTX,
            "generator": "tools/make_transformers_refs.py", "prompt_tokens": toks, "rope": entries}
    with open(os.path.join(args.out, "refs.json"), "w") as f:
        json.dump(refs, f, indent=1, sort_keys=True)
        f.write("\n")
    logits = fixture_logits(toks)
    np.savez_compressed(os.path.join(args.out, "logits.npz"), **{k: v.astype(np.float32) for k, v in logits.items()})
    print(f"wrote {args.out} (transformers {transformers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
