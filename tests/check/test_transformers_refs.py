"""The HF side checked against transformers WITHOUT installing torch: fixtures/transformers-refs
holds what transformers computed (tools/make_transformers_refs.py, which names the versions)
for the configs ropepatch writes, and its logits of the HF fixtures. The live comparisons run
with the `hf-test` extra (`pytest -m transformers`)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, require

from ropepatch.check import hf_reference as ref

REFS = FIXTURES / "transformers-refs"
DATA = json.loads((REFS / "refs.json").read_text())
sys.path.insert(0, str(ROOT / "tools"))
import make_transformers_refs as gen  # noqa: E402


def test_refs_name_their_versions():
    assert DATA["transformers"] and DATA["torch"] and DATA["generator"] == "tools/make_transformers_refs.py"
    assert {(e["model"], e["method"]) for e in DATA["rope"]} == {
        (m, meth) for m in gen.base_configs() for meth in gen.METHODS}


@pytest.mark.parametrize("entry", DATA["rope"], ids=lambda e: f"{e['model']}-{e['method']}-{e['seq_len']}")
def test_reference_matches_transformers_vectors(entry):
    """ropepatch still writes the config the vectors were made for, and its NumPy reference gives
    transformers' inverse frequencies and attention factor for it."""
    assert gen.patched(gen.base_configs()[entry["model"]], entry["method"]) == entry["config"]
    inv, att = ref.hf_inv_freq(entry["config"], seq_len=entry["seq_len"])
    np.testing.assert_allclose(inv, entry["inv_freq"], rtol=2e-6, atol=0)
    assert att == pytest.approx(entry["attention_factor"], rel=1e-12)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_logits_match_transformers_logits(arch):
    """The GGUF fixture in llama.cpp gives the logits transformers gave for the HF fixture."""
    llama_cpp = require("llama_cpp")
    want = np.load(REFS / "logits.npz")[arch].astype(np.float64)
    llm = llama_cpp.Llama(str(FIXTURES / f"tiny-{arch}-f32.gguf"), n_ctx=512, n_batch=512, n_threads=2,
                          logits_all=True, type_k=0, type_v=0, verbose=False)  # F32 KV cache
    try:
        toks = list(llm.tokenize(b"The quick brown fox jumps over the lazy dog."))
        assert toks == DATA["prompt_tokens"][arch]
        llm.eval(toks)
        got = np.array(llm.scores[: len(toks)], dtype=np.float64)
    finally:
        llm.close()
    np.testing.assert_allclose(got, want, atol=2e-3 * want.std())
