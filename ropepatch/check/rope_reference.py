"""The rotary position embedding exactly as ggml defines it, in plain NumPy.

Pure functions, no I/O. The reference for what llama.cpp's ROPE op computes
(ggml/src/ggml-cpu/ops.cpp: ``rope_yarn``, ``ggml_rope_cache_init``, ``rotate_pairs``;
ggml/src/ggml.c: ``ggml_rope_yarn_corr_dims``). How llama.cpp turns a model's RoPE settings
into the op's parameters: :mod:`ropepatch.check.ggml_args`.

Two precisions:

* ``float64`` (default): the mathematically intended rotary, ``theta_i = p * b^(-2i/d)``
  computed directly. Use it as ground truth.
* ``float32``: follows ggml's float32 arithmetic step by step (the running product
  ``theta *= theta_scale``, ``powf``/``logf``/``cosf`` results rounded to float32, the
  rotation in float32) so that it agrees with the runtime to a few float32 ulps.

Tensors follow the runtime's row-major view of a ROPE operand: ``x`` has shape
``(n_tokens, n_heads, head_dim)``; dims ``rope_dim .. head_dim-1`` pass through unchanged.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.rope.params import RopeLayout

# ggml's ROPE op "mode" values (ggml.h GGML_ROPE_TYPE_*): only these two are plain text RoPE.
GGML_ROPE_TYPE_NORMAL = 0
GGML_ROPE_TYPE_NEOX = 2

# llama.cpp's YaRN defaults (llama-hparams.h); llama and qwen2 never read them from the file.
DEFAULT_BETA_FAST = 32.0
DEFAULT_BETA_SLOW = 1.0

_F32 = np.float32


def f32(x) -> np.float32:
    """Round a value to float32 (a C ``float``)."""
    return _F32(x)


def f32_fn(fn, x):
    """A libm float function (logf, powf, cosf, ...) as glibc computes it: the exact
    result rounded to float32 (glibc's float functions are within 1 ulp, nearly always
    correctly rounded). Evaluated in float64 on the float32 inputs, then rounded."""
    return np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64).astype(_F32)


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise UsageError(f"rope reference: dtype must be float32 or float64, got {dt}")
    return dt


def _check_dims(rope_dim: int, head_dim: int | None = None) -> None:
    if rope_dim <= 0 or rope_dim % 2:
        raise UsageError(f"rope reference: rope_dim must be a positive even number, got {rope_dim}")
    if head_dim is not None and rope_dim > head_dim:
        raise UsageError(f"rope reference: rope_dim {rope_dim} exceeds head_dim {head_dim}")


# ---------------------------------------------------------------------------------------------
# 1. YaRN correction dims and ramp
# ---------------------------------------------------------------------------------------------


def yarn_corr_dim(n_dims: int, n_ctx_orig: int, n_rot: float, base: float, dtype=np.float64) -> float:
    """The (fractional) pair index whose wavelength makes ``n_rot`` full turns over
    ``n_ctx_orig`` tokens: ``d * ln(L / (n_rot * 2 pi)) / (2 ln b)`` (ggml_rope_yarn_corr_dim)."""
    if _check_dtype(dtype) == np.float32:
        # float32 exactly as in ggml.c: n_ctx_orig / (n_rot * 2 * (float)M_PI), logf, ...
        denom = f32(f32(f32(n_rot) * f32(2)) * f32(math.pi))
        ratio = f32(f32(n_ctx_orig) / denom)
        num = f32(f32(n_dims) * f32_fn(np.log, ratio))
        return float(f32(num / f32(f32(2) * f32_fn(np.log, f32(base)))))
    return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))


def yarn_corr_dims(
    n_dims: int,
    n_ctx_orig: int,
    freq_base: float,
    beta_fast: float = DEFAULT_BETA_FAST,
    beta_slow: float = DEFAULT_BETA_SLOW,
    dtype=np.float64,
) -> tuple[float, float]:
    """YaRN's [low, high] pair-index band (ggml_rope_yarn_corr_dims): pairs below ``low``
    rotate fast enough to be extrapolated, pairs above ``high`` are interpolated."""
    # start: the pair making beta_fast turns over L (floored), end: beta_slow turns (ceiled)
    start = math.floor(yarn_corr_dim(n_dims, n_ctx_orig, beta_fast, freq_base, dtype))
    end = math.ceil(yarn_corr_dim(n_dims, n_ctx_orig, beta_slow, freq_base, dtype))
    # clamped to valid dims (note: ggml clamps to n_dims-1 although pair indices stop at d/2-1)
    return float(max(0, start)), float(min(n_dims - 1, end))


def yarn_ramp(n_pairs: int, low: float, high: float, dtype=np.float64) -> np.ndarray:
    """ggml's ``rope_yarn_ramp`` per pair i: 1 for i <= low (extrapolate), 0 for i >= high
    (interpolate), linear in between; the denominator is floored at 0.001."""
    dt = _check_dtype(dtype).type
    # y = (i0/2 - low) / MAX(0.001f, high - low), i0/2 being the pair index
    i = np.arange(n_pairs, dtype=dt)
    y = (i - dt(low)) / dt(max(0.001, high - low))
    # ramp = 1 - clamp(y, 0, 1)
    return (1 - np.minimum(1, np.maximum(0, y))).astype(dt)


def yarn_mscale(freq_scale: float, ext_factor: float, attn_factor: float = 1.0, dtype=np.float64) -> float:
    """The magnitude the kernel puts on cos and sin: ``attn_factor``, times
    ``1 + 0.1 ln(1/freq_scale)`` when YaRN extrapolation is on (ext_factor != 0)."""
    if _check_dtype(dtype) == np.float32:
        m = f32(attn_factor)
        if ext_factor != 0:
            m = f32(m * f32(f32(1) + f32(f32(0.1) * f32_fn(np.log, f32(f32(1) / f32(freq_scale))))))
        return float(m)
    m = float(attn_factor)
    if ext_factor != 0:
        m *= 1.0 + 0.1 * math.log(1.0 / freq_scale)
    return m


# ---------------------------------------------------------------------------------------------
# 2. Angles and the cos/sin cache
# ---------------------------------------------------------------------------------------------


def _angles_f32(pos, rope_dim, freq_base, freq_scale, ext_factor, beta_fast, beta_slow, n_ctx_orig, ff):
    """:func:`rope_angles` in ggml's float32 arithmetic, step by step."""
    n_pairs = rope_dim // 2
    # theta_scale = powf(freq_base, -2.0f/n_dims)
    theta_scale = f32_fn(lambda v: np.power(v, float(f32(-2.0) / f32(rope_dim))), f32(freq_base))
    # theta starts at (float)p and is multiplied by theta_scale once per pair (float32 running product)
    theta = np.empty((pos.size, n_pairs), dtype=_F32)
    theta[:, 0] = pos.astype(_F32)
    for i in range(1, n_pairs):
        theta[:, i] = theta[:, i - 1] * theta_scale
    # per-pair divisors (llama3 rope_freqs / longrope factors): theta/ff in float32
    theta_extrap = theta / ff[:n_pairs].astype(_F32) if ff is not None else theta
    fs = f32(freq_scale)
    theta_interp = fs * theta_extrap
    if ext_factor == 0:
        return theta_interp
    low, high = yarn_corr_dims(rope_dim, n_ctx_orig, freq_base, beta_fast, beta_slow, dtype=_F32)
    ramp_mix = yarn_ramp(n_pairs, low, high, dtype=_F32) * f32(ext_factor)
    # theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix. GCC with
    # -march=native (llama-cpp-python's default CPU build) contracts this into
    # fma(theta_interp, 1 - ramp_mix, theta_extrap * ramp_mix); measured: the plain
    # float32 form is 1 ulp of theta off on some pairs, the fma form matches. Emulated
    # here: the f32 x f32 product is exact in float64, then one rounding to float32.
    extrap_part = (theta_extrap * ramp_mix).astype(np.float64)
    fused = theta_interp.astype(np.float64) * (f32(1) - ramp_mix).astype(np.float64) + extrap_part
    return fused.astype(_F32)


def rope_angles(
    positions,
    rope_dim: int,
    freq_base: float,
    freq_scale: float = 1.0,
    ext_factor: float = 0.0,
    beta_fast: float = DEFAULT_BETA_FAST,
    beta_slow: float = DEFAULT_BETA_SLOW,
    n_ctx_orig: int = 0,
    freq_factors=None,
    dtype=np.float64,
) -> np.ndarray:
    """Rotation angle of every (position, pair): shape (n_tokens, rope_dim // 2).

    theta_extrap = p * b^(-2i/d) / ff_i; theta_interp = freq_scale * theta_extrap;
    with YaRN (ext_factor != 0) the two are mixed per pair by the ramp.
    """
    dt = _check_dtype(dtype)
    _check_dims(rope_dim)
    n_pairs = rope_dim // 2
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    ff = None if freq_factors is None else np.asarray(freq_factors, dtype=np.float64).reshape(-1)
    if ff is not None and ff.size < n_pairs:
        raise UsageError(f"rope reference: {ff.size} freq_factors for {n_pairs} rotary pairs")
    if ext_factor != 0 and n_ctx_orig <= 0:
        raise UsageError("rope reference: YaRN (ext_factor != 0) needs n_ctx_orig > 0")

    if dt == np.float32:
        return _angles_f32(pos, rope_dim, freq_base, freq_scale, ext_factor, beta_fast, beta_slow, n_ctx_orig, ff)
    # float64: the intended values, each pair's frequency computed directly
    inv_freq = float(freq_base) ** (-2.0 * np.arange(n_pairs, dtype=np.float64) / rope_dim)
    if ff is not None:
        inv_freq = inv_freq / ff[:n_pairs]
    theta_extrap = pos.astype(np.float64)[:, None] * inv_freq[None, :]
    theta_interp = float(freq_scale) * theta_extrap
    if ext_factor == 0:
        return theta_interp
    low, high = yarn_corr_dims(rope_dim, n_ctx_orig, freq_base, beta_fast, beta_slow)
    ramp_mix = yarn_ramp(n_pairs, low, high) * float(ext_factor)
    return theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix


def rope_cache(positions, rope_dim: int, freq_base: float, freq_scale: float = 1.0, ext_factor: float = 0.0,
               attn_factor: float = 1.0, *, dtype=np.float64, **angles) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (n_tokens, rope_dim // 2), already multiplied by the mscale
    (ggml_rope_cache_init). ``angles``: the other keywords of :func:`rope_angles` (beta_fast,
    beta_slow, n_ctx_orig -- which only matters for YaRN, ext_factor != 0 -- freq_factors)."""
    dt = _check_dtype(dtype)
    theta = rope_angles(positions, rope_dim, freq_base, freq_scale, ext_factor, dtype=dt, **angles)
    mscale = yarn_mscale(freq_scale, ext_factor, attn_factor, dt)
    if dt == np.float32:
        # cosf(theta) * mscale, sinf(theta) * mscale, all float32
        return f32_fn(np.cos, theta) * f32(mscale), f32_fn(np.sin, theta) * f32(mscale)
    return np.cos(theta) * mscale, np.sin(theta) * mscale


# ---------------------------------------------------------------------------------------------
# 3. Rotating the pairs
# ---------------------------------------------------------------------------------------------


def as_layout(layout) -> RopeLayout:
    """NORM or NEOX from a layout, a ggml mode (0, 2) or its name; UsageError otherwise."""
    if isinstance(layout, RopeLayout) and layout != RopeLayout.UNKNOWN:
        return layout
    if layout in (GGML_ROPE_TYPE_NORMAL, "norm"):
        return RopeLayout.NORM
    if layout in (GGML_ROPE_TYPE_NEOX, "neox"):
        return RopeLayout.NEOX
    raise UsageError(f"rope reference: layout must be NORM or NEOX (ggml mode 0 or 2), got {layout!r}")


def pair_indices(rope_dim: int, layout) -> tuple[np.ndarray, np.ndarray]:
    """Which dims form each rotary pair: NORM pairs (2i, 2i+1), NEOX pairs (i, i + d/2)."""
    _check_dims(rope_dim)
    i = np.arange(rope_dim // 2)
    if as_layout(layout) == RopeLayout.NORM:
        return 2 * i, 2 * i + 1
    return i, i + rope_dim // 2


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout, rope_dim: int | None = None) -> np.ndarray:
    """Rotate the first ``rope_dim`` dims of ``x`` (n_tokens, n_heads, head_dim) by the
    per-token angles in (cos, sin) (n_tokens, rope_dim // 2); copy the rest (rotate_pairs)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise UsageError(f"rope reference: x must be (n_tokens, n_heads, head_dim), got shape {x.shape}")
    rope_dim = 2 * cos.shape[-1] if rope_dim is None else rope_dim
    _check_dims(rope_dim, x.shape[-1])
    if cos.shape != (x.shape[0], rope_dim // 2) or sin.shape != cos.shape:
        raise UsageError(f"rope reference: cos/sin shape {cos.shape} does not fit x {x.shape}, rope_dim {rope_dim}")
    a, b = pair_indices(rope_dim, layout)
    # out = x for the pass-through tail; the rotated pairs are overwritten below
    out = x.copy()
    x0, x1 = x[..., a], x[..., b]
    c, s = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    # [x0', x1'] = [[cos, -sin], [sin, cos]] @ [x0, x1]
    out[..., a] = x0 * c - x1 * s
    out[..., b] = x0 * s + x1 * c
    return out


def apply_rope(
    x,
    positions,
    rope_dim: int,
    freq_base: float,
    freq_scale: float = 1.0,
    ext_factor: float = 0.0,
    attn_factor: float = 1.0,
    beta_fast: float = DEFAULT_BETA_FAST,
    beta_slow: float = DEFAULT_BETA_SLOW,
    n_ctx_orig: int = 0,
    freq_factors=None,
    layout=RopeLayout.NORM,
    dtype=np.float64,
) -> np.ndarray:
    """The ROPE op: x (n_tokens, n_heads, head_dim) at ``positions`` (n_tokens,) rotated
    as ggml does, returned in ``dtype``. Dims >= rope_dim pass through unchanged."""
    dt = _check_dtype(dtype)
    x = np.asarray(x).astype(dt, copy=False)
    pos = np.asarray(positions).reshape(-1)
    if x.ndim != 3 or x.shape[0] != pos.size:
        raise UsageError(f"rope reference: x shape {x.shape} does not match {pos.size} positions")
    cos, sin = rope_cache(pos, rope_dim, freq_base, freq_scale, ext_factor, attn_factor, beta_fast=beta_fast,
                          beta_slow=beta_slow, n_ctx_orig=n_ctx_orig, freq_factors=freq_factors, dtype=dt)
    return rotate(x, cos, sin, layout, rope_dim)


def apply_rope_op(x, positions, op: Mapping, freq_factors=None, dtype=np.float64) -> np.ndarray:
    """:func:`apply_rope` driven by a ROPE op's parameters (the dict of :func:`ggml_rope_args`,
    or the params a runtime probe decoded from the graph node)."""
    return apply_rope(
        x,
        positions,
        rope_dim=int(op["n_dims"]),
        freq_base=float(op["freq_base"]),
        freq_scale=float(op["freq_scale"]),
        ext_factor=float(op["ext_factor"]),
        attn_factor=float(op["attn_factor"]),
        beta_fast=float(op["beta_fast"]),
        beta_slow=float(op["beta_slow"]),
        n_ctx_orig=int(op["n_ctx_orig"]),
        freq_factors=freq_factors,
        layout=as_layout(int(op["mode"])),
        dtype=dtype,
    )


def pair_magnitude_and_index(x: np.ndarray, n_dims: int, layout) -> tuple[np.ndarray, np.ndarray]:
    """|x0| + |x1| of each rotated element's pair, and each element's pair index (rotated dims
    only): the scale that rotary error tolerances are stated against."""
    a, b = pair_indices(n_dims, layout)
    mag = np.zeros(x.shape[:-1] + (n_dims,), dtype=np.float64)
    pm = np.abs(x[..., a].astype(np.float64)) + np.abs(x[..., b].astype(np.float64))
    mag[..., a] = pm
    mag[..., b] = pm
    idx = np.zeros(n_dims, dtype=np.int64)
    idx[a] = np.arange(n_dims // 2)
    idx[b] = np.arange(n_dims // 2)
    return mag, idx
