"""Pure-NumPy inverse frequencies exactly as transformers computes them for each rope_type.

Follows ``transformers/modeling_rope_utils.py`` (checked against transformers 5.23.0; the same
formulas as 4.4x): ``_compute_default_rope_parameters`` (in v5 the models'
``compute_default_rope_parameters``), ``_compute_linear_scaling_rope_parameters``,
``_compute_dynamic_ntk_parameters`` and ``_compute_yarn_parameters``. No torch needed; values
are float64 (transformers works in float32, so compare with a float32 tolerance).

Public API (each returns ``(inv_freq: np.ndarray of d/2 values, attention_factor: float)``)::

    default_inv_freq(base, dim)
    linear_inv_freq(base, dim, factor)
    dynamic_inv_freq(base, dim, factor, max_position_embeddings, seq_len=None)
    yarn_inv_freq(base, dim, factor, original_max_position_embeddings, *, beta_fast=None,
                  beta_slow=None, attention_factor=None, mscale=None, mscale_all_dim=None,
                  truncate=True, max_position_embeddings=None)
    hf_inv_freq(config: dict | ConfigDoc | HFRope, seq_len=None)   # dispatch on rope_type

``dim`` is the rotated dimension count d = int(head_dim * partial_rotary_factor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ropepatch.errors import UnsupportedModelError
from ropepatch.formats.hf import keys as hk


def _exponents(dim: int) -> np.ndarray:
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim


def default_inv_freq(base: float, dim: int) -> tuple[np.ndarray, float]:
    """theta_i = base^(-2i/d); attention factor 1."""
    return 1.0 / (float(base) ** _exponents(dim)), 1.0


def linear_inv_freq(base: float, dim: int, factor: float) -> tuple[np.ndarray, float]:
    """Position interpolation: every theta divided by ``factor``."""
    inv, _ = default_inv_freq(base, dim)
    return inv / float(factor), 1.0


def dynamic_inv_freq(
    base: float, dim: int, factor: float, max_position_embeddings: int, seq_len: int | None = None
) -> tuple[np.ndarray, float]:
    """Dynamic NTK at sequence length ``seq_len`` (max_position_embeddings when None or shorter):
    base' = base * ((factor * n / mpe) - (factor - 1))^(d/(d-2)), n the sequence length."""
    mpe = max_position_embeddings
    n = mpe if seq_len is None else max(int(seq_len), mpe)
    b = float(base) * ((factor * n / mpe) - (factor - 1)) ** (dim / (dim - 2))
    return default_inv_freq(b, dim)[0], 1.0


def _get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(
    base: float,
    dim: int,
    factor: float | None,
    original_max_position_embeddings: int,
    *,
    beta_fast: float | None = None,
    beta_slow: float | None = None,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool = True,
    max_position_embeddings: int | None = None,
) -> tuple[np.ndarray, float]:
    """YaRN (NTK-by-parts) inverse frequencies and its attention factor."""
    omp = original_max_position_embeddings
    if factor is None:
        if max_position_embeddings is None:
            raise ValueError("yarn needs factor or max_position_embeddings")
        factor = max_position_embeddings / omp
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_get_mscale(factor, mscale) / _get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _get_mscale(factor)
    beta_fast = beta_fast or 32
    beta_slow = beta_slow or 1

    def correction_dim(rot: float) -> float:
        return (dim * math.log(omp / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # prevent singularity

    pos_freqs = float(base) ** _exponents(dim)
    extrap = 1.0 / pos_freqs
    interp = 1.0 / (factor * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrap_factor = 1.0 - ramp
    inv = interp * (1.0 - extrap_factor) + extrap * extrap_factor
    return inv, float(attention_factor)


def hf_inv_freq(config: Any, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies and attention factor for a config (a dict as loaded from
    config.json, a :class:`~ropepatch.formats.hf.json_doc.ConfigDoc` or an
    :class:`~ropepatch.formats.hf.config.HFRope`), dispatching on its rope_type as transformers does."""
    from ropepatch.formats.hf.config import ConfigDoc, HFRope, parse_config, read_rope

    if isinstance(config, dict):
        import json

        config = parse_config(json.dumps(config), "<config>")
    if not isinstance(config, (ConfigDoc, HFRope)):
        raise TypeError(f"expected a config dict, ConfigDoc or HFRope, found {type(config).__name__}")
    rope = config if isinstance(config, HFRope) else read_rope(config)
    block = rope.block or {}
    b, d = rope.rope_theta, rope.rope_dim
    rt = rope.rope_type
    if rt == hk.RT_DEFAULT:
        return default_inv_freq(b, d)
    if rt == hk.RT_LINEAR:
        return linear_inv_freq(b, d, rope.factor)
    if rt == hk.RT_DYNAMIC:
        return dynamic_inv_freq(b, d, rope.factor, rope.max_position_embeddings, seq_len)
    if rt == hk.RT_YARN:
        return yarn_inv_freq(
            b,
            d,
            rope.factor,
            rope.original_max_position_embeddings or rope.max_position_embeddings,
            beta_fast=block.get(hk.RS_BETA_FAST),
            beta_slow=block.get(hk.RS_BETA_SLOW),
            attention_factor=block.get(hk.RS_ATTENTION_FACTOR),
            mscale=block.get(hk.RS_MSCALE),
            mscale_all_dim=block.get(hk.RS_MSCALE_ALL_DIM),
            truncate=block.get(hk.RS_TRUNCATE, True),
            max_position_embeddings=rope.max_position_embeddings,
        )
    raise UnsupportedModelError(
        f"{rope.config_path}: no NumPy reference for rope_type {rt!r}; expected default, linear, "
        f"dynamic or yarn"
    )
