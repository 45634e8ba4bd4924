"""The effect map: which RoPE keys and tensors llama.cpp reads for each architecture.

Derived by reading llama.cpp's own sources, commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f
(ggml-org/llama.cpp, the copy vendored by llama-cpp-python 0.3.36, vendor/llama.cpp):
  - src/llama-model.cpp ``llama_model_base::load_hparams``: the common loader. For EVERY architecture
    it reads rope.freq_base, rope.scaling.type / factor / original_context_length / attn_factor /
    finetuned and rope.scaling.alpha; ``get_rope_factors`` (rope_freqs, else rope_factors_long/short
    by n_ctx_seq > original ctx), ``get_rope_freq_base/scale`` (sliding-window layers take
    rope_freq_base_train_swa / rope_freq_scale_train_swa, struct defaults 10000 and 1);
  - src/llama-hparams.h (those defaults), src/llama-context.cpp (yarn_* from the file unless the
    caller passes them);
  - src/models/<arch>.cpp: ``load_arch_hparams`` (per-architecture keys), ``load_arch_tensors``
    (whether rope_freqs.weight / rope_factors_long/short are created: a tensor the builder does not
    create fails the load with "done_getting_tensors: wrong number of tensors") and the graph (what
    reaches ggml_rope_ext / ggml_rope_multi). docs/effects.md shows the table as a matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ropepatch.errors import UnsupportedModelError
from ropepatch.rope.arch import MROPE_ARCHS, NEOX_ARCHS, NO_ROPE_ARCHS, NORM_ARCHS, rope_layout

LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
SOURCE = f"llama.cpp {LLAMA_CPP_COMMIT[:9]} (llama-cpp-python 0.3.36, vendor/llama.cpp)"
# read by llama_model_base::load_hparams for every architecture
COMMON_KEYS = ("rope.freq_base", "rope.scaling.type", "rope.scaling.factor",
               "rope.scaling.original_context_length", "rope.scaling.attn_factor")
KNOWN_ARCHS = NORM_ARCHS | NEOX_ARCHS | MROPE_ARCHS | NO_ROPE_ARCHS


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# rope_freqs.weight {n_rot/2}: created by load_arch_tensors AND passed to the ROPE op (get_rope_factors)
FREQS_APPLIED = _set("""apertus arcee deci eagle3 exaone exaone-moe exaone4 granite granite_swa granitehybrid
    granitemoe llama llama-embed llama4 minicpm mistral3 nanbeige""")
# created (so the file loads) but never passed to the ROPE op: factors there do nothing
FREQS_IGNORED = _set("cogvlm falcon-h1 llada pangu-embedded refact")
# created with their own meaning or shape: gemma4 (proportional RoPE, head_dim/2, global layers only),
# step35 (n_rot_max/2, per-layer rotary widths), dflash (n_embd_head_k/2, a draft model)
FREQS_SPECIAL = {
    "gemma4": "rope_freqs.weight holds gemma4's proportional RoPE (head_dim/2 entries, global layers only)",
    "gemma4-assistant": "rope_freqs.weight holds gemma4's proportional RoPE (head_dim/2 entries, global layers only)",
    "step35": "rope_freqs.weight has n_rot_max/2 entries shared by layers of different rotary widths",
    "dflash": "rope_freqs.weight has n_embd_head_k/2 entries and is read from layer 0 only (a draft model)",
}
# rope_factors_long/short: created only while rope.scaling.type is longrope / whenever present
LONGROPE_TYPED = _set("""apertus deci granite granite_swa granitemoe llama llama-embed minicpm mistral3
    step35""")
LONGROPE_ALWAYS = _set("minicpm3 phi3 phimoe")
LONGROPE_IGNORED = _set("pangu-embedded refact")  # created (type longrope) but not applied
# sliding-window layers: (where their base comes from, whether the scaling factor reaches them)
#   "own":    rope.freq_base_swa, default 10000 (never the main base)
#   "own!":   rope.freq_base_swa, required
#   "own|main": rope.freq_base_swa when the file has it, else the file's rope.freq_base
#   "main":   the main base
SWA = {
    **{a: ("own", False) for a in
       "gemma-embedding gemma3 gemma3n gemma4 gemma4-assistant mimo2 modern-bert plamo3 step35".split()},
    "dots3note": ("own!", True),
    **{a: ("own|main", True) for a in "afmoe gemma2 gpt-oss llama4 maple smallthinker spark2_5".split()},
    **{a: ("own|main", False) for a in "laguna muse-glimmer".split()},
    **{a: ("main", False) for a in "mellum olmo2".split()},
    # RoPE only on the sliding-window layers (global layers have none): main base, scaled
    **{a: ("main", True) for a in "cohere2 cohere2moe exaone-moe exaone4".split()},
}
FAMILY = "llama, mistral3, granite, deci, exaone, minicpm, llama4"  # examples of FREQS_APPLIED, for messages
SWA_ROPE_ONLY = _set("cohere2 cohere2moe exaone-moe exaone4")
# rope.dimension_sections (M-RoPE sections; ggml_rope_multi)
SECTIONS = _set("""bailingmoe3 deepseek32 dflash ernie4_5 ernie4_5-moe glm-dsa glm4 glm4moe hunyuan-dense
    hunyuan_vl paddleocr qwen2vl qwen35 qwen35moe qwen3tts qwen3vl qwen3vlmoe qwen4exp""")
# per-architecture yarn keys (rope.scaling.<name>); everything else uses the runtime's yarn values
YARN_KEYS = {
    "grok": ("yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow"),
    "mistral3": ("yarn_beta_fast", "yarn_beta_slow", "yarn_log_multiplier"),
    **{a: ("yarn_log_multiplier",) for a in "deepseek2 deepseek32 glm-dsa mistral4".split()},
}
ALPHA_APPLIED = _set("hunyuan-dense hunyuan_vl")  # base * alpha^(d/(d-2)) at load when alpha > 0
BASE_IGNORED = _set("cogvlm")  # ggml_rope without base, scale or yarn: only the layout and positions
NO_ROPE_GRAPH = _set("starcoder")  # listed with a layout, but the graph never rotates (learned positions)
NOTES = {
    "grok": "grok defaults yarn_beta_fast to 8 (not 32) when the file has no rope.scaling.yarn_beta_fast",
    "deepseek2": "rope.scaling.yarn_log_multiplier changes YaRN's attention factor (DeepSeek's mscale)",
    "hunyuan_vl": "rope.scaling.alpha > 0 raises the base at load: base * alpha^(d/(d-2)), d = head dim",
    "phi3": "rope_factors_long/short apply whatever rope.scaling.type says (long past the original ctx)",
    "gptj": "llama.cpp has no gptj builder: such a file does not load",
    "granite": "rope.scaling.finetuned = false switches RoPE off in every layer (then nothing ropepatch writes "
               "but context_length applies)",
}
_FILES = {"deepseek2-ocr": "deepseek2ocr.cpp, deepseek2.cpp", "ernie4_5-moe": "ernie4-5-moe.cpp, ernie4-5.cpp",
          "glm4moe": "glm4-moe.cpp", "gpt-oss": "openai-moe.cpp", "granitehybrid": "granite-hybrid.cpp",
          "granitemoe": "granite-moe.cpp, granite.cpp", "graniteswitch": "granite-switch.cpp, granite.cpp",
          "hunyuan-dense": "hunyuan-vl.cpp", "llama-embed": "llama.cpp", "mistral4": "deepseek2.cpp",
          "minicpm": "minicpm.cpp, granite.cpp", "nemotron_h_moe": "nemotron-h-moe.cpp, nemotron-h.cpp",
          "paddleocr": "paddleocr.cpp, ernie4-5.cpp", "pangu-embedded": "pangu-embed.cpp",
          "phimoe": "phimoe.cpp, phi3.cpp", "qwen3tts": "qwen3vl.cpp", "lfm2moe": "lfm2moe.cpp, lfm2.cpp"}


@dataclass(frozen=True)
class ArchEffects:
    """One row of the effect map: what llama.cpp reads and applies for ``arch``."""

    arch: str
    known: bool  # False: not in the table, effects unknown (nothing is refused or warned)
    rope: bool  # the graph rotates Q/K at all
    layout: str  # norm / neox / mrope / unknown (ropepatch.rope.arch)
    base_and_scaling: bool  # rope.freq_base and the rope.scaling.* keys reach the ROPE op
    yarn_keys: tuple[str, ...]  # per-architecture rope.scaling.yarn_* keys read from the file
    alpha: bool  # rope.scaling.alpha applied (raises the base at load)
    rope_freqs: str  # applied | ignored | special | absent (the builder does not create it)
    longrope: str  # rope_factors_long/short: with-type-longrope | always | ignored | absent
    swa_base: str  # none | own | own! | own|main | main (see SWA above)
    swa_scaled: bool  # the scaling factor reaches the sliding-window layers (True when no SWA)
    sections: bool  # reads rope.dimension_sections (M-RoPE)
    notes: tuple[str, ...]
    source: str  # the llama.cpp file(s)

    def to_dict(self) -> dict:
        """The row as JSON (plus the keys the common loader reads and the source commit)."""
        d = asdict(self)
        d["common_keys"] = list(COMMON_KEYS) if self.known and self.rope else []
        d["llama_cpp"] = SOURCE
        return d

    @property
    def summary(self) -> str:
        """One line for ``inspect``."""
        if not self.known:
            return f"{self.arch}: not in ropepatch's effect map ({SOURCE}); effects unknown"
        if not self.rope:
            return f"{self.arch}: no rotary embeddings in llama.cpp's graph"
        parts = ["freq_base + rope.scaling.* applied" if self.base_and_scaling
                 else "freq_base and rope.scaling.* IGNORED (ggml_rope without them)",
                 _FREQS_WORDS[self.rope_freqs]]
        if self.rope_freqs == "absent" and self.longrope in ("always", "with-type-longrope"):
            parts[1] = ("no rope_freqs.weight (an extra tensor fails the load; ntk-parts/factors "
                        "multiply rope_factors_long when the file has it)")
        if self.longrope != "absent":
            parts.append(f"rope_factors_long/short {_LONGROPE_WORDS[self.longrope]}")
        if self.swa_base != "none":
            parts.append(f"sliding-window base {_SWA_WORDS[self.swa_base]}, "
                         f"scaling {'applied' if self.swa_scaled else 'NOT applied'} there")
        if self.yarn_keys:
            parts.append("reads " + ", ".join(f"rope.scaling.{k}" for k in self.yarn_keys))
        if self.alpha:
            parts.append("applies rope.scaling.alpha")
        if self.sections:
            parts.append("M-RoPE rope.dimension_sections")
        return f"{self.arch}: " + "; ".join(parts)


_FREQS_WORDS = {"applied": "rope_freqs.weight applied (ntk-parts/factors work)",
                "ignored": "rope_freqs.weight loaded but NOT applied (ntk-parts/factors refused)",
                "special": "rope_freqs.weight has its own meaning here (ntk-parts/factors refused)",
                "absent": "no rope_freqs.weight (ntk-parts/factors refused: an extra tensor fails the load)"}
_LONGROPE_WORDS = {"with-type-longrope": "loaded while rope.scaling.type is longrope",
                   "always": "applied whenever present", "ignored": "loaded but not applied"}
_SWA_WORDS = {"own": "rope.freq_base_swa (default 10000)", "own!": "rope.freq_base_swa (required)",
              "own|main": "rope.freq_base_swa if set, else rope.freq_base", "main": "rope.freq_base"}


def _source(arch: str) -> str:
    if arch == "gptj":
        return "src/llama-model.cpp (no gptj builder)"
    files = _FILES.get(arch, arch.replace("_", "-") + ".cpp")
    return "src/llama-model.cpp, " + ", ".join(f"src/models/{f}" for f in files.split(", "))


def _freqs(arch: str) -> str:
    if arch in FREQS_APPLIED:
        return "applied"
    if arch in FREQS_IGNORED:
        return "ignored"
    return "special" if arch in FREQS_SPECIAL else "absent"


def _longrope(arch: str) -> str:
    if arch in LONGROPE_TYPED:
        return "with-type-longrope"
    if arch in LONGROPE_ALWAYS:
        return "always"
    return "ignored" if arch in LONGROPE_IGNORED else "absent"


def _notes(arch: str) -> tuple[str, ...]:
    notes = [n for n in (NOTES.get(arch), FREQS_SPECIAL.get(arch)) if n]
    if arch in YARN_KEYS and "yarn_log_multiplier" in YARN_KEYS[arch] and arch != "deepseek2":
        notes.append(NOTES["deepseek2"])
    if arch == "granitehybrid":
        notes.append(NOTES["granite"])
    if arch in ALPHA_APPLIED and arch != "hunyuan_vl":
        notes.append(NOTES["hunyuan_vl"])
    if arch in SWA_ROPE_ONLY:
        notes.append("RoPE only on the sliding-window layers; the global layers have no position encoding")
    if arch in BASE_IGNORED:
        notes.append("the graph calls ggml_rope without base, scale or YaRN values: only context_length "
                     "changes anything")
    return tuple(notes)


def effects_for(arch: str) -> ArchEffects:
    """The effect-map row for ``arch`` (an explicit ``known=False`` row when it is not in the map)."""
    if arch not in KNOWN_ARCHS:
        return ArchEffects(arch, False, True, rope_layout(arch).value, True, (), False, "unknown", "unknown",
                           "unknown", True, False, ("effects unknown: not in llama.cpp " + LLAMA_CPP_COMMIT[:9],),
                           "-")
    rope = arch not in NO_ROPE_ARCHS and arch not in NO_ROPE_GRAPH
    swa_base, swa_scaled = SWA.get(arch, ("none", True))
    return ArchEffects(arch, True, rope, rope_layout(arch).value, rope and arch not in BASE_IGNORED,
                       YARN_KEYS.get(arch, ()), arch in ALPHA_APPLIED, _freqs(arch), _longrope(arch),
                       swa_base, swa_scaled, arch in SECTIONS, _notes(arch), _source(arch))


def reads_freq_factors(arch: str) -> bool:
    """Whether llama.cpp creates rope_freqs.weight {n_rot/2} for ``arch`` and applies it."""
    return arch in FREQS_APPLIED


def longrope_applies(arch: str, scaling_type: str) -> bool:
    """Whether llama.cpp's ``arch`` builder creates LongRoPE's rope_factors_long/short pair (and no
    rope_freqs) for a file of this rope.scaling.type: then ``get_rope_factors`` applies the long
    factors when the context (n_ctx_seq) exceeds the original one (n_ctx_orig_yarn), else the
    short ones."""
    return arch in LONGROPE_ALWAYS or (arch in LONGROPE_TYPED and arch not in FREQS_SPECIAL
                                       and scaling_type == "longrope")


def composes_with_long(orig) -> bool:
    """Whether a per-pair factor method on ``orig`` (a :class:`RopeParams` read from a file)
    multiplies LongRoPE's rope_factors_long: the pair applies there and the long values were read."""
    return longrope_applies(orig.arch, orig.scaling_type.value) and bool(orig.freq_factors)


def factor_refusal(arch: str, method: str) -> str | None:
    """Why ``method`` (one that writes rope_freqs.weight) cannot work on ``arch``; None if it can
    (or the architecture is not in the map: effects unknown, nothing refused)."""
    e = effects_for(arch)
    if not e.known or e.rope_freqs == "applied":
        return None
    fix = "use --method yarn or ntk (they change keys every architecture reads)"
    if not e.base_and_scaling:
        fix = "llama.cpp's graph there ignores every RoPE setting ropepatch writes but context_length"
    if e.rope_freqs == "ignored":
        return (f"architecture {arch!r}: llama.cpp loads rope_freqs.weight but never applies it "
                f"({e.source}), so {method} would change nothing; {fix}")
    if e.rope_freqs == "special":
        return f"architecture {arch!r}: {FREQS_SPECIAL[arch]}; ropepatch does not write {method} there; {fix}"
    longrope = (" (its per-pair factors are LongRoPE's rope_factors_long/short: ropepatch multiplies the long "
                "ones of a file that has them as F32 of rope_dim/2 values, and this one has none)"
                if e.longrope == "always" else "")
    return (f"architecture {arch!r} takes no per-pair factors in rope_freqs.weight: llama.cpp's {arch} builder "
            f"does not create it, so the extra tensor would fail the load (\"wrong number of tensors\"){longrope}; "
            f"{method} needs a llama-family architecture ({FAMILY}, ...: docs/effects.md); {fix}")


def longrope_refusal(orig, target) -> str | None:
    """Why scaling ``orig`` (a :class:`RopeParams` read from a file) to ``target`` cannot load:
    its rope_factors_long/short tensors are created only while rope.scaling.type is longrope,
    and ``target`` has another type (a method that is not a per-pair factor one, or
    --replace-scaling)."""
    if not (orig.arch in LONGROPE_TYPED and orig.scaling_type.value == "longrope"
            and orig.has_freq_factors and target.scaling_type.value != "longrope"):
        return None
    return (f"architecture {orig.arch!r}: llama.cpp creates rope_factors_long/short only while "
            f"rope.scaling.type is longrope, so replacing the file's longrope scaling would leave them as "
            f"extra tensors and fail the load (\"wrong number of tensors\"); keep the file's LongRoPE scaling "
            f"(--method ntk-parts or factors multiply its long factors)")


def _problem(orig, target, method: str, writes_factors: bool) -> str | None:
    refused = writes_factors and not composes_with_long(orig)
    return (factor_refusal(orig.arch, method) if refused else None) or longrope_refusal(orig, target)


def check_method(orig, target, method: str, writes_factors: bool) -> None:
    """Raise UnsupportedModelError (one line) for a method the architecture of ``orig`` (the
    :class:`RopeParams` being scaled) cannot take, ``target`` being what it would write."""
    why = _problem(orig, target, method, writes_factors)
    if why:
        raise UnsupportedModelError(why)


def plan_problems(plan, writes_factors: bool) -> tuple[str, ...]:
    """What in ``plan`` llama.cpp cannot take for the plan's architecture (the refusals, as text)."""
    why = _problem(plan.original, plan.target, plan.method, writes_factors)
    return (why,) if why else ()


def plan_warnings(plan) -> tuple[str, ...]:
    """What in ``plan`` llama.cpp would ignore or only partly apply (true per the sources).
    ``plan``: a :class:`ropepatch.rope.methods.Plan` (original, target, method)."""
    o, t = plan.original, plan.target
    e = effects_for(o.arch)
    if not (e.known and e.rope):
        return ()
    base_changed = t.freq_base != o.freq_base
    scaled = t.freq_scale != 1.0
    out = []
    if not e.base_and_scaling and (base_changed or scaled):
        out.append(f"llama.cpp's {o.arch} graph calls ggml_rope without base or scaling ({e.source}): "
                   f"{plan.method}'s rope values are ignored and only context_length changes")
        return tuple(out)
    if e.longrope == "always" and o.has_freq_factors and t.freq_factors == o.freq_factors:
        out.append(f"llama.cpp's {o.arch} applies the file's rope_factors_long/short whatever rope.scaling.type "
                   f"says: they stay and act together with {plan.method}")
    if e.swa_base in ("own", "own!") and base_changed:  # "own|main": only when the file sets the key
        out.append(f"llama.cpp's {o.arch} sliding-window layers use {o.arch}.rope.freq_base_swa "
                   f"({'required' if e.swa_base == 'own!' else 'default 10000'}), not rope.freq_base: "
                   f"the {plan.method} base change reaches only the global layers")
    if e.swa_base != "none" and not e.swa_scaled and scaled:
        out.append(f"llama.cpp's {o.arch} sliding-window layers run unscaled (freq_scale 1): the "
                   f"{plan.method} factor {t.scaling_factor:g} reaches only the global layers")
    return tuple(out)
