"""The context-extension methods: pure math, one registry.

Notation (as in docs/methods.md): b = rotary base, d = rotated dims, L = original training
context, N = target context, s = N / L.

Each :class:`Method` is a small declarative object: its name, a one-line summary, the paper or
post it comes from, what its ``alpha`` parameter means, and a pure function that maps the
model's ORIGINAL :class:`RopeParams` plus (N, alpha) to the parameters to write.
No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ropepatch.errors import UnsupportedModelError, UsageError
from ropepatch.rope import effects
from ropepatch.rope import factors as ff
from ropepatch.rope.params import RopeParams, ScalingType

# ---- formulas -----------------------------------------------------------------------------


def ntk_exponent(rope_dim: int) -> float:
    """d / (d - 2): the exponent that makes the lowest frequency scale exactly like PI."""
    if rope_dim <= 2:
        raise UsageError(f"rotary dimension count must be > 2 for NTK scaling, found {rope_dim}")
    return rope_dim / (rope_dim - 2)


def ntk_base(base: float, rope_dim: int, alpha: float) -> float:
    """NTK-aware base: b' = b * alpha^(d/(d-2))."""
    return base * alpha ** ntk_exponent(rope_dim)


def dynamic_ntk_base(base: float, rope_dim: int, alpha: float, length: int, orig_ctx: int) -> float:
    """Dynamic NTK base at sequence length l: b * ((a*l/L) - (a-1))^(d/(d-2)) if l > L, else b."""
    if length <= orig_ctx:
        return base
    return base * ((alpha * length / orig_ctx) - (alpha - 1)) ** ntk_exponent(rope_dim)


def yarn_mscale(factor: float, attn_factor: float = 1.0) -> float:
    """YaRN's attention temperature: attn_factor * (1 + 0.1 ln s) for s > 1."""
    if factor <= 1.0:
        return attn_factor
    return attn_factor * (1.0 + 0.1 * math.log(factor))


# ---- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class HFSpelling:
    """How a method is written into a Hugging Face config (transformers' rope block)."""

    rope_type: str | None  # rope_scaling.rope_type; None = no scaling block (plain default rope)
    theta_from_target: bool = False  # rope_theta becomes the planned base (ntk)
    max_pos_is_target: bool = True  # max_position_embeddings = N (else it stays L)
    writes_orig_max_pos: bool = False  # original_max_position_embeddings = L (yarn)


@dataclass(frozen=True)
class MethodOption:
    """A parameter a method takes besides alpha (e.g. ntk-parts' beta_fast): its name in
    ``Plan.options`` and records, the CLI flag, its default and what it means."""

    name: str
    flag: str
    default: Any
    help: str


@dataclass(frozen=True)
class Method:
    """One context-extension method: everything about it that is not per-format I/O."""

    name: str
    summary: str
    reference: str
    alpha_help: str
    writes: str  # the GGUF fields this method writes, for help text and docs
    _apply: Callable[[RopeParams, int, float, Mapping[str, Any]], RopeParams]
    hf: HFSpelling = HFSpelling(None)
    takes_alpha: bool = True  # False: alpha is meaningless (none)
    options: tuple[MethodOption, ...] = ()  # parameters besides alpha
    writes_factors: bool = False  # writes per-pair divisors (rope_freqs.weight): GGUF, llama-family only
    # notes shown after planning/patching, str.format()-ed with :func:`note_values` of the plan
    gguf_note: str = ""  # the GGUF file / llama.cpp
    hf_note: str = ""  # the HF config / transformers / vLLM, after patching
    hf_plan_note: str = ""  # the same, for ``plan`` on an HF model
    gguf_plan_note: str = ""  # for ``plan`` on a GGUF model (or bare parameters)

    def apply(self, orig: RopeParams, ctx: int, alpha: float, options: Mapping[str, Any] | None = None
              ) -> RopeParams:
        """Parameters to write for target context ``ctx`` given the ORIGINAL params; ``options``
        (name -> value) override :attr:`options`' defaults."""
        return self._apply(orig, ctx, alpha, self.resolve_options(options))

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every option's value: the given one, else its default (UsageError for unknown names)."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        known = {o.name for o in self.options}
        unknown = sorted(set(given) - known)
        if unknown:
            flags = ", ".join(o.flag for o in self.options) or "none"
            raise UsageError(f"method {self.name} does not take {unknown[0]}: its options are {flags}")
        return {o.name: given.get(o.name, o.default) for o in self.options}


def note_values(plan: "Plan") -> dict:
    """The fields a method's note templates may use."""
    L = plan.original.n_ctx_train
    return {"ctx": plan.ctx, "L": L, "alpha": plan.alpha, "base": plan.target.freq_base,
            "orig_base": plan.original.freq_base, "runtime_len": int(L * plan.alpha)}


def method_note(plan: "Plan", which: str) -> str:
    """The method's ``which`` note (``"gguf_note"``, ``"hf_note"``, ``"hf_plan_note"``,
    ``"gguf_plan_note"``) for ``plan``, filled in; "" when the method has none."""
    template = getattr(get_method(plan.method), which)
    return template.format(**note_values(plan)) if template else ""


def _unscaled(orig: RopeParams, ctx: int) -> RopeParams:
    return orig.with_(n_ctx_train=ctx, scaling_type=ScalingType.NONE, scaling_factor=0.0, orig_ctx=0)


def _none(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    return _unscaled(orig, ctx)


def _ntk(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    return _unscaled(orig, ctx).with_(freq_base=ntk_base(orig.freq_base, orig.rope_dim, alpha))


def _dynamic(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    base = dynamic_ntk_base(orig.freq_base, orig.rope_dim, alpha, ctx, orig.n_ctx_train)
    return _unscaled(orig, ctx).with_(freq_base=base)


def _linear(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    return orig.with_(n_ctx_train=ctx, scaling_type=ScalingType.LINEAR, scaling_factor=alpha, orig_ctx=0)


def _yarn(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    return orig.with_(n_ctx_train=ctx, scaling_type=ScalingType.YARN, scaling_factor=alpha, orig_ctx=orig.n_ctx_train)


def _factors_target(orig: RopeParams, ctx: int, new: tuple[float, ...]) -> RopeParams:
    """The unscaled model at ``ctx`` whose per-pair divisors are the file's factors times ``new``;
    LongRoPE's (the long ones, effects.longrope_applies) keep their pair: the scaling type (llama
    creates the pair only under longrope) and the original context, past which the long apply."""
    target = _unscaled(orig, ctx).with_(has_freq_factors=True, freq_factors=ff.compose(orig.freq_factors, new))
    if not effects.longrope_applies(orig.arch, orig.scaling_type.value):
        return target
    return target.with_(scaling_type=orig.scaling_type, scaling_factor=orig.scaling_factor, orig_ctx=orig.n_ctx_orig)


def _ntk_parts(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    new = ff.ntk_parts_factors(orig.rope_dim, orig.freq_base, orig.n_ctx_train, alpha,
                               float(opts["beta_fast"]), float(opts["beta_slow"]))
    return _factors_target(orig, ctx, new)


def _profile(orig: RopeParams, ctx: int, alpha: float, opts: Mapping[str, Any]) -> RopeParams:
    pts = opts["points"]
    if pts is None:  # the search's start: the ntk-parts ramp for alpha, read at a few points
        pts = ff.sample_points(ff.ntk_parts_factors(orig.rope_dim, orig.freq_base, orig.n_ctx_train, alpha))
    target = _factors_target(orig, ctx, ff.profile_factors(orig.rope_dim // 2, pts))
    return target.with_(attn_factor=orig.attn_factor * ff.check_attn_factor(opts["attn_factor"]))


_BETAS = (
    MethodOption("beta_fast", "--beta-fast", ff.DEFAULT_BETA_FAST,
                 "pairs turning more than this many times in L keep their frequency (YaRN's beta_fast)"),
    MethodOption("beta_slow", "--beta-slow", ff.DEFAULT_BETA_SLOW,
                 "pairs turning fewer times than this in L are divided by alpha (YaRN's beta_slow)"),
)
_POINTS = (
    MethodOption("points", "--factors", None,
                 "control points P1,...,PK: per-pair divisors from the highest to the lowest frequency, "
                 "never decreasing, interpolated in log space (default: the ntk-parts ramp for alpha "
                 f"at {ff.DEFAULT_POINTS} points; `tune --method factors` searches them)"),
    MethodOption("attn_factor", "--attn-factor", 1.0, ff.ATTN_FACTOR_HELP),
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ntk",
            "NTK-aware scaling: raise the rotary base so low frequencies interpolate, high ones extrapolate",
            "bloc97, 'NTK-Aware Scaled RoPE allows LLaMA models to have extended (8k+) context size "
            "without any fine-tuning' (r/LocalLLaMA, 2023)",
            "alpha: the scale in b' = b * alpha^(d/(d-2)); default s = N/L (often best set above s)",
            "rope.freq_base, context_length",
            _ntk,
            hf=HFSpelling(None, theta_from_target=True),
            hf_note="ntk: rope_theta {orig_base:g} -> {base:.6g}, max_position_embeddings {L} -> {ctx}",
        ),
        Method(
            "dynamic",
            "Dynamic NTK: in a GGUF, the base dynamic NTK would use at N tokens (llama.cpp has no dynamic mode); "
            "in an HF config, transformers' real dynamic scaling (rope_type dynamic)",
            "emozilla, 'Dynamically Scaled RoPE further increases performance of long context "
            "LLaMA with zero fine-tuning' (r/LocalLLaMA, 2023)",
            "alpha: the factor a in b * ((a*N/L) - (a-1))^(d/(d-2)); default s = N/L (HF's rope_scaling.factor)",
            "rope.freq_base, context_length (llama.cpp has no dynamic mode: the base is used at every length)",
            _dynamic,
            hf=HFSpelling("dynamic", max_pos_is_target=False),
            gguf_note="dynamic: llama.cpp has no dynamic NTK mode; the file gets the base dynamic NTK would "
            "use at {ctx} tokens ({base:.6g}), and the runtime will use it at EVERY length, short "
            "prompts included",
            hf_note="dynamic: max_position_embeddings stays at the original {L}; transformers raises the "
            "base only for sequences longer than that and does not re-rotate cached keys "
            "(transformers #25104); vLLM applies it statically for {runtime_len} tokens",
            hf_plan_note="transformers rescales the base only for sequences longer than "
            "max_position_embeddings ({L}) and does not re-rotate cached keys; vLLM computes it "
            "once, statically, for {runtime_len} tokens",
            gguf_plan_note="llama.cpp has no dynamic mode; this base applies at every length",
        ),
        Method(
            "linear",
            "Linear position interpolation: divide every position by alpha (default s = N/L)",
            "Chen et al., 'Extending Context Window of Large Language Models via Positional "
            "Interpolation' (arXiv:2306.15595, 2023)",
            "alpha: the factor positions are divided by (m -> m/alpha); default s = N/L",
            "rope.scaling.type=linear, rope.scaling.factor, context_length",
            _linear,
            hf=HFSpelling("linear", max_pos_is_target=False),
            hf_note="linear: max_position_embeddings stays at {L}; runtimes scale positions by "
            "1/{alpha:g} (vLLM allows {runtime_len} tokens)",
        ),
        Method(
            "yarn",
            "YaRN: NTK-by-parts interpolation plus attention temperature",
            "Peng et al., 'YaRN: Efficient Context Window Extension of Large Language Models' "
            "(arXiv:2309.00071, 2023)",
            "alpha: the scale factor; default s = N/L",
            "rope.scaling.type=yarn, rope.scaling.factor, rope.scaling.original_context_length, context_length",
            _yarn,
            hf=HFSpelling("yarn", writes_orig_max_pos=True),
            hf_plan_note="attention factor defaults to 0.1*ln(factor)+1 (not written)",
        ),
        Method(
            "ntk-parts",
            "NTK-by-parts: per-pair divisors ramping from 1 (high frequencies) to alpha (low ones), "
            "written as rope_freqs.weight; YaRN's frequencies without its attention temperature",
            "Peng et al., 'YaRN: Efficient Context Window Extension of Large Language Models' "
            "(arXiv:2309.00071, 2023), section 3.2; bloc97's 'NTK-by-parts' (2023)",
            "alpha: the divisor of the lowest frequencies; default s = N/L",
            "rope_freqs.weight (F32, d/2; multiplies any factors already there), context_length",
            _ntk_parts,
            options=_BETAS,
            writes_factors=True,
        ),
        Method(
            "factors",
            "Searched per-pair divisors: a monotone profile over a few control points (LongRoPE-style), "
            "written as rope_freqs.weight; `tune --method factors` finds it on your text",
            "Ding et al., 'LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens' "
            "(arXiv:2402.13753, 2024)",
            "alpha: the scale the starting profile (the ntk-parts ramp) is built for; default s = N/L",
            "rope_freqs.weight (F32, d/2; multiplies any factors already there), context_length",
            _profile,
            options=_POINTS,
            writes_factors=True,
        ),
        Method(
            "none",
            "No scaling: only raise the context length (the baseline; quality collapses past L)",
            "-",
            "unused",
            "context_length",
            _none,
            takes_alpha=False,
        ),
    )
}

DEFAULT_METHOD = "ntk"
FAR_SCALE = 16.0  # a plan beyond this many times the training context gets a warning


@dataclass(frozen=True)
class Plan:
    """What one method would do to one model: the inputs and the resulting parameters."""

    method: str
    ctx: int
    alpha: float
    alpha_given: bool
    original: RopeParams
    target: RopeParams
    options: tuple[tuple[str, Any], ...] = ()  # the method's options (name, value), defaults filled in

    def option(self, name: str) -> Any:
        """The value of the method option ``name``."""
        return dict(self.options)[name]

    @property
    def scale(self) -> float:
        """s = N / L."""
        return self.ctx / self.original.n_ctx_train

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the user should know: an extreme scale, what llama.cpp ignores (effects.plan_warnings)."""
        far = () if self.scale <= FAR_SCALE else (
            f"--ctx {self.ctx} is {self.scale:.3g}x the training context {self.original.n_ctx_train}: "
            f"extension without fine-tuning is measured to hold to about 2-4x here (docs/results.md); "
            f"expect quality to collapse long before {self.ctx} tokens, and memory for the KV cache "
            f"to grow with the context",)
        return far + effects.plan_warnings(self)


def get_method(name: str) -> Method:
    """The registered method called ``name`` (UsageError listing the choices otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}: expected one of {', '.join(METHODS)}"
        ) from None


def check_composable(orig: RopeParams, method: str, replace_scaling: bool = False) -> None:
    """Refuse to stack a method on top of a scaling the model already ships with. Per-pair
    factor methods compose with factors whose values were read (rope_freqs, or LongRoPE's long
    ones where that pair applies: the type longrope stays): the new ones multiply them."""
    if replace_scaling:
        return
    m = get_method(method)
    composes = m.writes_factors and bool(orig.freq_factors)
    if orig.has_freq_factors and not composes:
        raise UnsupportedModelError(
            f"the model already uses per-pair rope frequency factors (llama3's rope_freqs or LongRoPE's "
            f"rope_factors_long/short); {method} cannot compose with them: pass --replace-scaling "
            f"to apply {method} anyway"
            + ("" if m.writes_factors else ", or use --method ntk-parts or factors, which multiply them")
        )
    long_pair = composes and effects.composes_with_long(orig)
    if orig.freq_scale != 1.0 or (orig.scaling_type not in (ScalingType.NONE, ScalingType.LINEAR) and not long_pair):
        raise UnsupportedModelError(
            f"the model already uses {orig.scaling_type.value} rope scaling "
            f"(factor {orig.scaling_factor:g}); {method} cannot compose with it: pass "
            f"--replace-scaling to discard it and apply {method} to the unscaled model"
        )


def alpha_for(method: str, alpha: float | None) -> float | None:
    """``alpha`` if ``method`` takes one, else None: for rebuilding a recorded plan (records
    carry the alpha that was in effect, the default s for ``none``) or applying one alpha to
    every method."""
    return alpha if get_method(method).takes_alpha else None


def make_plan(
    orig: RopeParams,
    ctx: int,
    method: str = DEFAULT_METHOD,
    alpha: float | None = None,
    replace_scaling: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Plan:
    """Plan extending the ORIGINAL model ``orig`` to ``ctx`` tokens with ``method``;
    ``options``: the method's parameters besides alpha (:attr:`Method.options`)."""
    m = get_method(method)
    opts = m.resolve_options(options)
    if not isinstance(ctx, int) or ctx <= orig.n_ctx_train:
        raise UsageError(f"--ctx must be larger than the model's original context {orig.n_ctx_train}, found {ctx}")
    if ctx > 0xFFFFFFFF:
        raise UsageError(f"--ctx must fit in 32 bits, found {ctx}")
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 1.0):
        raise UsageError(f"--alpha must be a finite number >= 1, found {alpha}")
    if alpha is not None and not m.takes_alpha:
        raise UsageError(f"--alpha does not apply to method {m.name} (it only raises the context length); "
                         f"drop --alpha, or choose a method that scales")
    check_composable(orig, m.name, replace_scaling)
    base_orig = orig
    if replace_scaling:
        base_orig = orig.with_(scaling_type=ScalingType.NONE, scaling_factor=0.0, orig_ctx=0,
                               has_freq_factors=orig.has_freq_factors)
        if m.writes_factors:  # the new factors replace the file's
            base_orig = base_orig.with_(has_freq_factors=False, freq_factors=())
    a = alpha if alpha is not None else ctx / orig.n_ctx_train
    try:
        target = m.apply(base_orig, ctx, a, opts)
    except OverflowError:  # e.g. ntk with --alpha 1e300: b * alpha^(d/(d-2)) leaves the floats
        raise UsageError(f"--alpha {a:g} is too large for {m.name}: the result overflows") from None
    if not (math.isfinite(target.freq_base) and math.isfinite(target.scaling_factor)):  # b * a^x -> inf
        raise UsageError(f"--alpha {a:g} is too large for {m.name} with rotary base {base_orig.freq_base:g}: "
                         f"the result overflows")
    effects.check_method(orig, target, m.name, m.writes_factors)  # e.g. rope_freqs on qwen2: refused
    return Plan(m.name, ctx, a, alpha is not None, orig, target, tuple(opts.items()))
