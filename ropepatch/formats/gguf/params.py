"""THE one mapping between GGUF metadata entries and :class:`RopeParams`.

* :func:`params_from_kvs` - the RoPE parameters llama.cpp would read from a file's entries.
* :func:`params_to_kvs` - the entries (key -> (type, value)) that make a file carry a plan's
  target; a patch writes exactly these.
* :func:`kv_overrides`, :func:`override_kv_flags`, :func:`llama_cpp_run_flags`,
  :func:`runtime_settings` - the plan as llama.cpp kv overrides / flags for the file AS IT IS
  (its current parameters; default: unpatched), setting every RoPE key that differs from the
  target (:func:`ropepatch.rope.runtime_flags.rope_delta`), with the same key names
  (:mod:`.keys`). Pure: no I/O.
"""

from __future__ import annotations

import struct

from ropepatch.errors import FormatError, UnsupportedModelError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import KV, ArrayValue
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.formats.gguf.tensors import FACTOR_TENSORS, usable_factors
from ropepatch.rope.arch import NO_ROPE_ARCHS, rope_layout
from ropepatch.rope.methods import Plan
from ropepatch.rope.params import RopeLayout, RopeParams, ScalingType
from ropepatch.rope.runtime_flags import (
    llama_cpp_flags,
    llama_cpp_python_kwargs,
    needs_patch,
    ollama_modelfile,
    patch_first,
    recipe_problem,
    revert_first,
    rope_delta,
)

# ---- reading --------------------------------------------------------------------------------


def _int_value(kv: KV, path: str) -> int:
    """An integer key's value; for per-layer arrays, the first layer's (as llama.cpp's n_head())."""
    if isinstance(kv.value, ArrayValue):
        if kv.value.count == 0 or kv.value.elem_type not in (ValueType.UINT32, ValueType.INT32):
            raise FormatError(f"{path}: key {kv.key!r} is an empty or non-integer array")
        (v,) = struct.unpack_from("<I" if kv.value.elem_type == ValueType.UINT32 else "<i",
                                  kv.value_raw, 12)
        return v
    if isinstance(kv.value, bool) or not isinstance(kv.value, int):
        raise FormatError(f"{path}: key {kv.key!r}: expected an integer, found {kv.type.name} {kv.value!r}")
    return kv.value


def _typed(kvs: dict[str, KV], key: str, t: ValueType, path: str):
    kv = kvs.get(key)
    if kv is None:
        return None
    if kv.type != t:
        raise FormatError(
            f"{path}: key {key!r}: expected type {t.name} (llama.cpp requires it), found "
            f"{kv.type.name}; fix the key with gguf-set-metadata or re-convert the model"
        )
    return kv.value


def _arch(kvs: dict[str, KV], path: str) -> tuple[str, RopeLayout]:
    """The architecture name and its rotary layout; refuses files ropepatch cannot scale."""
    arch = _typed(kvs, K.GENERAL_ARCHITECTURE, ValueType.STRING, path)
    if arch is None:
        raise FormatError(
            f"{path}: missing key {K.GENERAL_ARCHITECTURE!r}; not a model file (for split models "
            f"pass the first split, *-00001-of-*.gguf)"
        )
    if arch in NO_ROPE_ARCHS:
        raise UnsupportedModelError(
            f"{path}: architecture {arch!r} does not use rotary position embeddings; there is "
            f"nothing for ropepatch to scale"
        )
    layout = rope_layout(arch)
    if layout == RopeLayout.UNKNOWN and not any(key.startswith(f"{arch}.rope.") for key in kvs):
        raise UnsupportedModelError(
            f"{path}: architecture {arch!r} is not a known RoPE architecture and has no "
            f"{arch}.rope.* keys; ropepatch cannot tell how it positions tokens"
        )
    return arch, layout


def _train_ctx(kvs: dict[str, KV], arch: str, path: str) -> int:
    ctx_kv = kvs.get(k(K.CONTEXT_LENGTH, arch))
    if ctx_kv is None:
        raise FormatError(f"{path}: missing key {k(K.CONTEXT_LENGTH, arch)!r} (the training context)")
    n_ctx = _int_value(ctx_kv, path)
    if n_ctx <= 0:
        raise FormatError(
            f"{path}: key {k(K.CONTEXT_LENGTH, arch)!r}: expected a positive training context, found {n_ctx}"
        )
    return n_ctx


def _dims(kvs: dict[str, KV], arch: str, path: str) -> tuple[int, int | None]:
    """(rotary dims, head dim); the head dim exactly as llama.cpp's loader derives n_embd_head_k."""
    head_dim = None
    if k(K.KEY_LENGTH, arch) in kvs:
        head_dim = _int_value(kvs[k(K.KEY_LENGTH, arch)], path)
    elif k(K.EMBEDDING_LENGTH, arch) in kvs and k(K.HEAD_COUNT, arch) in kvs:
        n_embd = _int_value(kvs[k(K.EMBEDDING_LENGTH, arch)], path)
        n_head = _int_value(kvs[k(K.HEAD_COUNT, arch)], path)
        if n_head > 0:
            head_dim = n_embd // n_head
    rope_dim_kv = kvs.get(k(K.ROPE_DIMENSION_COUNT, arch))
    rope_dim = _int_value(rope_dim_kv, path) if rope_dim_kv else head_dim
    if rope_dim is None:
        raise FormatError(
            f"{path}: cannot find the rotary dimension count: {k(K.ROPE_DIMENSION_COUNT, arch)!r} "
            f"is missing and so are {k(K.KEY_LENGTH, arch)!r} and "
            f"{k(K.EMBEDDING_LENGTH, arch)!r}/{k(K.HEAD_COUNT, arch)!r}"
        )
    if rope_dim <= 2 or rope_dim % 2 or (head_dim and rope_dim > head_dim):
        raise FormatError(
            f"{path}: key {k(K.ROPE_DIMENSION_COUNT, arch)!r}: expected an even number of rotary "
            f"dims > 2 and <= the head dim ({head_dim}), found {rope_dim}"
        )
    return rope_dim, head_dim


def _scaling(kvs: dict[str, KV], arch: str, path: str) -> tuple[ScalingType, float]:
    """(scaling type, factor) as llama.cpp reads them (legacy scale_linear as the fallback)."""
    stype = _typed(kvs, k(K.ROPE_SCALING_TYPE, arch), ValueType.STRING, path)
    factor = _typed(kvs, k(K.ROPE_SCALING_FACTOR, arch), ValueType.FLOAT32, path)
    if factor is None:
        factor = _typed(kvs, k(K.ROPE_SCALE_LINEAR, arch), ValueType.FLOAT32, path) or 0.0
    try:
        scaling = ScalingType(stype if stype is not None else "linear")
    except ValueError:
        raise FormatError(
            f"{path}: key {k(K.ROPE_SCALING_TYPE, arch)!r}: expected one of none, linear, yarn, "
            f"longrope, found {stype!r} (llama.cpp aborts on it); run 'ropepatch revert' or fix the key"
        ) from None
    if stype is None and factor in (0.0, 1.0):
        scaling = ScalingType.NONE
    return scaling, float(factor)


def params_from_kvs(kvs: dict[str, KV], tensor_names, path: str, rope_freqs: bytes | None = None) -> RopeParams:
    """The RoPE parameters llama.cpp would read from these metadata entries (``kvs``: key ->
    entry; ``tensor_names`` tell whether per-pair frequency factors ship with the model;
    ``rope_freqs``: the data of the F32 one-dimensional tensor whose divisors llama.cpp applies
    past the original context -- rope_freqs.weight, or rope_factors_long.weight where LongRoPE's
    pair applies (:func:`.tensors.factors_tensor`, read by :func:`.tensors.rope_freqs_data`)).
    Raises FormatError / UnsupportedModelError (one line, starting with ``path``).

    ``freq_factors`` is filled only from such data of exactly rope_dim/2 finite values > 0; any
    other (another type or shape, a zero, NaN or inf, or factor tensors whose data the caller
    did not pass) leaves it () with ``has_freq_factors`` True. That is the safer
    choice over refusing the file: inspect, validate and revert still work on it, and every
    plan that would build on the factors is refused (check_composable: a factor method composes
    only with factors that were read)."""
    arch, layout = _arch(kvs, path)
    n_ctx = _train_ctx(kvs, arch, path)
    rope_dim, head_dim = _dims(kvs, arch, path)
    base = _typed(kvs, k(K.ROPE_FREQ_BASE, arch), ValueType.FLOAT32, path)
    base = 10000.0 if base is None else base
    if not (base > 1.0 and base < float("inf")):
        raise FormatError(f"{path}: key {k(K.ROPE_FREQ_BASE, arch)!r}: expected a finite base > 1, found {base}")
    scaling, factor = _scaling(kvs, arch, path)
    orig_ctx_kv = kvs.get(k(K.ROPE_SCALING_ORIG_CTX, arch))
    orig_ctx = _int_value(orig_ctx_kv, path) if orig_ctx_kv else 0
    attn = _typed(kvs, k(K.ROPE_SCALING_ATTN_FACTOR, arch), ValueType.FLOAT32, path)
    return RopeParams(
        arch=arch,
        n_ctx_train=n_ctx,
        rope_dim=rope_dim,
        head_dim=head_dim or rope_dim,
        freq_base=float(base),
        scaling_type=scaling,
        scaling_factor=factor,
        orig_ctx=orig_ctx,
        attn_factor=1.0 if attn is None else float(attn),
        layout=layout,
        has_freq_factors=any(n in FACTOR_TENSORS for n in tensor_names),
        freq_factors=_factors(rope_freqs, rope_dim),
    )


def _factors(raw: bytes | None, rope_dim: int) -> tuple[float, ...]:
    if raw is None or len(raw) != rope_dim // 2 * 4:
        return ()
    return usable_factors(raw)


# ---- writing --------------------------------------------------------------------------------


def params_to_kvs(plan: Plan, *, reset_scaling: bool = True) -> dict[str, tuple[ValueType, object]]:
    """Key -> (type, value) for every touched key (:data:`keys.TOUCHED_KEYS`) whose value the
    plan sets, in a fixed order; the other touched keys keep their original state (value or
    absence). ``reset_scaling``: when the plan drops a scaling the original had
    (--replace-scaling), include ``scaling.type = none``."""
    o, t, arch = plan.original, plan.target, plan.target.arch
    want: dict[str, tuple[ValueType, object]] = {
        k(K.CONTEXT_LENGTH, arch): (ValueType.UINT32, t.n_ctx_train)
    }
    if t.freq_base != o.freq_base:
        want[k(K.ROPE_FREQ_BASE, arch)] = (ValueType.FLOAT32, t.freq_base)
    if t.scaling_type != ScalingType.NONE:
        want[k(K.ROPE_SCALING_TYPE, arch)] = (ValueType.STRING, t.scaling_type.value)
        if (t.scaling_type, t.scaling_factor) != (o.scaling_type, o.scaling_factor):  # LongRoPE keeps both
            want[k(K.ROPE_SCALING_FACTOR, arch)] = (ValueType.FLOAT32, t.scaling_factor)
    elif o.scaling_type != ScalingType.NONE and reset_scaling:
        want[k(K.ROPE_SCALING_TYPE, arch)] = (ValueType.STRING, ScalingType.NONE.value)
    if t.orig_ctx:
        want[k(K.ROPE_SCALING_ORIG_CTX, arch)] = (ValueType.UINT32, t.orig_ctx)
    if t.attn_factor != o.attn_factor:  # factors --attn-factor (keys.LAZY_TOUCHED_KEYS)
        want[k(K.ROPE_SCALING_ATTN_FACTOR, arch)] = (ValueType.FLOAT32, t.attn_factor)
    return want


# ---- the same entries as runtime overrides -------------------------------------------------


def kv_overrides(plan: Plan, current: RopeParams | None = None) -> dict[str, object]:
    """GGUF metadata overrides (typed as llama.cpp's --override-kv wants, floats as ``float``)
    that give the file as it is (``current``; default: unpatched) the plan's target: the
    context length, and every RoPE key :func:`rope_delta` says differs -- a scaling the file
    has and the target drops is reset to ``none`` (factor 1), so nothing stacks.

    llama.cpp src/llama-model-loader.cpp ``GGUFMeta::GKV::set``: an override applies whether
    or not the file has the key; the loader (llama_model::load_hparams) then reads it as if
    the file said so -- e.g. ``original_context_length`` for YaRN."""
    t, arch = plan.target, plan.target.arch
    d = rope_delta(plan, current)
    out: dict[str, object] = {k(K.CONTEXT_LENGTH, arch): t.n_ctx_train}
    if d.freq_base is not None:
        out[k(K.ROPE_FREQ_BASE, arch)] = float(d.freq_base)
    if d.scaling is not None:
        out[k(K.ROPE_SCALING_TYPE, arch)] = d.scaling.value
        out[k(K.ROPE_SCALING_FACTOR, arch)] = float(d.factor)
    if d.orig_ctx is not None:
        out[k(K.ROPE_SCALING_ORIG_CTX, arch)] = d.orig_ctx
    return out


def _override_flags(kvs: dict[str, object]) -> list[str]:
    out = []
    for key, v in kvs.items():
        kind = "str" if isinstance(v, str) else "float" if isinstance(v, float) else "int"
        out += ["--override-kv", f"{key}={kind}:{v}"]
    return out


def override_kv_flags(plan: Plan, current: RopeParams | None = None) -> list[str]:
    """``--override-kv KEY=TYPE:VALUE`` flags for :func:`kv_overrides` (common/arg.cpp
    string_parse_kv_override: int via atol, float via atof, str up to 127 chars)."""
    return _override_flags(kv_overrides(plan, current))


def llama_cpp_run_flags(plan: Plan, current: RopeParams | None = None) -> list[str]:
    """llama-server / llama-cli flags: :func:`llama_cpp_flags` plus, when the file's
    context_length is below the target, that key as an override -- llama-server
    (tools/server/server-context.cpp n_ctx_slot(), which llama-cli runs too) caps every slot
    at the model's training context, whatever ``-c`` says (a custom YaRN scale re-adjusts
    it in llama_init_from_model; the other methods do not)."""
    c, t = current or plan.original, plan.target
    flags = llama_cpp_flags(plan, current)
    if c.n_ctx_train < plan.ctx:
        flags += _override_flags({k(K.CONTEXT_LENGTH, t.arch): plan.ctx})
    return flags


def runtime_settings(plan: Plan, model_path: str = "./model.gguf",
                     current: RopeParams | None = None) -> dict[str, object]:
    """The plan as runtime settings for the file as it is (``current``; default: unpatched),
    in one JSON-friendly mapping: llama.cpp flags, kv override flags, llama-cpp-python
    arguments, and an Ollama Modelfile for the patched file at ``model_path``. When no runtime
    setting can do it (:func:`recipe_problem`), the three recipes are ``None`` and
    ``revert_first`` says why, as one line -- or, for per-pair factors the file lacks,
    ``patch_first`` (the patched file is required; it runs with no rope flags)."""
    problem = recipe_problem(plan, current)
    out: dict[str, object] = {
        "llama_cpp_flags": None if problem else llama_cpp_run_flags(plan, current),
        "override_kv_flags": None if problem else override_kv_flags(plan, current),
        "llama_cpp_python": None if problem else llama_cpp_python_kwargs(plan, current),
        "ollama_modelfile": ollama_modelfile(plan, model_path),
    }
    if problem and needs_patch(plan, current):
        out["patch_first"] = patch_first(plan, model_path)
    elif problem:
        out["revert_first"] = revert_first(problem, model_path)
    return out
