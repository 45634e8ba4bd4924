"""What llama.cpp passes to the ROPE op for a model's RoPE settings (src/llama-context.cpp,
the llama_context constructor; src/llama-model.cpp, llama_model::load_hparams), as
:func:`ggml_rope_args`: the op parameters :mod:`ropepatch.check.rope_reference` takes.

Pure functions, no I/O; floats are float32-representable, so they compare exactly with the
parameters of a ROPE node the runtime built.
"""

from __future__ import annotations

import numpy as np

from ropepatch.check.rope_reference import (
    DEFAULT_BETA_FAST,
    DEFAULT_BETA_SLOW,
    GGML_ROPE_TYPE_NEOX,
    GGML_ROPE_TYPE_NORMAL,
    as_layout,
    f32,
    f32_fn,
)
from ropepatch.errors import UsageError
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeLayout, RopeParams, ScalingType

_SCALING_BY_ID = {v: ScalingType(k) for k, v in LLAMA_ROPE_SCALING_TYPE.items()}


def _scaling_type(params: RopeParams, rope_scaling_type: int | None) -> ScalingType:
    """The scaling type: the runtime's (llama_rope_scaling_type) if given (>= 0), else the file's."""
    if rope_scaling_type is None or rope_scaling_type < 0:
        return ScalingType(params.scaling_type)
    if rope_scaling_type not in _SCALING_BY_ID:
        raise UsageError(f"ggml_rope_args: unknown rope_scaling_type {rope_scaling_type}")
    return _SCALING_BY_ID[rope_scaling_type]


def _freq_scale(params: RopeParams, rope_freq_scale: float, stype: ScalingType) -> np.float32:
    """The runtime's freq_scale unless 0, else the file's 1.0f/factor (factor 0 or absent: 1);
    1 when the scaling type is none ("never scale if scaling type is none")."""
    if stype == ScalingType.NONE:
        return f32(1)
    if rope_freq_scale != 0:
        return f32(rope_freq_scale)
    factor_file = f32(params.scaling_factor or 0.0)
    return f32(1) if factor_file == 0 else f32(f32(1) / factor_file)


def attn_factor(yarn_attn_factor: float, ext_factor, freq_scale, file_attn_factor: float) -> np.float32:
    """The op's attn_factor, in float32 -- in this version of llama.cpp:

        attn = runtime yarn_attn_factor if >= 0 else 1.0;
        if ext_factor != 0 (YaRN on):                        # the runtime value is OVERWRITTEN
            factor = 1.0f / freq_scale
            attn   = (factor <= 1 ? 1 : 1 + 0.1f*logf(factor))   # HF get_mscale(factor, 1)
            attn  *= 1.0f / (1.0f + 0.1f*logf(factor))           # cancel the kernel's own factor
        attn *= file attn_factor ({arch}.rope.scaling.attn_factor, default 1)

    The kernel (rope_yarn) multiplies cos/sin by attn * (1 + 0.1 logf(1/freq_scale)) when
    ext_factor != 0, so for factor > 1 the net magnitude is still 1 + 0.1 ln s (times the
    file's attn_factor), while the op's attn_factor itself is 1 (x * (1/x) in float32;
    exactly 1.0f for the factors 2, 3, 4, 8, 16, 32 checked, computed here the same way
    anyway). For factor < 1 the op carries 1/(1 + 0.1 ln f) > 1 and the net magnitude is 1.
    The file's attn_factor multiplies cos/sin for EVERY scaling type, not only yarn.
    (Architectures with ``rope.scaling.yarn_log_multiplier`` -- deepseek2, mistral3 -- use
    get_mscale(f, m)/get_mscale(f, m_all) instead; RopeParams does not carry that key.)
    """
    attn = f32(yarn_attn_factor) if yarn_attn_factor >= 0 else f32(1.0)
    if ext_factor != 0:
        factor = f32(f32(1) / freq_scale)
        log_f = f32_fn(np.log, factor)
        attn = f32(1) if factor <= 1 else f32(f32(f32(0.1) * log_f) + f32(1))
        attn = f32(attn * f32(f32(1) / f32(f32(1) + f32(f32(0.1) * log_f))))
    return f32(attn * f32(file_attn_factor))


def ggml_rope_args(
    params: RopeParams,
    *,
    rope_freq_base: float = 0.0,
    rope_freq_scale: float = 0.0,
    rope_scaling_type: int = -1,
    yarn_ext_factor: float = -1.0,
    yarn_attn_factor: float = -1.0,
    yarn_beta_fast: float = -1.0,
    yarn_beta_slow: float = -1.0,
    yarn_orig_ctx: int = 0,
) -> dict:
    """The ROPE op parameters llama.cpp (as vendored by llama-cpp-python 0.3.36) uses for a
    model with these file settings, optionally under runtime overrides. The keyword arguments
    are ``llama_context_params`` fields with their "take it from the file" defaults
    (``llama_context_default_params``). Floats are returned as float32-representable values,
    so they compare exactly with a decoded op.

    Mirrors the llama_context constructor (src/llama-context.cpp) and the model loader
    (llama_model::load_hparams in src/llama-model.cpp) for architectures that read no
    ``yarn_*`` GGUF keys (llama, qwen2, ...):

    * freq_base  = runtime if != 0 else the file's (default 10000).
    * freq_scale = runtime if != 0 else the file's ``1.0f / scaling.factor`` (1 when the factor
      is absent or 0); forced to 1 when the effective scaling type is ``none``.
    * scaling type = runtime if given (>= 0) else the file's.
    * ext_factor = runtime if >= 0, else 1 for yarn and 0 otherwise.
    * n_ctx_orig = runtime yarn_orig_ctx if != 0, else the file's original_context_length,
      else n_ctx_train.
    * beta_fast/beta_slow = runtime if >= 0, else 32 / 1.
    * attn_factor: see :func:`attn_factor` (YaRN overwrites the runtime's value).
    """
    stype = _scaling_type(params, rope_scaling_type)

    # freq_base: runtime unless 0
    freq_base = f32(rope_freq_base) if rope_freq_base != 0 else f32(params.freq_base)

    freq_scale = _freq_scale(params, rope_freq_scale, stype)

    # ext_factor: negative means unset -> 1 for yarn, else 0
    ext_factor = f32(yarn_ext_factor) if yarn_ext_factor >= 0 else f32(1.0 if stype == ScalingType.YARN else 0.0)

    attn = attn_factor(yarn_attn_factor, ext_factor, freq_scale, params.attn_factor)

    n_ctx_orig = int(yarn_orig_ctx) if yarn_orig_ctx else int(params.orig_ctx or params.n_ctx_train)
    layout = as_layout(params.layout)
    return {
        "n_dims": int(params.rope_dim),
        "mode": GGML_ROPE_TYPE_NEOX if layout == RopeLayout.NEOX else GGML_ROPE_TYPE_NORMAL,
        "n_ctx_orig": n_ctx_orig,
        "freq_base": float(freq_base),
        "freq_scale": float(freq_scale),
        "ext_factor": float(ext_factor),
        "attn_factor": float(attn),
        "beta_fast": float(f32(yarn_beta_fast if yarn_beta_fast >= 0 else DEFAULT_BETA_FAST)),
        "beta_slow": float(f32(yarn_beta_slow if yarn_beta_slow >= 0 else DEFAULT_BETA_SLOW)),
    }
