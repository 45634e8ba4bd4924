"""The NumPy reference forward pass against llama.cpp's logits, beyond the training context.

RoPE is relative: with one batch from an empty cache, the logits depend on position
*differences* only (up to float32 rounding), so starting a 16-token batch at 1000 would not
exercise distances beyond the training context (128). These tests decode 320 tokens, so
attention spans distances up to 319 > 128, both from position 0 and from position 1000, with
the file's RoPE and with runtime overrides, and compare the runtime's logits with the
reference forward (max abs error, top-1 agreement, KL(ref || runtime)).

The runtime is run with an F32 KV cache and flash attention off (``kv_cache_type="f32",
flash_attn=False``): the CPU flash-attention kernel converts Q to F16 and the default cache is
F16, which alone gives ~1e-2 logit errors (checked separately, looser, in
``test_default_runtime_config_is_close``). For Q8_0 weights the reference mimics ggml's
activation quantization (``ggml_q8_0_activations=True``: the CPU backend quantizes the
activations of every Q8_0 matmul to Q8_0).

The reference's rotary runs in its float32 mode (``rope_dtype=np.float32``, ggml's own
float32 angle recipe); the exact float64 rotary differs from the runtime's float32 angles
by up to ~1e-4 rad at positions ~1300, which shows up as ~4e-4 in the logits.

Tolerances (measured on the tiny fixtures with 320 tokens, then given headroom):

* F32: runtime float32 vs reference float64. Measured max |logit diff| <= 1.6e-5 (logits
  of magnitude ~10, i.e. ~1e-6 relative), KL max <= 1.1e-11. Tolerance: max_abs 2e-4,
  KL max 1e-9, KL mean 1e-10, top-1 100 %.
* Q8_0 (emulated activations): most tokens agree to ~1e-6, but about one activation per
  run sits on a Q8_0 rounding boundary (float32 vs float64 arithmetic) and flips one 8-bit
  step; through attention that perturbs every later token by up to ~0.2. Measured
  max_abs <= 0.21, KL max <= 3.4e-3, KL mean <= 2.2e-4, top-1 >= 99.4 %. Tolerance:
  max_abs 0.5, KL max 1e-2, KL mean 1e-3, top-1 >= 98 %. (Without the activation
  emulation: KL mean ~1.1e-3, max_abs ~0.45.)
* A wrong rotary (layout, base x2, scale 0.5) gives max_abs > 10, KL mean ~1..3 nats,
  top-1 < 50 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

require("gguf")
require("llama_cpp")

from ropepatch.check.ggml_args import ggml_rope_args  # noqa: E402
from ropepatch.check.reference_forward import compare_logits, forward, load_model  # noqa: E402
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeLayout  # noqa: E402
from ropepatch.runtime.probe import probe  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
N_TOKENS = 320  # distances up to 319 > n_ctx_train = 128
TOKENS = np.random.default_rng(7).integers(3, 260, size=N_TOKENS).tolist()
TOKENS[0] = 1  # <s>

TOL = {  # name -> (max_abs, kl_max, kl_mean, top1_min)
    "f32": (2e-4, 1e-9, 1e-10, 1.0),
    "q8_0": (0.5, 1e-2, 1e-3, 0.98),
}
RUNTIME = dict(n_ctx=2048, layers=(), kv_cache_type="f32", flash_attn=False)

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


def _ref(m, tokens, start, **kw):
    return forward(m, tokens, start, ggml_q8_0_activations=True, rope_dtype=np.float32, **kw)


def _check(cmp, name):
    max_abs, kl_max, kl_mean, top1 = _tol(name)
    assert cmp.max_abs <= max_abs, cmp
    assert cmp.kl_max <= kl_max, cmp
    assert cmp.kl_mean <= kl_mean, cmp
    assert cmp.top1_agreement >= top1, cmp


CASES = {
    "file@0": (0, {}),
    "file@1000": (1000, {}),
    "linear4@1000": (1000, dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["linear"], rope_freq_scale=0.25)),
    "yarn4@0": (0, dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=0.25, yarn_orig_ctx=128)),
    "ntk-base@0": (0, dict(rope_freq_base=10000.0 * 4 ** (16 / 14))),
}


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf",
                                  "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"])
@pytest.mark.parametrize("case", list(CASES))
def test_reference_forward_matches_runtime(name, case):
    m = model(name)
    start, kw = CASES[case]
    res = probe(m.path, TOKENS, start, **RUNTIME, **kw)
    ref = _ref(m, TOKENS, start, **kw)
    cmp = compare_logits(ref, res.logits)
    print(f"\n{name} {case}: max_abs={cmp.max_abs:.3g} p95={cmp.p95_abs:.3g} top1={cmp.top1_agreement:.3f} "
          f"kl_max={cmp.kl_max:.3g} kl_mean={cmp.kl_mean:.3g}")
    _check(cmp, name)


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_wrong_rope_is_detected(name):
    m = model(name)
    res = probe(m.path, TOKENS, 0, **RUNTIME)
    right = ggml_rope_args(m.rope)
    wrong_layout = dict(right, mode=0 if right["mode"] == 2 else 2)
    wrong_base = dict(right, freq_base=right["freq_base"] * 2)
    wrong_scale = dict(right, freq_scale=0.5)
    _, _, kl_mean, _ = _tol(name)
    good = compare_logits(_ref(m, TOKENS, 0, rope_op=right), res.logits)
    _check(good, name)
    for op in (wrong_layout, wrong_base, wrong_scale):
        bad = compare_logits(_ref(m, TOKENS, 0, rope_op=op), res.logits)
        print(f"\n{name} wrong rope {op}: {bad}")
        assert bad.max_abs > 1.0 and bad.kl_mean > 100 * kl_mean and bad.top1_agreement < 0.9


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_default_runtime_config_is_close(name):
    """Default runtime settings (F16 KV cache, flash attention auto = on for CPU): Q/K/V
    are rounded to F16 inside attention; measured max |diff| ~1e-2 (F32), KL ~1e-5."""
    m = model(name)
    res = probe(m.path, TOKENS, 1000, n_ctx=2048, layers=())
    cmp = compare_logits(_ref(m, TOKENS, 1000), res.logits)
    print(f"\ndefault runtime config {name}: {cmp}")
    assert cmp.max_abs < 0.6 and cmp.kl_max < 2e-2 and cmp.top1_agreement >= 0.95


def test_forward_shapes_and_layout():
    m = model("tiny-qwen2-f32.gguf")
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.head_dim) == ("qwen2", 2, 4, 2, 16)
    assert m.rope.layout == RopeLayout.NEOX and m.rope.n_ctx_train == 128
    logits = forward(m, [1, 2, 3], 5)
    assert logits.shape == (3, 260) and np.all(np.isfinite(logits))
    # causal: the first token's logits do not depend on later tokens
    np.testing.assert_allclose(forward(m, [1, 9, 9], 5)[0], logits[0], rtol=1e-12)
