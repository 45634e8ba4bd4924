"""The same extension expressed as runtime settings -- llama.cpp flags, llama-cpp-python
arguments -- for the file AS IT IS, and the commands that run a patched file at N tokens in
each runtime. Pure: no I/O. (GGUF kv overrides, the llama-server context override, and all of
these in one mapping, are in :mod:`ropepatch.formats.gguf.params`, next to the key mapping.)

Every recipe takes the plan (computed from the ORIGINAL parameters) and the file's CURRENT
parameters (``inspect_gguf(path).current``; ``None``: the file is unpatched, current =
original). It sets every RoPE field where the file differs from the plan's target, so
nothing stacks on an earlier patch. How llama.cpp combines runtime values with the file's
(llama.cpp as vendored by llama-cpp-python 0.3.36):

* src/llama-context.cpp, ``llama_context::llama_context``: ``rope_freq_base`` /
  ``rope_freq_scale`` 0 and ``yarn_orig_ctx`` 0 mean "the file's value"
  (``hparams.rope_freq_base_train``, ``rope_freq_scale_train``, ``n_ctx_orig_yarn``, the
  latter defaulting to the file's ``original_context_length``, else its ``context_length``);
  ``rope_scaling_type`` UNSPECIFIED (-1) means the file's type; a type of ``none`` forces
  ``freq_scale = 1`` ("never scale if scaling type is none"); ``yarn_ext_factor < 0`` becomes
  1 for yarn, else 0.
* src/llama-model.cpp, ``llama_model::load_hparams``: the file's scaling type defaults to
  ``linear``; ``rope_freq_scale_train = 1/factor`` (factor 0 or absent: 1).
* common/arg.cpp: ``--rope-scale N`` sets ``rope_freq_scale = 1.0f / N``; ``--rope-freq-base``,
  ``--rope-scaling {none,linear,yarn}`` and ``--yarn-orig-ctx`` set those fields as they are.

``n_ctx_orig`` (YaRN's original context) is only read by the kernel when ``ext_factor != 0``
(ggml's rope: the correction dims only enter the YaRN ramp mix), so recipes set it for yarn
targets only -- always, to the ORIGINAL training context.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import struct
from dataclasses import dataclass

from ropepatch.rope.methods import Plan
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeParams, ScalingType


def _f(x: float) -> str:
    return repr(float(x))


def _f32(x: float) -> float:
    """``x`` rounded to float32, as llama.cpp stores and compares it (inf past float32)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


@dataclass(frozen=True)
class RopeDelta:
    """The RoPE fields a runtime must set, beyond the context size, to turn a file's current
    settings into a plan's target (``None``: the file's value is already right)."""

    freq_base: float | None = None
    scaling: ScalingType | None = None  # set together with ``factor``
    factor: float = 1.0  # the scaling factor (1/freq_scale); 1 for none
    orig_ctx: int | None = None  # YaRN's original context: always set for a yarn target


def _scales(p: RopeParams) -> bool:
    """True when llama.cpp would apply a non-trivial scaling for these file settings (a yarn
    or longrope type, or a factor other than 0/1): a target of none must then say so."""
    return p.scaling_type in (ScalingType.YARN, ScalingType.LONGROPE) or p.freq_scale != 1.0


def rope_delta(plan: Plan, current: RopeParams | None = None) -> RopeDelta:
    """What differs between the file as it is (``current``, default the unpatched original)
    and the plan's target, compared as llama.cpp reads them (float32)."""
    c, t = current or plan.original, plan.target
    base = t.freq_base if _f32(c.freq_base) != _f32(t.freq_base) else None
    if t.scaling_type == ScalingType.NONE:
        scaling, factor = (ScalingType.NONE if _scales(c) else None), 1.0
    else:
        same = c.scaling_type == t.scaling_type and _f32(c.scaling_factor) == _f32(t.scaling_factor)
        scaling, factor = (None if same else t.scaling_type), t.scaling_factor
    orig = t.n_ctx_orig if t.scaling_type == ScalingType.YARN else None
    return RopeDelta(base, scaling, factor, orig)


def carries(plan: Plan, current: RopeParams) -> bool:
    """True when the file already carries the plan's target (as llama.cpp reads it)."""
    c, t = current, plan.target
    d = rope_delta(plan, current)
    return (c.n_ctx_train == t.n_ctx_train and d.freq_base is None and d.scaling is None
            and c.n_ctx_orig == t.n_ctx_orig and not recipe_problem(plan, current))


def recipe_problem(plan: Plan, current: RopeParams | None = None) -> str:
    """Why no runtime setting can turn the file as it is into the plan's target ("" if one can).

    The recipes set the base, the scaling type and factor, YaRN's original context and the
    context length; nothing at run time changes the rotary dims, the layout, the
    architecture, the file's attn_factor, or adds, changes or removes per-pair frequency factor
    tensors (:func:`needs_patch`: a factor plan needs the patched file)."""
    c, t = current or plan.original, plan.target
    for name in ("arch", "rope_dim", "head_dim", "layout"):
        if getattr(c, name) != getattr(t, name):
            return f"the file's {name} is {getattr(c, name)}, the plan's {getattr(t, name)}"
    if _f32(c.attn_factor) != _f32(t.attn_factor):
        return f"the file's rope.scaling.attn_factor is {c.attn_factor:g}, the plan's {t.attn_factor:g}"
    if needs_patch(plan, current):
        return FACTORS_NEED_THE_FILE
    if c.has_freq_factors != t.has_freq_factors:
        return ("the file carries per-pair rope frequency factors (rope_freqs) the plan does not"
                if c.has_freq_factors else "the plan expects per-pair rope frequency factors the file lacks")
    d = rope_delta(plan, current)
    if current is not None and c != plan.original and c.has_freq_factors and (d.freq_base or d.scaling):
        return ("the file is patched and carries per-pair rope frequency factors: which factors llama.cpp "
                "applies depends on the patched keys")
    return ""


FACTORS_NEED_THE_FILE = ("per-pair rope frequency factors (rope_freqs.weight) cannot be set at run time: no "
                         "llama.cpp flag or kv override adds or changes a tensor")


def needs_patch(plan: Plan, current: RopeParams | None = None) -> bool:
    """True when the plan writes per-pair factors the file as it is does not hold: only the
    PATCHED file can carry them (its recipes then need no rope flags at all)."""
    c, t = current or plan.original, plan.target
    return bool(t.freq_factors) and c.freq_factors != t.freq_factors


def patch_first(plan: Plan, path: str) -> str:
    """The one line printed instead of runtime settings when :func:`needs_patch` says so."""
    return (f"{FACTORS_NEED_THE_FILE}: patch the file first (ropepatch gguf {shlex.quote(path)} --ctx "
            f"{plan.ctx} --method {plan.method}, with this plan's --alpha and options), then run the patched file "
            f"with no rope flags")


def revert_first(reason: str, path: str) -> str:
    """The one line printed instead of runtime settings when :func:`recipe_problem` says no."""
    return f"{reason}: revert first (ropepatch revert {shlex.quote(path)}) or use the unpatched file"


def llama_cpp_flags(plan: Plan, current: RopeParams | None = None) -> list[str]:
    """llama-cli / llama-server RoPE flags that give the file as it is (``current``; default:
    unpatched) the plan's target. llama-server also needs the context_length override that
    :func:`ropepatch.formats.gguf.params.llama_cpp_run_flags` adds."""
    d = rope_delta(plan, current)
    flags = ["-c", str(plan.ctx)]
    if d.freq_base is not None:
        flags += ["--rope-freq-base", _f(d.freq_base)]
    if d.scaling is not None:
        flags += ["--rope-scaling", d.scaling.value, "--rope-scale", _f(d.factor)]
    if d.orig_ctx is not None:
        flags += ["--yarn-orig-ctx", str(d.orig_ctx)]
    return flags


def llama_cpp_python_kwargs(plan: Plan, current: RopeParams | None = None) -> dict[str, object]:
    """Keyword arguments for ``llama_cpp.Llama(model_path, **kwargs)`` (``llama_context_params``
    fields) that give the file as it is (``current``; default: unpatched) the plan's target."""
    d = rope_delta(plan, current)
    kw: dict[str, object] = {"n_ctx": plan.ctx}
    if d.freq_base is not None:
        kw["rope_freq_base"] = float(d.freq_base)
    if d.scaling is not None:
        kw["rope_scaling_type"] = LLAMA_ROPE_SCALING_TYPE[d.scaling.value]
        kw["rope_freq_scale"] = 1.0 / d.factor
    if d.orig_ctx is not None:
        kw["yarn_orig_ctx"] = d.orig_ctx
    return kw


def ollama_modelfile(plan: Plan, model_path: str = "./model.gguf") -> str:
    """An Ollama Modelfile for the PATCHED file (Ollama reads the rope settings from it)."""
    return f"FROM {model_path}\nPARAMETER num_ctx {plan.ctx}\n"


# ---- the next step: run the patched file at N tokens ----------------------------------------


def ollama_name(path: str) -> str:
    """A model name ``ollama create`` accepts, from the file name (ollama/ollama
    types/model/name.go isValidPart: letters, digits, ``_`` first; then also ``-`` and ``.``)."""
    stem = os.path.basename(path)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    name = re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).lstrip("-.")[:64].rstrip("-.")
    return name or "ropepatch-model"


def next_steps(ctx: int, abs_path: str) -> dict[str, str]:
    """Commands that run the patched GGUF at ``abs_path`` with a ``ctx``-token context, per
    runtime: each reads the RoPE settings from the file, so only the context size is given.
    Each entry says only what was checked in that runtime's sources (cited next to it)."""
    q = shlex.quote(abs_path)
    kobold = f"koboldcpp --model {q} --contextsize {ctx}"
    if not 256 <= ctx <= 262144:
        kobold += " (koboldcpp 1.76 accepts --contextsize 256..262144 only)"
    return {
        # llama.cpp tools/server/server-context.cpp n_ctx_slot(): a slot holds
        # min(n_ctx_seq, the file's context_length), so the patched file is what raises it;
        # -c: common/arg.cpp "--ctx-size" (default 0 = the model's). llama-cli runs the same
        # server code in-process (tools/cli/cli-server.h).
        "llama-server": f"llama-server -m {q} -c {ctx}",
        "llama-cli": f"llama-cli -m {q} -c {ctx}",
        # llama-cpp-python llama_cpp/llama.py Llama.__init__: n_ctx defaults to 512 (0 = the
        # model's); RoPE arguments default to 0/-1 = the file's.
        "llama-cpp-python": f"Llama({abs_path!r}, n_ctx={ctx})",
        # ollama/ollama docs/modelfile.mdx (FROM a GGUF by absolute path; PARAMETER num_ctx);
        # cmd/cmd.go (create MODEL -f FILE). Its default num_ctx is OLLAMA_CONTEXT_LENGTH, else
        # 4096/32768/262144 by VRAM (server/routes.go), and llm/server.go NewLlamaServer caps
        # num_ctx at the file's context_length: so num_ctx must be set, on the patched file.
        "ollama_modelfile": f"FROM {abs_path}\nPARAMETER num_ctx {ctx}\n",
        "ollama": f"ollama create {ollama_name(abs_path)} -f Modelfile",
        # lmstudio-ai/lms src/subcommands/load.ts (--context-length), importCmd.ts (--copy);
        # lmstudio-ai/lmstudio-js LLMLoadModelConfig: contextLength, ropeFrequencyBase/Scale
        # (unset = no custom value). The LM Studio app itself is not open source.
        "lm_studio": f"load it with Context Length {ctx}, RoPE frequency base/scale left unset "
                     f"(CLI: lms import --copy {q}; lms load MODEL --context-length {ctx})",
        # LostRuins/koboldcpp v1.76 koboldcpp.py (--model, --contextsize); gpttype_adapter.cpp:
        # without --ropeconfig, a GGUF whose base is not 10000/500000, whose scale is not 1 or
        # whose type is yarn keeps the file's RoPE; otherwise CalcGradientAIRopeFreqBase keeps
        # the file's base while --contextsize <= the file's context_length (the patched N).
        "koboldcpp": kobold + " (no --ropeconfig: it then keeps the file's RoPE settings)",
        # oobabooga/text-generation-webui modules/shared.py (--ctx-size, alias --n_ctx; the field
        # was n_ctx before 2025-04, d4b1e31c); before 2026-03 (f0c16813) the loader filled
        # rope_freq_base / compress_pos_emb from the file's rope.freq_base / rope.scaling.factor
        # (modules/models_settings.py), and alpha_value meant base = 10000 * alpha^(64/63)
        # (modules/RoPE.py, removed 2024-06), not ropepatch's alpha.
        "text-generation-webui": f"llama.cpp loader with ctx-size {ctx} (--ctx-size {ctx}; n_ctx in older "
                                 f"versions); keep rope_freq_base and compress_pos_emb as read from the file "
                                 f"and alpha_value at 1 (its alpha is not ropepatch's alpha)",
    }
