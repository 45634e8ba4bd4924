"""Unit tests of the pure rotary math in ropepatch.rope_reference (no runtime involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ropepatch.check.ggml_args import ggml_rope_args
from ropepatch.check.rope_reference import (
    apply_rope,
    apply_rope_op,
    pair_indices,
    rope_angles,
    rope_cache,
    yarn_corr_dims,
    yarn_mscale,
    yarn_ramp,
)
from ropepatch.errors import RopepatchError, UsageError
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeLayout, RopeParams, ScalingType

LAYOUTS = [RopeLayout.NORM, RopeLayout.NEOX]


def _x(n_tokens=5, n_heads=3, head_dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n_tokens, n_heads, head_dim))


def _pair_norms(x, rope_dim, layout):
    a, b = pair_indices(rope_dim, layout)
    return np.hypot(x[..., a], x[..., b])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_position_zero_is_identity(layout, dtype):
    x = _x(n_tokens=1)
    out = apply_rope(x, [0], 16, 10000.0, layout=layout, dtype=dtype)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, x.astype(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_position_zero_with_yarn_only_scales_by_mscale(layout):
    x = _x(n_tokens=1)
    s = 4.0
    out = apply_rope(x, [0], 16, 10000.0, freq_scale=1 / s, ext_factor=1.0, n_ctx_orig=128, layout=layout)
    np.testing.assert_allclose(out, x * (1 + 0.1 * math.log(s)), rtol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kw, mscale",
    [
        ({}, 1.0),
        ({"freq_scale": 0.125}, 1.0),  # linear
        ({"freq_scale": 0.125, "ext_factor": 1.0, "n_ctx_orig": 128}, 1 + 0.1 * math.log(8)),  # yarn
        ({"freq_scale": 0.125, "ext_factor": 1.0, "n_ctx_orig": 128, "attn_factor": 0.5},
         0.5 * (1 + 0.1 * math.log(8))),
        ({"attn_factor": 2.0}, 2.0),  # attn_factor scales even without yarn
    ],
)
def test_pair_norms_preserved_times_mscale(layout, kw, mscale):
    x = _x()
    pos = [3, 17, 999, 4096, 65535]
    out = apply_rope(x, pos, 16, 10000.0, layout=layout, **kw)
    np.testing.assert_allclose(_pair_norms(out, 16, layout), mscale * _pair_norms(x, 16, layout), rtol=1e-12)
    assert yarn_mscale(kw.get("freq_scale", 1.0), kw.get("ext_factor", 0.0),
                       kw.get("attn_factor", 1.0)) == pytest.approx(mscale)


def test_norm_vs_neox_hand_computed_4_dims():
    # d = 4, base 100: theta_0 = p, theta_1 = p * 100^(-2/4) = p / 10. Position 1.
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4)
    c1, s1, c2, s2 = math.cos(1.0), math.sin(1.0), math.cos(0.1), math.sin(0.1)
    # NORM: pairs (0,1) by 1 rad and (2,3) by 0.1 rad
    norm = [1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c2 - 4 * s2, 3 * s2 + 4 * c2]
    # NEOX: pairs (0,2) by 1 rad and (1,3) by 0.1 rad
    neox = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 1 * s1 + 3 * c1, 2 * s2 + 4 * c2]
    np.testing.assert_allclose(apply_rope(x, [1], 4, 100.0, layout=RopeLayout.NORM).ravel(), norm, rtol=1e-14)
    np.testing.assert_allclose(apply_rope(x, [1], 4, 100.0, layout=RopeLayout.NEOX).ravel(), neox, rtol=1e-14)
    # the ggml mode numbers and strings are accepted too
    np.testing.assert_allclose(apply_rope(x, [1], 4, 100.0, layout=2).ravel(), neox, rtol=1e-14)
    np.testing.assert_allclose(apply_rope(x, [1], 4, 100.0, layout="norm").ravel(), norm, rtol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_partial_rotary_leaves_tail_untouched(layout, dtype):
    x = _x(head_dim=16)
    pos = [0, 1, 50, 1000, 30000]
    out = apply_rope(x, pos, 8, 10000.0, layout=layout, dtype=dtype)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:].astype(dtype))
    # and the head is exactly a d = 8 rotary of the first 8 dims
    np.testing.assert_array_equal(out[..., :8], apply_rope(x[..., :8], pos, 8, 10000.0, layout=layout, dtype=dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_scaling_equals_unscaled_at_scaled_position(layout):
    x = _x()
    fs = 0.25
    pos = np.array([0, 4, 400, 4000, 40000])
    scaled = apply_rope(x, pos, 16, 10000.0, freq_scale=fs, layout=layout)
    plain = apply_rope(x, (pos * fs).astype(int), 16, 10000.0, layout=layout)
    np.testing.assert_allclose(scaled, plain, rtol=0, atol=1e-11)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_ntk_base_change_moves_lowest_frequency_like_linear(d):
    b, s = 10000.0, 8.0
    b_ntk = b * s ** (d / (d - 2))
    pos = np.array([1, 1000, 100000])
    ntk = rope_angles(pos, d, b_ntk)
    linear = rope_angles(pos, d, b, freq_scale=1 / s)
    plain = rope_angles(pos, d, b)
    # lowest frequency (last pair): exactly linear interpolation by s
    np.testing.assert_allclose(ntk[:, -1], linear[:, -1], rtol=1e-12)
    # highest frequency (pair 0): untouched
    np.testing.assert_array_equal(ntk[:, 0], plain[:, 0])
    # every pair in between is scaled by less than s
    ratio = plain[1:] / ntk[1:]
    assert np.all(ratio[:, 1:-1] > 1) and np.all(ratio[:, 1:-1] < s)


def test_yarn_with_ext_factor_zero_equals_linear():
    x = _x()
    pos = [0, 7, 1234, 50000, 65000]
    for layout in LAYOUTS:
        yarn0 = apply_rope(x, pos, 16, 10000.0, freq_scale=1 / 16, ext_factor=0.0, n_ctx_orig=128, layout=layout)
        linear = apply_rope(x, pos, 16, 10000.0, freq_scale=1 / 16, layout=layout)
        np.testing.assert_array_equal(yarn0, linear)


def test_yarn_by_parts():
    # d = 128, L = 4096, b = 10000 (Llama 2): correction band [20, 46] as in the YaRN paper's code
    assert yarn_corr_dims(128, 4096, 10000.0) == (20.0, 46.0)
    assert yarn_corr_dims(128, 4096, 10000.0, dtype=np.float32) == (20.0, 46.0)
    # the tiny fixtures: d = 16, L = 128, b = 10000 -> [0, 3]
    assert yarn_corr_dims(16, 128, 10000.0) == (0.0, 3.0)
    ramp = yarn_ramp(64, 20.0, 46.0)
    assert np.all(ramp[:21] == 1) and np.all(ramp[46:] == 0) and np.all(np.diff(ramp) <= 0)
    s = 8.0
    pos = [1000]
    yarn = rope_angles(pos, 128, 10000.0, freq_scale=1 / s, ext_factor=1.0, n_ctx_orig=4096)
    plain = rope_angles(pos, 128, 10000.0)
    np.testing.assert_array_equal(yarn[0, :21], plain[0, :21])  # high frequencies extrapolated
    np.testing.assert_allclose(yarn[0, 46:], plain[0, 46:] / s, rtol=1e-15)  # low ones interpolated
    mid = plain[0, 21:46] / yarn[0, 21:46]
    assert np.all(mid > 1) and np.all(mid < s)
    # yarn with freq_scale 1 is plain rope (mscale 1 + 0.1 ln 1 = 1)
    x = _x(n_tokens=1, head_dim=128)
    np.testing.assert_allclose(
        apply_rope(x, pos, 128, 10000.0, ext_factor=1.0, n_ctx_orig=4096), apply_rope(x, pos, 128, 10000.0), atol=1e-12
    )


def test_freq_factors_divide_frequencies():
    ff = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0])
    plain = rope_angles([5, 900], 16, 500000.0)
    scaled = rope_angles([5, 900], 16, 500000.0, freq_factors=ff)
    np.testing.assert_allclose(scaled, plain / ff, rtol=1e-15)
    scaled32 = rope_angles([5, 900], 16, 500000.0, freq_factors=ff, dtype=np.float32)
    np.testing.assert_allclose(scaled32, plain / ff, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kw",
    [{}, {"freq_scale": 0.25}, {"freq_scale": 0.25, "ext_factor": 1.0, "n_ctx_orig": 128}],
    ids=["none", "linear", "yarn"],
)
def test_float32_close_to_float64(layout, kw):
    x = _x(n_tokens=6)
    pos = np.array([0, 1, 127, 1000, 2047, 4000])
    f64 = apply_rope(x, pos, 16, 10000.0, layout=layout, **kw)
    f32 = apply_rope(x, pos, 16, 10000.0, layout=layout, dtype=np.float32, **kw)
    assert f32.dtype == np.float32
    # float32's angle carries a relative error of a few eps32 (the running product
    # theta *= theta_scale); at |angle| <= 4000 that is <= ~4000 * 8 * 6e-8 ~ 2e-3 rad in the
    # worst case, typically far less. Bound: |x| * (pos + 1) * 16 * eps32.
    eps = np.finfo(np.float32).eps
    bound = np.abs(x).max() * (pos[:, None, None] + 1) * 16 * eps + 1e-6
    assert np.all(np.abs(f32 - f64) <= bound)
    # at small positions they agree to float32 round-off
    np.testing.assert_allclose(f32[:3], f64[:3], rtol=0, atol=1e-5)


def test_rope_cache_shapes_and_validation():
    cos, sin = rope_cache(np.arange(7), 16, 10000.0)
    assert cos.shape == sin.shape == (7, 8)
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, rtol=1e-14)
    with pytest.raises(UsageError):
        rope_cache([0], 15, 10000.0)
    with pytest.raises(UsageError):
        apply_rope(_x(head_dim=8), np.arange(5), 16, 10000.0)  # rope_dim > head_dim
    with pytest.raises(UsageError):
        apply_rope(_x(), np.arange(4), 16, 10000.0)  # wrong number of positions
    with pytest.raises(RopepatchError):
        apply_rope(_x(), np.arange(5), 16, 10000.0, layout=RopeLayout.UNKNOWN)
    with pytest.raises(UsageError):
        rope_angles([1], 16, 10000.0, freq_scale=0.5, ext_factor=1.0)  # yarn needs n_ctx_orig


# ---- ggml_rope_args: what llama.cpp passes to the op ----------------------------------------


def _params(**kw):
    base = dict(arch="llama", n_ctx_train=128, rope_dim=16, head_dim=16, freq_base=10000.0)
    base.update(kw)
    return RopeParams(**base)


def test_ggml_rope_args_unpatched():
    args = ggml_rope_args(_params())
    assert args == {
        "n_dims": 16,
        "mode": 0,
        "n_ctx_orig": 128,
        "freq_base": 10000.0,
        "freq_scale": 1.0,
        "ext_factor": 0.0,
        "attn_factor": 1.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    assert ggml_rope_args(_params(arch="qwen2", layout=RopeLayout.NEOX))["mode"] == 2


def test_ggml_rope_args_freq_base_is_float32():
    args = ggml_rope_args(_params(freq_base=123456.789))
    assert args["freq_base"] == float(np.float32(123456.789)) != 123456.789


def test_ggml_rope_args_file_scaling():
    lin = ggml_rope_args(_params(scaling_type=ScalingType.LINEAR, scaling_factor=4.0))
    assert (lin["freq_scale"], lin["ext_factor"], lin["attn_factor"]) == (0.25, 0.0, 1.0)
    # type none forces freq_scale 1 even with a factor
    assert ggml_rope_args(_params(scaling_type=ScalingType.NONE, scaling_factor=4.0))["freq_scale"] == 1.0
    # yarn: ext 1, orig ctx from the file, attn_factor ~1 (the kernel adds 1 + 0.1 ln s itself)
    yarn = ggml_rope_args(_params(scaling_type=ScalingType.YARN, scaling_factor=3.0, orig_ctx=100))
    assert yarn["freq_scale"] == float(np.float32(1) / np.float32(3.0))
    assert yarn["ext_factor"] == 1.0 and yarn["n_ctx_orig"] == 100
    assert yarn["attn_factor"] == pytest.approx(1.0, abs=2e-7)
    # the file's attn_factor multiplies for every type
    assert ggml_rope_args(_params(scaling_type=ScalingType.LINEAR, scaling_factor=2.0,
                                  attn_factor=0.5))["attn_factor"] == 0.5
    y2 = ggml_rope_args(_params(scaling_type=ScalingType.YARN, scaling_factor=4.0, attn_factor=0.5))
    assert y2["attn_factor"] == pytest.approx(0.5, abs=1e-7)
    # net magnitude the kernel applies with yarn: 0.5 * (1 + 0.1 ln 4)
    assert (yarn_mscale(y2["freq_scale"], y2["ext_factor"], y2["attn_factor"])
            == pytest.approx(0.5 * (1 + 0.1 * math.log(4))))


def test_ggml_rope_args_runtime_overrides():
    p = _params()
    assert ggml_rope_args(p, rope_freq_base=50000.0)["freq_base"] == 50000.0
    lin = ggml_rope_args(p, rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["linear"], rope_freq_scale=0.125)
    assert (lin["freq_scale"], lin["ext_factor"]) == (0.125, 0.0)
    yarn = ggml_rope_args(
        p, rope_scaling_type=LLAMA_ROPE_SCALING_TYPE["yarn"], rope_freq_scale=0.125, yarn_orig_ctx=64,
        yarn_attn_factor=3.0
    )
    # the caller's yarn_attn_factor is overwritten when ext_factor != 0
    assert (yarn["freq_scale"], yarn["ext_factor"], yarn["n_ctx_orig"]) == (0.125, 1.0, 64)
    assert yarn["attn_factor"] == pytest.approx(1.0, abs=2e-7)
    # ... but kept without yarn
    assert ggml_rope_args(p, yarn_attn_factor=3.0)["attn_factor"] == 3.0
    # runtime scaling type none drops a file's linear factor
    assert ggml_rope_args(_params(scaling_type=ScalingType.LINEAR, scaling_factor=4.0),
                          rope_scaling_type=0)["freq_scale"] == 1.0
    with pytest.raises(UsageError):
        ggml_rope_args(p, rope_scaling_type=7)


def test_apply_rope_op_matches_apply_rope():
    x = _x()
    pos = np.arange(1000, 1005)
    p = _params(arch="qwen2", layout=RopeLayout.NEOX, scaling_type=ScalingType.YARN, scaling_factor=8.0)
    op = ggml_rope_args(p)
    np.testing.assert_array_equal(
        apply_rope_op(x, pos, op),
        apply_rope(x, pos, 16, 10000.0, 0.125, 1.0, op["attn_factor"], 32.0, 1.0, 128, layout=RopeLayout.NEOX),
    )


# ---- per-pair frequency factors (rope_freqs), NORM and NEOX -------------------------------------


def _hand_rotary(x, pos, d, base, ff, layout):
    """The rotary written out per pair: theta_i = p * b^(-2i/d) / ff_i; NORM pairs (2i, 2i+1),
    NEOX pairs (i, i + d/2)."""
    out = x.astype(np.float64).copy()
    for t, p in enumerate(pos):
        for i in range(d // 2):
            th = p * base ** (-2 * i / d) / ff[i]
            a, b = (2 * i, 2 * i + 1) if layout == RopeLayout.NORM else (i, i + d // 2)
            x0, x1 = x[t, :, a], x[t, :, b]
            out[t, :, a] = x0 * math.cos(th) - x1 * math.sin(th)
            out[t, :, b] = x0 * math.sin(th) + x1 * math.cos(th)
    return out


FF8 = np.array([1.0, 1.0, 1.9634954, 4.0, 4.0, 4.0, 4.0, 4.0], dtype=np.float32)  # tiny-exaone's


@pytest.mark.parametrize("layout", LAYOUTS)
def test_freq_factors_rotate_each_pair_by_its_divided_angle(layout):
    x = _x(n_tokens=4, head_dim=20)  # 16 rotated dims + 4 pass-through
    pos = [0, 3, 130, 1023]
    out = apply_rope(x, pos, 16, 10000.0, freq_factors=FF8, layout=layout)
    np.testing.assert_allclose(out, _hand_rotary(x, pos, 16, 10000.0, FF8.astype(np.float64), layout),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[..., 16:], x[..., 16:])
    # the other layout pairs other dims: a different result
    other = RopeLayout.NEOX if layout == RopeLayout.NORM else RopeLayout.NORM
    assert not np.allclose(out, apply_rope(x, pos, 16, 10000.0, freq_factors=FF8, layout=other))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unit_factors_are_no_factors(layout, dtype):
    x = _x()
    pos = [0, 5, 127, 1000, 40000]
    ones = apply_rope(x, pos, 16, 10000.0, freq_factors=np.ones(8), layout=layout, dtype=dtype)
    np.testing.assert_array_equal(ones, apply_rope(x, pos, 16, 10000.0, layout=layout, dtype=dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_equal_factors_are_linear_scaling(layout):
    # ff_i = s for every pair divides every angle by s: linear interpolation (freq_scale 1/s)
    x = _x()
    pos = [1, 100, 1000, 5000, 65000]
    by_ff = apply_rope(x, pos, 16, 10000.0, freq_factors=np.full(8, 4.0), layout=layout)
    linear = apply_rope(x, pos, 16, 10000.0, freq_scale=0.25, layout=layout)
    np.testing.assert_allclose(by_ff, linear, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d, base, L, s",
                         [(16, 10000.0, 128, 8.0), (64, 100000.0, 8192, 4.0), (128, 500000.0, 4096, 2.0)])
def test_ntk_parts_factors_are_yarns_frequencies(d, base, L, s):
    """ropepatch's ntk-parts divisors give exactly ggml's YaRN angles (ext_factor 1, same
    beta_fast/beta_slow) up to float32 rounding of the factors, without YaRN's magnitude."""
    from ropepatch.rope.factors import ntk_parts_factors

    ff = np.asarray(ntk_parts_factors(d, base, L, s), dtype=np.float64)
    pos = np.array([1, L - 1, 3 * L, int(s * L) - 1])
    by_ff = rope_angles(pos, d, base, freq_factors=ff)
    yarn = rope_angles(pos, d, base, freq_scale=1 / s, ext_factor=1.0, n_ctx_orig=L)
    np.testing.assert_allclose(by_ff, yarn, rtol=2 * np.finfo(np.float32).eps, atol=0)
    # YaRN puts 1 + 0.1 ln s on cos/sin; the factors put nothing
    x = _x(n_tokens=1, head_dim=d)
    for layout in LAYOUTS:
        out = apply_rope(x, [pos[-1]], d, base, freq_factors=ff, layout=layout)
        np.testing.assert_allclose(_pair_norms(out, d, layout), _pair_norms(x, d, layout), rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_freq_factors_float32_recipe_close_to_float64(layout):
    x = _x(n_tokens=6)
    pos = np.array([0, 1, 127, 1000, 2047, 4000])
    f64 = apply_rope(x, pos, 16, 10000.0, freq_factors=FF8, layout=layout)
    f32 = apply_rope(x, pos, 16, 10000.0, freq_factors=FF8, layout=layout, dtype=np.float32)
    eps = np.finfo(np.float32).eps
    bound = np.abs(x).max() * (pos[:, None, None] + 1) * 17 * eps + 1e-6  # one more rounding: theta / ff
    assert np.all(np.abs(f32 - f64) <= bound)
    # the float32 angle is ggml's: the running product, THEN the division by ff (not p * (ts^i / ff))
    th = rope_angles(pos, 16, 10000.0, dtype=np.float32)
    np.testing.assert_array_equal(rope_angles(pos, 16, 10000.0, freq_factors=FF8, dtype=np.float32), th / FF8)


def test_freq_factors_with_yarn_and_op_dict():
    # factors combine with freq_scale and the YaRN ramp: theta_extrap = p theta_i / ff_i
    pos = [10, 900]
    ff = FF8.astype(np.float64)
    plain = rope_angles(pos, 16, 10000.0, freq_scale=0.25, ext_factor=1.0, n_ctx_orig=128)
    with_ff = rope_angles(pos, 16, 10000.0, freq_scale=0.25, ext_factor=1.0, n_ctx_orig=128, freq_factors=ff)
    np.testing.assert_allclose(with_ff, plain / ff, rtol=1e-14)
    # apply_rope_op passes the factors through, in NORM and NEOX
    x = _x(n_tokens=2)
    for mode, layout in ((0, RopeLayout.NORM), (2, RopeLayout.NEOX)):
        op = {"n_dims": 16, "mode": mode, "n_ctx_orig": 128, "freq_base": 10000.0, "freq_scale": 1.0,
              "ext_factor": 0.0, "attn_factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
        np.testing.assert_array_equal(apply_rope_op(x, pos, op, freq_factors=FF8),
                                      apply_rope(x, pos, 16, 10000.0, freq_factors=FF8, layout=layout))


def test_freq_factors_validation():
    with pytest.raises(UsageError, match="4 freq_factors for 8 rotary pairs"):
        rope_angles([1], 16, 10000.0, freq_factors=[1, 2, 3, 4])
