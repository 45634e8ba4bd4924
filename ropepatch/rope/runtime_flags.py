"""The same extension expressed as runtime settings: llama.cpp flags, llama-cpp-python
arguments, GGUF kv overrides and an Ollama Modelfile. Pure: no I/O."""

from __future__ import annotations

from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, ScalingType
from ropepatch.rope.methods import Plan


def _f(x: float) -> str:
    return repr(float(x))


def llama_cpp_flags(plan: Plan) -> list[str]:
    """llama-cli / llama-server flags that apply ``plan`` to the UNPATCHED file at run time."""
    t, o = plan.target, plan.original
    flags = ["-c", str(plan.ctx)]
    if t.freq_base != o.freq_base:
        flags += ["--rope-freq-base", _f(t.freq_base)]
    if t.scaling_type != ScalingType.NONE:
        flags += ["--rope-scaling", t.scaling_type.value, "--rope-scale", _f(t.scaling_factor)]
    if t.scaling_type == ScalingType.YARN:
        flags += ["--yarn-orig-ctx", str(t.orig_ctx)]
    return flags


def kv_overrides(plan: Plan) -> dict[str, object]:
    """GGUF metadata overrides with the same effect (typed as llama.cpp's --override-kv wants)."""
    t, o, a = plan.target, plan.original, plan.target.arch
    kv: dict[str, object] = {f"{a}.context_length": plan.ctx}
    if t.freq_base != o.freq_base:
        kv[f"{a}.rope.freq_base"] = float(t.freq_base)
    if t.scaling_type != ScalingType.NONE:
        kv[f"{a}.rope.scaling.type"] = t.scaling_type.value
        kv[f"{a}.rope.scaling.factor"] = float(t.scaling_factor)
    if t.orig_ctx:
        kv[f"{a}.rope.scaling.original_context_length"] = t.orig_ctx
    return kv


def override_kv_flags(plan: Plan) -> list[str]:
    """``--override-kv KEY=TYPE:VALUE`` flags for :func:`kv_overrides`."""
    out = []
    for key, v in kv_overrides(plan).items():
        kind = "str" if isinstance(v, str) else "float" if isinstance(v, float) else "int"
        out += ["--override-kv", f"{key}={kind}:{v}"]
    return out


def llama_cpp_python_kwargs(plan: Plan) -> dict[str, object]:
    """Keyword arguments for ``llama_cpp.Llama(model_path, **kwargs)`` on the unpatched file."""
    t, o = plan.target, plan.original
    kw: dict[str, object] = {"n_ctx": plan.ctx}
    if t.freq_base != o.freq_base:
        kw["rope_freq_base"] = float(t.freq_base)
    if t.scaling_type != ScalingType.NONE:
        kw["rope_scaling_type"] = LLAMA_ROPE_SCALING_TYPE[t.scaling_type.value]
        kw["rope_freq_scale"] = 1.0 / t.scaling_factor
    if t.scaling_type == ScalingType.YARN:
        kw["yarn_orig_ctx"] = t.orig_ctx
    return kw


def ollama_modelfile(plan: Plan, model_path: str = "./model.gguf") -> str:
    """An Ollama Modelfile for the PATCHED file (Ollama reads the rope settings from it)."""
    return f"FROM {model_path}\nPARAMETER num_ctx {plan.ctx}\n"


def runtime_settings(plan: Plan, model_path: str = "./model.gguf") -> dict[str, object]:
    """Everything above in one JSON-friendly mapping."""
    return {
        "llama_cpp_flags": llama_cpp_flags(plan),
        "override_kv_flags": override_kv_flags(plan),
        "llama_cpp_python": llama_cpp_python_kwargs(plan),
        "ollama_modelfile": ollama_modelfile(plan, model_path),
    }
