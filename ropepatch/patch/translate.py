"""Cross-format translation: HF config rope settings <-> GGUF plans.

* :func:`plan_from_hf` turns the rope settings of a Hugging Face config.json into the
  (method, ctx, alpha) that gives a GGUF of the same model the same extension.
* :func:`gguf_as_hf` gives the Hugging Face rope block equivalent to a GGUF's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ropepatch.errors import UnsupportedModelError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.config import read_rope
from ropepatch.patch.gguf import ModelInfo
from ropepatch.patch.hf_io import read_config_file
from ropepatch.patch.hf_plan import plan_hf_snippets
from ropepatch.rope.methods import METHODS, alpha_for, make_plan
from ropepatch.rope.params import RopeParams, ScalingType
from ropepatch.safeio.paths import shown


@dataclass(frozen=True)
class HFTranslation:
    method: str
    ctx: int
    alpha: float
    warnings: tuple[str, ...]


def plan_from_hf(config_path: str, original: RopeParams, ctx: int | None = None) -> HFTranslation:
    """The GGUF patch that applies ``config_path``'s rope settings to a model whose ORIGINAL
    GGUF settings are ``original``. The config states its own target context: a ``ctx`` that
    differs is refused, and so is a config of another architecture (its ``model_type``).
    ``config_path`` must name a regular file of at most
    :data:`~ropepatch.formats.hf.keys.CONFIG_MAX_BYTES` (a FIFO or device is refused before it
    is opened)."""
    rope = read_rope(read_config_file(config_path)[1])
    config_path = shown(config_path)
    _check_arch(config_path, rope.model_type, original.arch)
    tr = _translate(config_path, rope, original)
    if ctx is not None and ctx != tr.ctx:
        raise UsageError(
            f"--ctx {ctx}: {config_path} states its own context ({tr.ctx} tokens); drop --ctx, or "
            f"give --ctx/--method/--alpha without --from-hf"
        )
    return tr


# Hugging Face model_type -> the GGUF general.architecture llama.cpp's converter writes for it,
# where the two differ (after lower-casing and dropping '_' and '-')
_GGUF_ARCH = {"mistral": "llama", "mixtral": "llama", "deepseekv2": "deepseek2", "deepseekv3": "deepseek2"}


def _arch_key(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    return _GGUF_ARCH.get(key, key)


def _check_arch(config_path: str, model_type: str | None, arch: str | None) -> None:
    """Refuse a config whose model_type names another architecture than the GGUF's (a qwen2
    config on a llama GGUF); names that are a prefix of each other (llama, llama4) pass."""
    if not model_type or not arch:
        return
    a, b = _arch_key(model_type), _arch_key(arch)
    if not (a.startswith(b) or b.startswith(a)):
        raise UsageError(
            f"{config_path}: model_type {model_type!r} does not match the GGUF's architecture "
            f"{arch!r}; the config belongs to a different model"
        )


def _translate(config_path: str, rope, original: RopeParams) -> HFTranslation:
    """The translation of ``rope`` (read from ``config_path``) onto ``original``."""
    L, d, b = original.n_ctx_train, original.rope_dim, original.freq_base
    warnings: list[str] = []
    if rope.rope_dim != d:
        raise UsageError(
            f"{config_path}: rotary dims {rope.rope_dim} do not match the GGUF's {d}; the config "
            f"belongs to a different model"
        )
    if rope.orig_ctx not in (L,) and rope.rope_type != hk.RT_DEFAULT:
        warnings.append(
            f"the config's original context {rope.orig_ctx} differs from the GGUF's {L}; the "
            f"GGUF's is used"
        )
    t = rope.rope_type
    if t == hk.RT_DEFAULT:
        if rope.rope_theta == b:
            raise UsageError(
                f"{config_path}: rope_theta {rope.rope_theta:g} equals the GGUF's base and there is "
                f"no rope_scaling: the config carries no context extension to apply"
            )
        if rope.rope_theta < b:
            raise UsageError(
                f"{config_path}: rope_theta {rope.rope_theta:g} is below the GGUF's original base "
                f"{b:g}; that is not an NTK extension ropepatch can express"
            )
        method, alpha = "ntk", (rope.rope_theta / b) ** ((d - 2) / d)
        target = (rope.max_position_embeddings if rope.max_position_embeddings > L else round(L * alpha))
    elif t in hk.ROPE_TYPE_METHOD:  # the rope types a method writes
        method, alpha = hk.ROPE_TYPE_METHOD[t], float(rope.factor or 1.0)
        target = round(L * alpha)
        if t == hk.RT_DYNAMIC:
            warnings.append(
                f"dynamic: llama.cpp has no dynamic NTK mode; the GGUF gets the static base dynamic "
                f"NTK would use at {target} tokens, applied at every length"
            )
    else:
        raise UnsupportedModelError(
            f"{config_path}: rope_type {t!r} has no GGUF equivalent ropepatch can write (only "
            f"default/ntk, dynamic, linear and yarn translate)"
        )
    return HFTranslation(method, int(target), float(alpha), tuple(warnings))


def gguf_as_hf(info: ModelInfo) -> dict:
    """The Hugging Face config keys equivalent to a GGUF's current rope settings."""
    prov, cur = info.provenance, info.current
    if prov is not None and not getattr(METHODS.get(prov.method), "writes_factors", False):  # factors: below
        plan = make_plan(info.original, prov.ctx, prov.method, alpha_for(prov.method, prov.alpha), options=prov.options)
        return plan_hf_snippets(plan)
    scaling = None
    if cur.has_freq_factors:
        raise UnsupportedModelError(
            f"{shown(info.path)}: per-pair frequency factors (rope_freqs) have no single HF rope block "
            f"ropepatch can derive"
        )
    if cur.scaling_type == ScalingType.LINEAR and cur.freq_scale != 1.0:
        scaling = {hk.RS_ROPE_TYPE: hk.RT_LINEAR, hk.RS_FACTOR: cur.scaling_factor}
    elif cur.scaling_type == ScalingType.YARN:
        scaling = {hk.RS_ROPE_TYPE: hk.RT_YARN, hk.RS_FACTOR: cur.scaling_factor,
                   hk.RS_ORIG_MAX_POS: cur.n_ctx_orig}
    elif cur.scaling_type == ScalingType.LONGROPE:
        raise UnsupportedModelError(f"{shown(info.path)}: longrope needs per-pair factors; no HF block derived")
    v4 = {hk.ROPE_THETA: cur.freq_base, hk.ROPE_SCALING: scaling,
          hk.MAX_POSITION_EMBEDDINGS: cur.n_ctx_train}
    params = dict(scaling) if scaling else {hk.RS_ROPE_TYPE: hk.RT_DEFAULT}
    params[hk.ROPE_THETA] = cur.freq_base
    return {
        "transformers_v4": v4,
        "transformers_v5": {hk.ROPE_PARAMETERS: params, hk.MAX_POSITION_EMBEDDINGS: cur.n_ctx_train},
        "notes": ["not patched by ropepatch: the block restates the file's own settings"],
    }
