"""The NumPy reference forward pass against llama.cpp's logits, beyond the training context.

RoPE is relative: with one batch from an empty cache, the logits depend on position
*differences* only (up to float32 rounding), so starting a 16-token batch at 1000 would not
exercise distances beyond the training context (128). These tests decode 320 tokens, so
attention spans distances up to 319 > 128, both from position 0 and from position 1000, with
the file's RoPE and with runtime overrides, and compare the runtime's logits with the
reference forward (max abs error, top-1 agreement, KL(ref || runtime)).

Tolerances (measured on the tiny fixtures, then given headroom; see the report in
``_measure`` output with ``pytest -s``):

* F32 weights, F32 KV cache: the runtime computes in float32 throughout, the reference in
  float64: max |logit diff| <= 2e-3, KL <= 1e-6 nats, top-1 all equal.
* Q8_0 weights: ggml multiplies Q8_0 weights by activations that it first quantizes to Q8_0
  (the CPU vec_dot type), the reference uses the dequantized weights with exact activations;
  that 8-bit activation rounding gives max |logit diff| ~1e-1: tolerance 0.5, KL <= 1e-3,
  top-1 >= 90 %.

Negative control: the reference with a wrong RoPE (base / layout / scale) must be clearly
worse than the tolerance, so these comparisons do detect a wrong rotary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ropepatch.keys import LLAMA_ROPE_SCALING_TYPE, RopeLayout  # noqa: E402
from ropepatch.probe import probe  # noqa: E402
from ropepatch.reference_forward import compare_logits, forward, load_model  # noqa: E402
from ropepatch.rope_reference import ggml_rope_args  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
N_TOKENS = 320  # distances up to 319 > n_ctx_train = 128
TOKENS = np.random.default_rng(7).integers(3, 260, size=N_TOKENS).tolist()
TOKENS[0] = 1  # <s>

TOL = {  # name -> (max_abs, kl_max, top1_min)
    "f32": (2e-3, 1e-6, 1.0),
    "q8_0": (0.5, 1e-3, 0.9),
}

_MODELS: dict[str, object] = {}


def model(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} missing: run tools/make_fixtures.py")
    if name not in _MODELS:
        _MODELS[name] = load_model(path)
    return _MODELS[name]


def _tol(name):
    return TOL["q8_0" if "q8_0" in name else "f32"]


def _check(cmp, name):
    max_abs, kl_max, top1 = _tol(name)
    assert cmp.max_abs <= max_abs, cmp
    assert cmp.kl_max <= kl_max, cmp
    assert cmp.top1_agreement >= top1, cmp


CASES = {
    "file@0": (0, {}),
    "file@1000": (1000, {}),
    "linear4@1000": (1000, dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["linear"], rope_freq_scale=0.25)),
    "yarn4@0": (0, dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=0.25, yarn_orig_ctx=128)),
    "ntk-base@0": (0, dict(rope_freq_base=10000.0 * 4 ** (16 / 14))),
}


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"])
@pytest.mark.parametrize("case", list(CASES))
def test_reference_forward_matches_runtime(name, case):
    m = model(name)
    start, kw = CASES[case]
    res = probe(m.path, TOKENS, start, n_ctx=2048, layers=(), kv_cache_type="f32", **kw)
    ref = forward(m, TOKENS, start, **kw)
    cmp = compare_logits(ref, res.logits)
    print(f"\n{name} {case}: max_abs={cmp.max_abs:.3g} top1={cmp.top1_agreement:.3f} "
          f"kl_max={cmp.kl_max:.3g} kl_mean={cmp.kl_mean:.3g}")
    _check(cmp, name)


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_wrong_rope_is_detected(name):
    m = model(name)
    res = probe(m.path, TOKENS, 0, n_ctx=2048, layers=(), kv_cache_type="f32")
    right = ggml_rope_args(m.rope)
    wrong_layout = dict(right, mode=0 if right["mode"] == 2 else 2)
    wrong_base = dict(right, freq_base=right["freq_base"] * 2)
    wrong_scale = dict(right, freq_scale=0.5)
    max_abs, kl_max, _ = _tol(name)
    good = compare_logits(forward(m, TOKENS, 0, rope_op=right), res.logits)
    assert good.max_abs <= max_abs
    for op in (wrong_layout, wrong_base, wrong_scale):
        bad = compare_logits(forward(m, TOKENS, 0, rope_op=op), res.logits)
        print(f"\n{name} wrong rope {op}: {bad}")
        assert bad.max_abs > 3 * max_abs and bad.kl_max > 10 * kl_max and bad.max_abs > 10 * good.max_abs


def test_default_f16_kv_cache_is_close_but_looser():
    """The runtime's default KV cache is F16: errors grow (K and V rounded to 11 bits)."""
    m = model("tiny-llama-f32.gguf")
    res = probe(m.path, TOKENS, 1000, n_ctx=2048, layers=())
    cmp = compare_logits(forward(m, TOKENS, 1000), res.logits)
    print(f"\nf16 kv cache: {cmp}")
    assert cmp.max_abs < 0.1 and cmp.kl_max < 1e-3 and cmp.top1_agreement >= 0.95


def test_forward_shapes_and_layout():
    m = model("tiny-qwen2-f32.gguf")
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.head_dim) == ("qwen2", 2, 4, 2, 16)
    assert m.rope.layout == RopeLayout.NEOX and m.rope.n_ctx_train == 128
    logits = forward(m, [1, 2, 3], 5)
    assert logits.shape == (3, 260) and np.all(np.isfinite(logits))
    # causal: the first token's logits do not depend on later tokens
    np.testing.assert_allclose(forward(m, [1, 9, 9], 5)[0], logits[0], rtol=1e-12)
