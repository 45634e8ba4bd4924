"""The same extension expressed as runtime settings: llama.cpp flags, llama-cpp-python
arguments and an Ollama Modelfile. Pure: no I/O. (GGUF kv overrides, and all of these in one
mapping, are in :mod:`ropepatch.formats.gguf.params`, next to the GGUF key mapping.)"""

from __future__ import annotations

from ropepatch.rope.methods import Plan
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, ScalingType


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
