"""The effect map (ropepatch.rope.effects): it covers every architecture ropepatch knows, its
rows hold the facts read from llama.cpp's sources, and make_plan refuses / warns from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropepatch.errors import UnsupportedModelError
from ropepatch.rope import effects as fx
from ropepatch.rope.arch import MROPE_ARCHS, NEOX_ARCHS, NO_ROPE_ARCHS, NORM_ARCHS, rope_layout
from ropepatch.rope.methods import METHODS, make_plan
from ropepatch.rope.params import RopeParams, ScalingType

ALL = sorted(NORM_ARCHS | NEOX_ARCHS | MROPE_ARCHS | NO_ROPE_ARCHS)
ROPE = [a for a in ALL if fx.effects_for(a).rope]
FACTOR_METHODS = [n for n, m in METHODS.items() if m.writes_factors]


def params(arch: str, base: float = 10000.0) -> RopeParams:
    return RopeParams(arch, 8192, 64, 64, base)


def test_the_table_covers_every_architecture_ropepatch_knows():
    assert len(ALL) > 140
    for a in ALL:
        e = fx.effects_for(a)
        assert e.known and e.arch == a and e.layout == rope_layout(a).value
        assert e.source.startswith("src/llama-model.cpp, src/models/" if a != "gptj" else "src/llama-model.cpp (no")
    # every name in the per-feature tables is a known architecture (no typo hides a row)
    named = (fx.FREQS_APPLIED | fx.FREQS_IGNORED | set(fx.FREQS_SPECIAL) | fx.LONGROPE_TYPED | fx.LONGROPE_ALWAYS
             | fx.LONGROPE_IGNORED | set(fx.SWA) | fx.SECTIONS | set(fx.YARN_KEYS) | fx.ALPHA_APPLIED
             | fx.BASE_IGNORED | fx.NO_ROPE_GRAPH | set(fx.NOTES))
    assert named <= set(ALL), named - set(ALL)
    tables = [fx.FREQS_APPLIED, fx.FREQS_IGNORED, set(fx.FREQS_SPECIAL)]
    assert not (tables[0] & tables[1] or tables[0] & tables[2] or tables[1] & tables[2])
    assert fx.LLAMA_CPP_COMMIT in fx.__doc__


def test_an_unknown_architecture_gets_an_explicit_unknown_row_and_no_refusal():
    e = fx.effects_for("brand-new-arch")
    assert not e.known and e.rope_freqs == "unknown" and "unknown" in e.notes[0]
    assert "effects unknown" in e.summary
    assert e.to_dict()["known"] is False and e.to_dict()["common_keys"] == []
    for m in METHODS:
        plan = make_plan(params("brand-new-arch"), 16384, m)
        assert fx.plan_warnings(plan) == () and fx.plan_problems(plan, METHODS[m].writes_factors) == ()


@pytest.mark.parametrize("arch", ALL)
def test_every_row_is_consistent_and_refuses_exactly_what_it_cannot_apply(arch):
    e = fx.effects_for(arch)
    d = e.to_dict()
    assert d["arch"] == arch and d["llama_cpp"] == fx.SOURCE
    assert d["common_keys"] == (list(fx.COMMON_KEYS) if e.rope else [])
    assert fx.reads_freq_factors(arch) == (e.rope_freqs == "applied")
    assert (arch in NO_ROPE_ARCHS or arch in fx.NO_ROPE_GRAPH) == (not e.rope)
    assert e.summary.startswith(f"{arch}: ")
    if e.swa_base == "none":
        assert e.swa_scaled
    for m in FACTOR_METHODS:
        why = fx.factor_refusal(arch, m)
        assert (why is None) == (e.rope_freqs == "applied")
        if why:
            assert f"'{arch}'" in why and "--method yarn or ntk" in why or "ignores every" in why
            with pytest.raises(UnsupportedModelError) as ei:
                make_plan(params(arch), 16384, m)
            assert str(ei.value) == why and "\n" not in why
        else:
            assert make_plan(params(arch), 16384, m).target.freq_factors


@pytest.mark.parametrize(
    "arch, field, value",
    [  # spot checks against llama.cpp 0c1e57098's sources (src/models/<arch>.cpp)
        ("llama", "rope_freqs", "applied"), ("mistral3", "rope_freqs", "applied"),
        ("granite", "rope_freqs", "applied"), ("minicpm", "rope_freqs", "applied"),
        ("qwen2", "rope_freqs", "absent"), ("qwen3", "rope_freqs", "absent"), ("gemma3", "rope_freqs", "absent"),
        ("phi3", "rope_freqs", "absent"), ("falcon-h1", "rope_freqs", "ignored"), ("gemma4", "rope_freqs", "special"),
        ("llama", "longrope", "with-type-longrope"), ("phi3", "longrope", "always"), ("qwen2", "longrope", "absent"),
        ("gemma3", "swa_base", "own"), ("gemma2", "swa_base", "own|main"), ("olmo2", "swa_base", "main"),
        ("dots3note", "swa_base", "own!"), ("qwen2", "swa_base", "none"),
        ("gemma3", "swa_scaled", False), ("gemma2", "swa_scaled", True), ("laguna", "swa_scaled", False),
        ("grok", "yarn_keys", ("yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow")),
        ("mistral3", "yarn_keys", ("yarn_beta_fast", "yarn_beta_slow", "yarn_log_multiplier")),
        ("deepseek2", "yarn_keys", ("yarn_log_multiplier",)), ("llama", "yarn_keys", ()),
        ("hunyuan_vl", "alpha", True), ("llama", "alpha", False),
        ("qwen2vl", "sections", True), ("glm4", "sections", True), ("qwen2", "sections", False),
        ("cogvlm", "base_and_scaling", False), ("llama", "base_and_scaling", True),
        ("starcoder", "rope", False), ("mamba", "rope", False),
    ],
)
def test_rows_hold_the_facts_read_from_the_sources(arch, field, value):
    assert getattr(fx.effects_for(arch), field) == value


def test_the_qwen2_refusal_is_one_line_naming_arch_what_it_supports_and_what_to_do():
    with pytest.raises(UnsupportedModelError) as ei:
        make_plan(params("qwen2"), 16384, "ntk-parts")
    msg = str(ei.value)
    assert "'qwen2'" in msg and "rope_freqs.weight" in msg and "wrong number of tensors" in msg
    assert "llama" in msg and "use --method yarn or ntk" in msg and "\n" not in msg
    assert make_plan(params("llama"), 16384, "ntk-parts").target.has_freq_factors  # llama takes it


def _effect_warnings(arch: str, method: str) -> tuple[str, ...]:
    plan = make_plan(params(arch), 16384, method)
    w = fx.plan_warnings(plan)
    assert set(w) <= set(plan.warnings)  # Plan.warnings carries them
    return w


def test_sliding_window_base_warnings_only_where_the_sources_make_them_true():
    w = _effect_warnings("gemma3", "ntk")
    assert len(w) == 1 and "gemma3.rope.freq_base_swa" in w[0] and "only the global layers" in w[0]
    assert "default 10000" in w[0]
    assert "required" in _effect_warnings("dots3note", "ntk")[0]
    # gemma2's SWA layers take rope.freq_base unless the file sets freq_base_swa: not provably ignored
    assert _effect_warnings("gemma2", "ntk") == ()
    assert _effect_warnings("olmo2", "ntk") == ()  # olmo2's SWA layers use the main base
    for arch in ("llama", "qwen2", "qwen2vl", "gemma3"):
        for m in ("none", "ntk-parts") if arch == "llama" else ("none",):
            assert _effect_warnings(arch, m) == ()


def test_scaling_factor_warnings_for_unscaled_sliding_window_layers():
    for arch in ("gemma3", "olmo2", "laguna", "mellum"):
        for m in ("linear", "yarn"):
            w = _effect_warnings(arch, m)
            assert any("run unscaled" in x and "factor 2" in x for x in w), (arch, m, w)
    for arch in ("gemma2", "llama", "exaone4"):  # the factor reaches every rotary layer
        assert _effect_warnings(arch, "yarn") == ()
    assert len(_effect_warnings("gemma3", "ntk")) == 1  # base only: no factor warning


def test_an_architecture_that_ignores_base_and_scaling_is_warned_for_every_scaling_method():
    for m in ("ntk", "dynamic", "linear", "yarn"):
        w = _effect_warnings("cogvlm", m)
        assert len(w) == 1 and "ignored" in w[0] and "context_length" in w[0]
    assert _effect_warnings("cogvlm", "none") == ()


def _doc_cells(e: fx.ArchEffects) -> list[str]:
    if not e.rope:
        return [e.arch, e.layout, "no RoPE", "-", "-", "-", "-", "-", "-"]
    swa = "-" if e.swa_base == "none" else f"{e.swa_base}, {'scaled' if e.swa_scaled else 'unscaled'}"
    return [e.arch, e.layout, "yes" if e.base_and_scaling else "**ignored**", e.rope_freqs,
            e.longrope if e.longrope != "absent" else "-", swa.replace("own|main", "own or main"),
            ", ".join(k.replace("yarn_", "") for k in e.yarn_keys) or "-", "yes" if e.alpha else "-",
            "yes" if e.sections else "-"]


def test_docs_effects_md_shows_exactly_the_table_and_its_source_commit():
    text = (Path(__file__).resolve().parents[2] / "docs" / "effects.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| arch ")]
    assert rows == ["| " + " | ".join(_doc_cells(fx.effects_for(a))) + " |" for a in ALL]
    assert fx.LLAMA_CPP_COMMIT in text and "llama-cpp-python 0.3.36" in text


def _longrope(arch: str) -> RopeParams:
    return params(arch).with_(scaling_type=ScalingType.LONGROPE, scaling_factor=4.0, orig_ctx=4096,
                              has_freq_factors=True)


def test_replacing_longrope_is_refused_where_long_short_exist_only_under_type_longrope():
    for arch in ("llama", "mistral3", "granite"):
        with pytest.raises(UnsupportedModelError, match=r"rope_factors_long/short only while rope.scaling.type is "
                                                        r"longrope.*wrong number of tensors.*keep the file's"):
            make_plan(_longrope(arch), 16384, "yarn", replace_scaling=True)
    # a longrope type without the tensors, or with read rope_freqs values, is not this case
    make_plan(_longrope("llama").with_(has_freq_factors=False), 16384, "yarn", replace_scaling=True)
    q = _longrope("qwen2")
    assert fx.longrope_refusal(q, q.with_(scaling_type=ScalingType.NONE)) is None


def _long_read(arch: str, n: int) -> RopeParams:
    """A LongRoPE file whose long factors were read (n of them), no scaling factor."""
    return _longrope(arch).with_(scaling_factor=0.0, freq_factors=tuple(1.0 + i / 4 for i in range(n)))


@pytest.mark.parametrize("arch", ["llama", "mistral3", "phi3", "phimoe", "minicpm3"])
def test_factor_methods_multiply_longropes_long_factors_and_keep_the_pair(arch):
    """Where the long/short pair applies and the long values were read, ntk-parts/factors compose
    with them: the type longrope stays (llama: the pair exists only under it) and the original
    context stays stated, past which llama.cpp picks the long factors."""
    o = _long_read(arch, params(arch).rope_dim // 2)
    for method in ("ntk-parts", "factors"):
        p = make_plan(o, 16384, method)
        assert p.target.scaling_type == ScalingType.LONGROPE and p.target.orig_ctx == 4096, method
        assert len(p.target.freq_factors) == len(o.freq_factors) and p.target.freq_factors != o.freq_factors
        assert fx.plan_problems(p, True) == () and fx.plan_warnings(p) == ()
    for method in ("ntk", "yarn"):  # the others still do not compose: the long factors would stay
        with pytest.raises(UnsupportedModelError, match="cannot compose"):
            make_plan(o, 16384, method)
    with pytest.raises(UnsupportedModelError, match="already uses longrope rope scaling"):  # a factor as well
        make_plan(o.with_(scaling_factor=4.0), 16384, "ntk-parts")


def test_longrope_pair_without_read_values_or_on_other_archs_is_refused():
    with pytest.raises(UnsupportedModelError, match="rope_factors_long/short: ropepatch multiplies the long"):
        make_plan(_longrope("phi3").with_(scaling_factor=0.0), 16384, "ntk-parts", replace_scaling=True)
    with pytest.raises(UnsupportedModelError, match="cannot compose"):  # llama, values not read
        make_plan(_longrope("llama").with_(scaling_factor=0.0), 16384, "ntk-parts")
    with pytest.raises(UnsupportedModelError):  # qwen2 creates no long/short pair
        make_plan(_long_read("qwen2", 32), 16384, "ntk-parts")
    assert fx.longrope_applies("llama", "longrope") and not fx.longrope_applies("llama", "yarn")
    assert fx.longrope_applies("phi3", "none") and not fx.longrope_applies("qwen2", "longrope")
    assert not fx.longrope_applies("step35", "longrope")  # its rope_freqs has its own shape (special)


def test_phi3_long_short_factors_stay_applied_after_replace_scaling_and_that_is_warned():
    plan = make_plan(_longrope("phi3"), 16384, "yarn", replace_scaling=True)
    w = fx.plan_warnings(plan)
    assert len(w) == 1 and "rope_factors_long/short whatever rope.scaling.type says" in w[0] and w[0] in plan.warnings
    assert fx.plan_warnings(make_plan(params("phi3"), 16384, "yarn")) == ()


def test_longrope_architectures_are_told_where_their_factors_live():
    """phi3-style models carry per-pair factors, but as LongRoPE's long/short pair: the refusal
    says so instead of implying the architecture has none; qwen2's does not mention LongRoPE."""
    phi3 = fx.factor_refusal("phi3", "ntk-parts")
    assert "rope_factors_long/short: ropepatch multiplies the long ones of a file that has them" in phi3
    assert "\n" not in phi3
    assert "LongRoPE" not in fx.factor_refusal("qwen2", "ntk-parts")
    assert fx.factor_refusal("llama", "ntk-parts") is None
