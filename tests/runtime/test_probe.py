"""Real runtime tests of ropepatch.probe (llama-cpp-python, no mocks) against the fixtures.

For each tiny fixture (llama = NORM, qwen2 = NEOX; F32 and Q8_0 weights; training ctx 128)
we decode 16 tokens at positions 1000..1015 (far beyond the training context, in a context
of n_ctx 2048) and check that

1. the ROPE op parameters the runtime used equal ``ggml_rope_args`` of the file's settings
   (and of runtime / kv overrides) -- exactly, floats compared as float32;
2. ``apply_rope`` applied to the captured un-rotated input reproduces the captured output:

   * float32 mode (ggml's own float32 recipe) within ``ULPS_F32 = 4`` float32 ulps of the
     pair magnitude: ``|ref - out| <= 4 * eps32 * mscale * (|x0| + |x1|)`` for each element
     of a rotated pair (x0, x1). Both sides compute the *same* float32 angle, so what is left
     is cosf/sinf (<= 1 ulp each in glibc vs. our correctly rounded values), the mscale
     product (0.5 ulp) and the rotation x0*c - x1*s (two products and a sum, <= 1.5 ulp of
     |x0 c| + |x1 s| with or without FMA contraction): <= ~3 ulps, 4 for margin;
   * float64 mode (the exact rotary) within the float32 angle error plus the same 4 ulps:
     the runtime's angle theta_i = p * ts^i (float32 running product) carries a relative
     error <= (i + 3) * eps32, so ``|ref - out| <= mscale * (|x0|+|x1|) * ((i + 3) * eps32 *
     |theta_i| + 4 * eps32)``;

3. a negative control: the same reference with the wrong layout or a wrong base does NOT
   match (errors orders of magnitude above the tolerance).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import require

gguf = require("gguf")
require("llama_cpp")

from ropepatch.check.ggml_args import ggml_rope_args  # noqa: E402
from ropepatch.check.rope_reference import (  # noqa: E402
    apply_rope_op,
    rope_angles,
    yarn_mscale,
)
from ropepatch.rope.arch import rope_layout  # noqa: E402
from ropepatch.rope.params import (  # noqa: E402
    LLAMA_ROPE_SCALING_TYPE,
    RopeLayout,
    RopeParams,
    ScalingType,
)
from ropepatch.runtime.probe import ProbeResult, RopeOpParams, gpu_available, probe  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FIXTURE_NAMES = ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"]
TOKENS = [1, 75, 104, 108, 108, 111, 259, 90, 111, 114, 108, 100, 36, 259, 2, 200]  # 16 ids < 260
START = 1000  # positions 1000..1015, far beyond n_ctx_train = 128
N_CTX = 2048
ULPS_F32 = 4
EPS32 = float(np.finfo(np.float32).eps)


# ---- helpers ---------------------------------------------------------------------------------


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} missing: run tools/make_fixtures.py")
    return path


def read_params(path: Path) -> RopeParams:
    """The file's RoPE settings, read directly with gguf-py (independent of ropepatch's reader)."""
    r = gguf.GGUFReader(str(path))

    def val(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = val("general.architecture")
    n_embd, n_head = val(f"{arch}.embedding_length"), val(f"{arch}.attention.head_count")
    head_dim = val(f"{arch}.attention.key_length", n_embd // n_head)
    return RopeParams(
        arch=arch,
        n_ctx_train=int(val(f"{arch}.context_length")),
        rope_dim=int(val(f"{arch}.rope.dimension_count", head_dim)),
        head_dim=int(head_dim),
        freq_base=float(val(f"{arch}.rope.freq_base", 10000.0)),
        scaling_type=ScalingType(val(f"{arch}.rope.scaling.type", "none")),
        scaling_factor=float(val(f"{arch}.rope.scaling.factor", 0.0)),
        orig_ctx=int(val(f"{arch}.rope.scaling.original_context_length", 0)),
        attn_factor=float(val(f"{arch}.rope.scaling.attn_factor", 1.0)),
        layout=rope_layout(arch),
    )


from ropepatch.check.rope_reference import pair_magnitude_and_index as _pair_mag_and_index  # noqa: E402


def rope_errors(cap, op: dict | None = None, layout=None) -> dict:
    """Reference vs runtime for one capture: max abs / rel errors and the worst error as a
    multiple of each mode's tolerance (<= 1 passes)."""
    op = dict(cap.op.as_dict() if op is None else op)
    if layout is not None:
        op["mode"] = 2 if layout == RopeLayout.NEOX else 0
    n = op["n_dims"]
    lay = RopeLayout.NEOX if op["mode"] == 2 else RopeLayout.NORM
    x, out = cap.input, cap.output.astype(np.float64)
    mscale = yarn_mscale(op["freq_scale"], op["ext_factor"], op["attn_factor"])
    mag, idx = _pair_mag_and_index(x, n, lay)
    theta = np.abs(
        rope_angles(cap.positions, n, op["freq_base"], op["freq_scale"], op["ext_factor"], op["beta_fast"],
                    op["beta_slow"], op["n_ctx_orig"], cap.freq_factors)
    )  # (n_tokens, n_pairs)
    tol32 = ULPS_F32 * EPS32 * mscale * mag + 1e-30
    tol64 = mscale * mag * ((idx + 3)[None, None, :] * EPS32 * theta[:, None, idx] + ULPS_F32 * EPS32) + 1e-30
    res = {}
    for mode, dtype, tol in (("f32", np.float32, tol32), ("f64", np.float64, tol64)):
        ref = apply_rope_op(x, cap.positions, op, freq_factors=cap.freq_factors, dtype=dtype).astype(np.float64)
        err = np.abs(ref - out)
        # dims beyond n_dims pass through: must be bit-identical
        tail = float(err[..., n:].max()) if x.shape[-1] > n else 0.0
        e = err[..., :n]
        res[mode] = {
            "max_abs": float(e.max()),
            "max_rel": float((e / np.maximum(np.abs(out[..., :n]), 1e-30)).max()),
            "max_over_tol": float((e / tol).max()),
            "tail": tail,
        }
    return res


def assert_reproduces(cap, op: dict | None = None):
    res = rope_errors(cap, op)
    for mode in ("f32", "f64"):
        r = res[mode]
        assert r["tail"] == 0.0, f"{cap.name}: pass-through dims changed"
        assert r["max_over_tol"] <= 1.0, f"{cap.name} ({mode}): error {r} exceeds tolerance"
    return res


def assert_op_equals(cap, expected: dict):
    got = cap.op.as_dict()
    assert got == expected, f"{cap.name}: runtime op {got} != expected {expected}"
    # floats compared exactly as float32 (the op stores float32)
    for key in ("freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow"):
        assert np.float32(got[key]) == np.float32(expected[key])


def check_probe(res: ProbeResult, params: RopeParams, expected: dict, start=START):
    n_tok = len(TOKENS)
    names = [c.name for c in res.ropes]
    assert sorted(names) == ["Kcur-0", "Qcur-0"], names
    np.testing.assert_array_equal(res.positions, np.arange(start, start + n_tok))
    for cap in res.ropes:
        n_heads = 4 if cap.name.startswith("Q") else 2
        assert cap.input.shape == cap.output.shape == (n_tok, n_heads, params.head_dim)
        assert cap.tensor_type in ("f32", "f16")
        np.testing.assert_array_equal(cap.positions, res.positions)
        assert cap.freq_factors is None
        assert_op_equals(cap, expected)
        assert_reproduces(cap, expected)
    assert res.logits is not None and res.logits.shape == (n_tok, 260)
    assert np.all(np.isfinite(res.logits))


# ---- module-level cache of unpatched probes (each probe loads the model once) ----------------

_CACHE: dict[str, ProbeResult] = {}


def unpatched(name: str) -> ProbeResult:
    if name not in _CACHE:
        _CACHE[name] = probe(fixture(name), TOKENS, START, n_ctx=N_CTX)
    return _CACHE[name]


# ---- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_unpatched_file_params_and_rotation(name):
    path = fixture(name)
    params = read_params(path)
    assert params.n_ctx_train == 128 and params.rope_dim == params.head_dim == 16
    assert params.layout == (RopeLayout.NORM if "llama" in name else RopeLayout.NEOX)
    res = unpatched(name)
    expected = ggml_rope_args(params)
    assert expected["mode"] == (0 if "llama" in name else 2)
    check_probe(res, params, expected)
    assert res.n_ctx == N_CTX and res.n_ctx_train == 128


OVERRIDES = {
    "base": dict(rope_freq_base=50000.0),
    "base-odd": dict(rope_freq_base=123456.789),  # not a float32: stored rounded
    "linear": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["linear"], rope_freq_scale=0.25),
    "yarn": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=0.125, yarn_orig_ctx=128),
    "yarn-orig64-third": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=1 / 3,
                              yarn_orig_ctx=64),
    "yarn-attn-ignored": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=0.0625,
                              yarn_attn_factor=3.0),
    "linear-attn": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["linear"], rope_freq_scale=0.5,
                        yarn_attn_factor=0.75),
    "none-drops-scale": dict(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["none"], rope_freq_scale=0.25),
}


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf"])
@pytest.mark.parametrize("override", list(OVERRIDES))
def test_runtime_overrides(name, override):
    path = fixture(name)
    params = read_params(path)
    kw = OVERRIDES[override]
    res = probe(path, TOKENS, START, n_ctx=N_CTX, **kw)
    expected = ggml_rope_args(params, **kw)
    check_probe(res, params, expected)
    if override == "yarn-attn-ignored":
        # the caller's yarn_attn_factor is overwritten when YaRN is on; the magnitude the
        # kernel applies is 1 + 0.1 ln 16
        cap = res.rope("Qcur-0")
        assert cap.op.attn_factor == pytest.approx(1.0, abs=2e-7)
        m = yarn_mscale(cap.op.freq_scale, cap.op.ext_factor, cap.op.attn_factor)
        assert m == pytest.approx(1 + 0.1 * math.log(16), rel=1e-6)
        pair_norm = lambda x: np.hypot(x[..., :8], x[..., 8:])  # noqa: E731 (NEOX pairs)
        if params.layout == RopeLayout.NEOX:
            np.testing.assert_allclose(pair_norm(cap.output), m * pair_norm(cap.input), rtol=1e-5)
    if override == "linear-attn":
        assert res.rope("Qcur-0").op.attn_factor == 0.75  # kept: no YaRN
    if override.startswith("yarn"):
        # llama_init_from_model re-adjusts the MODEL's n_ctx_train for a custom YaRN scale
        fs = expected["freq_scale"]
        assert res.n_ctx_train == int(np.float32(expected["n_ctx_orig"]) / np.float32(fs))


@pytest.mark.parametrize("name", ["tiny-llama-q8_0.gguf", "tiny-qwen2-f32.gguf"])
def test_kv_overrides_are_file_values(name):
    """kv_overrides act like patched file metadata: the file side of ggml_rope_args."""
    path = fixture(name)
    params = read_params(path)
    arch = params.arch
    kvo = {
        f"{arch}.rope.freq_base": 20000.0,
        f"{arch}.rope.scaling.type": "yarn",
        f"{arch}.rope.scaling.factor": 4.0,
        f"{arch}.rope.scaling.original_context_length": 100,
        f"{arch}.rope.scaling.attn_factor": 0.5,
    }
    res = probe(path, TOKENS, START, n_ctx=N_CTX, kv_overrides=kvo)
    patched = params.with_(
        freq_base=20000.0, scaling_type=ScalingType.YARN, scaling_factor=4.0, orig_ctx=100, attn_factor=0.5
    )
    expected = ggml_rope_args(patched)
    assert expected["attn_factor"] == pytest.approx(0.5, abs=1e-7) and expected["n_ctx_orig"] == 100
    check_probe(res, patched, expected)
    # the file's attn_factor multiplies the kernel's YaRN magnitude
    m = yarn_mscale(expected["freq_scale"], expected["ext_factor"], expected["attn_factor"])
    assert m == pytest.approx(0.5 * (1 + 0.1 * math.log(4)), rel=1e-6)
    # a file-side yarn factor does not re-adjust n_ctx_train (only a custom runtime scale does)
    assert res.n_ctx_train == 128


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_negative_controls_do_not_match(name):
    res = unpatched(name)
    params = read_params(fixture(name))
    right = ggml_rope_args(params)
    wrong_layout = RopeLayout.NORM if params.layout == RopeLayout.NEOX else RopeLayout.NEOX
    for cap in res.ropes:
        good = rope_errors(cap, right)
        bad_layout = rope_errors(cap, right, layout=wrong_layout)
        bad_base = rope_errors(cap, dict(right, freq_base=right["freq_base"] * 1.01))
        bad_scale = rope_errors(cap, dict(right, freq_scale=0.5))
        assert good["f32"]["max_over_tol"] <= 1
        for bad in (bad_layout, bad_base, bad_scale):
            assert bad["f32"]["max_over_tol"] > 1000 and bad["f64"]["max_over_tol"] > 100
            assert bad["f32"]["max_abs"] > 1e-2


def test_any_start_position_in_small_context():
    """The first batch of an empty sequence may start anywhere: positions 100000.. with n_ctx 64.
    Angles of ~1e5 rad stress float32: only the float32 recipe matches to a few ulps."""
    path = fixture("tiny-qwen2-f32.gguf")
    params = read_params(path)
    res = probe(path, TOKENS, 100000, n_ctx=64)
    check_probe(res, params, ggml_rope_args(params), start=100000)


def test_all_layers_and_op_decoding():
    res = probe(fixture("tiny-llama-f32.gguf"), TOKENS[:4], 5, n_ctx=64, layers=None, logits=False)
    assert sorted(c.name for c in res.ropes) == ["Kcur-0", "Kcur-1", "Qcur-0", "Qcur-1"]
    assert {c.layer for c in res.ropes} == {0, 1}
    assert res.logits is None
    op = res.ropes[0].op
    assert isinstance(op, RopeOpParams) and op.sections == (0, 0, 0, 0) and op.n_offs == 0
    for cap in res.ropes:
        assert not cap.input.flags.writeable and not cap.output.flags.writeable
        assert_reproduces(cap)


def test_probe_errors():
    from ropepatch.errors import RopepatchError, UsageError

    with pytest.raises(UsageError):
        probe(FIXTURES / "does-not-exist.gguf", TOKENS)
    path = fixture("tiny-llama-f32.gguf")
    with pytest.raises(UsageError):
        probe(path, [1, 2, 3], [10, 12, 13])  # not consecutive
    with pytest.raises(UsageError):
        probe(path, [1, 2, 300])  # token id out of range
    with pytest.raises(UsageError):
        probe(path, [])
    with pytest.raises(RopepatchError):
        probe(path, TOKENS, n_batch=4)


@pytest.mark.skipif(not gpu_available(), reason="llama-cpp-python built without GPU offload")
@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_gpu_offload_same_rope(name):
    path = fixture(name)
    params = read_params(path)
    res = probe(path, TOKENS, START, n_ctx=N_CTX, n_gpu_layers=-1)
    expected = ggml_rope_args(params)
    for cap in res.ropes:
        assert_op_equals(cap, expected)
        assert_reproduces(cap, expected)
    cpu = unpatched(name)
    np.testing.assert_allclose(res.logits, cpu.logits, atol=1e-2)
