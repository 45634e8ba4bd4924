"""``ropepatch validate`` on files with per-pair frequency factors (rope_freqs.weight), against
the real runtime (llama-cpp-python), no mocks.

* Files patched with ntk-parts and factors (tiny llama, NORM, F32 and Q8_0) pass checks a-d: the
  file's factors are the plan's (a), every ROPE op divides by exactly those (its src[2], b), and
  the references -- driven by the PLANNED factors, not the captured ones -- reproduce the
  runtime's rotation (c) and logits (d).
* NEOX: tiny-exaone-f32 (the tiny-qwen2 tensors plus llama3-style factors) as it ships, and
  patched with ntk-parts (the new factors multiply its own), passes a-d.
* A file written by an independent writer (gguf-py's GGUFWriter) with a rope_freqs tensor passes.
* Negative controls: a factor changed in the file behind ropepatch's back fails a, b and c with
  the pair named; a one-ulp change still fails a and b (exact float32); expected factors that
  differ from what the runtime uses fail b-d; factors expected on a file without them fail b.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import FIXTURES, require

require("gguf")
require("llama_cpp")

from ropepatch.check.factors import compare_factors, file_factors  # noqa: E402
from ropepatch.check.reference_forward import forward, load_model  # noqa: E402
from ropepatch.check.report import summary  # noqa: E402
from ropepatch.check.validate import FAILED, PASSED, format_report, validate  # noqa: E402
from ropepatch.formats.gguf.header import read_header  # noqa: E402
from ropepatch.formats.gguf.tensors import ROPE_FREQS as FACTOR_TENSOR  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf, patch_gguf  # noqa: E402
from ropepatch.rope.methods import make_plan  # noqa: E402

CTX = 1024  # 8 x the fixtures' training context
L = 128
EXAONE = "tiny-exaone-f32.gguf"
# tiny-exaone's rope_freqs: llama3-style (factor 4, low 1, high 4, L 128), as tools/make_fixtures.py writes it
LLAMA3_FF = (1.0, 1.0, float(np.float32(1.9634954)), 4.0, 4.0, 4.0, 4.0, 4.0)

METHODS = [("ntk-parts", None), ("factors", None), ("factors", {"points": (1.0, 1.5, 3.0, 8.0)})]
METHOD_IDS = ["ntk-parts", "factors-default", "factors-points"]


def statuses(r) -> dict[str, str]:
    return {c.id: c.status for c in r.checks}


def patched(copy_fixture, name: str, method: str, options=None, ctx: int = CTX) -> str:
    path = copy_fixture(name, f"{method}-{name}")
    patch_gguf(path, ctx, method, options=options)
    return path


def with_factors(src: str, dst: str, factors) -> str:
    """An independent writer: gguf-py's GGUFReader/GGUFWriter copy ``src`` to ``dst`` with
    every key and tensor, plus a rope_freqs.weight F32 tensor holding ``factors`` (first, as
    convert_hf_to_gguf.py puts it)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), f.types[0])
    w.add_tensor(FACTOR_TENSOR, np.asarray(factors, dtype=np.float32))
    for t in r.tensors:
        quantized = int(t.tensor_type) not in (0, 1)
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=t.data.shape if quantized else None,
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def set_factor(path: str, pair: int, value: float) -> None:
    """Overwrite one value of the file's rope_freqs.weight in place, behind ropepatch's back."""
    h = read_header(path)
    t = next(t for t in h.tensors if t.name == FACTOR_TENSOR)
    with open(path, "r+b") as f:
        f.seek(h.data_offset + t.offset + 4 * pair)
        f.write(struct.pack("<f", value))
    assert file_factors(path, read_header(path))[0][pair] == np.float32(value)


def assert_factor_figures(r, want) -> None:
    """Checks a-d report the factors: the file's = want (a), every ROPE op's src[2] = want (b),
    c and d used them."""
    want = [float(v) for v in want]
    a = r.check("a").figures["freq_factors"]
    assert a["file"] == want and a["expected"] == want and a["same"] is True and a["max_rel_diff"] == 0.0
    b = r.check("b").figures["freq_factors"]
    assert b["expected"] == want and b["max_rel_diff"] == 0.0 and b["judged"] is True
    assert set(b["runtime"]) == {"Qcur-0", "Kcur-0"}
    for got in b["runtime"].values():
        assert got == want
    assert r.check("d").figures["freq_factors"] == len(want)


# ---- patched files pass ------------------------------------------------------------------------


@pytest.mark.parametrize("method, options", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf"])
def test_factor_methods_pass_every_check(copy_fixture, name, method, options):
    path = patched(copy_fixture, name, method, options)
    r = validate(path)
    assert statuses(r) == {"a": PASSED, "b": PASSED, "c": PASSED, "d": PASSED}, format_report(r)
    info = inspect_gguf(path)
    plan = make_plan(info.original, CTX, method, options=options)
    assert r.expected_source == "plan" and r.check("a").figures["plan_consistent"] is True
    assert len(plan.target.freq_factors) == 8 and plan.target.freq_factors != (1.0,) * 8
    assert_factor_figures(r, plan.target.freq_factors)
    c = r.check("c").figures
    assert c["positions"] == [[L - 8, L + 7], [CTX - 16, CTX - 1]] and c["n_captures"] == 4
    assert c["freq_factors"] == "the recorded plan's (8)"
    for mode in ("f32", "f64"):
        assert c[mode]["max_over_tol"] <= 1.0
    d = r.check("d").figures
    assert d["positions"] == [CTX - 320, CTX - 1] and d["top1_agreement"] >= 0.98
    text = format_report(r)
    assert "rope_freqs.weight: 8 factors = the recorded plan's" in text
    assert "freq factors = expected (8, max rel diff 0)" in text


def test_independent_writer_file_passes(copy_fixture, tmp_path):
    ff = (1.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    path = with_factors(str(FIXTURES / "tiny-llama-f32.gguf"), str(tmp_path / "ff.gguf"), ff)
    assert inspect_gguf(path).current.freq_factors == ff  # ropepatch's reader agrees with gguf-py's writer
    r = validate(path, ctx=L)
    assert r.passed and r.expected_source == "file", format_report(r)
    assert_factor_figures(r, ff)


# ---- NEOX ----------------------------------------------------------------------------------------


def test_neox_fixture_with_factors_passes(copy_fixture):
    path = copy_fixture(EXAONE)
    assert inspect_gguf(path).current.freq_factors == LLAMA3_FF
    r = validate(path, ctx=L, positions=list(range(L - 32, L)))
    assert statuses(r) == {"a": PASSED, "b": PASSED, "c": PASSED, "d": PASSED}, format_report(r)
    assert r.check("a").figures["rope_type"]["runtime"] == "neox"
    assert r.check("b").figures["expected"]["mode"] == 2
    assert_factor_figures(r, LLAMA3_FF)
    assert r.check("c").figures["freq_factors"] == "the file's (8)"


def test_neox_fixture_patched_with_ntk_parts_composes_and_passes(copy_fixture):
    path = patched(copy_fixture, EXAONE, "ntk-parts")
    info = inspect_gguf(path)
    plan = make_plan(info.original, CTX, "ntk-parts")
    composed = plan.target.freq_factors
    assert info.original.freq_factors == LLAMA3_FF
    assert composed == tuple(float(np.float32(a * b)) for a, b in
                             zip(LLAMA3_FF, make_plan(info.original.with_(freq_factors=(), has_freq_factors=False),
                                                      CTX, "ntk-parts").target.freq_factors))
    r = validate(path)
    assert statuses(r) == {"a": PASSED, "b": PASSED, "c": PASSED, "d": PASSED}, format_report(r)
    assert_factor_figures(r, composed)


def test_neox_reference_forward_with_factors_is_qwen2_with_those_factors():
    """tiny-exaone is tiny-qwen2 plus rope_freqs: the reference forward of one with its file's
    factors is the other's with the same factors passed in, and differs without them."""
    ex, qw = load_model(FIXTURES / EXAONE), load_model(FIXTURES / "tiny-qwen2-f32.gguf")
    toks, start = np.arange(3, 67), 900
    a = forward(ex, toks, start)
    b = forward(qw, toks, start, freq_factors=LLAMA3_FF)
    np.testing.assert_array_equal(a, b)
    assert np.abs(forward(ex, toks, start, freq_factors=None) - a).max() > 1.0


# ---- negative controls ---------------------------------------------------------------------------


def test_factor_changed_behind_ropepatchs_back_fails_a_b_c(copy_fixture):
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "ntk-parts")
    planned = inspect_gguf(path).current.freq_factors
    set_factor(path, 5, planned[5] * 0.75)
    r = validate(path)
    st = statuses(r)
    assert st["a"] == st["b"] == st["c"] == FAILED, format_report(r)
    a, b, c = (r.check(x).reason for x in "abc")
    assert "changed behind ropepatch's back: rope_freqs.weight: 1 of 8 factors differ (pair 5: the file 6," in a
    assert "the recorded plan 8" in a
    assert "freq factors (src[2]): 1 of 8 factors differ (pair 5: runtime 6, plan 8" in b
    assert "the runtime follows the file; the file differs from the recorded plan" in b
    assert "reference rotary with the recorded plan's params misses the runtime's output" in c
    assert "with the runtime's own op params and factors it matches" in c
    assert r.check("a").figures["plan_consistent"] is False
    assert r.check("b").figures["freq_factors"]["max_rel_diff"] == pytest.approx(0.25)


def test_one_ulp_factor_change_fails_a_and_b_exactly(copy_fixture):
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "factors")
    planned = inspect_gguf(path).current.freq_factors
    bumped = float(np.nextafter(np.float32(planned[3]), np.float32(np.inf)))
    set_factor(path, 3, bumped)
    r = validate(path)
    assert statuses(r)["a"] == FAILED and statuses(r)["b"] == FAILED, format_report(r)
    assert "1 of 8 factors differ (pair 3" in r.check("b").reason
    rel = r.check("b").figures["freq_factors"]["max_rel_diff"]
    assert 0 < rel <= np.finfo(np.float32).eps


def test_expected_factors_differ_from_the_runtimes_fail_b_c_d(copy_fixture):
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "ntk-parts")
    runtime_ff = inspect_gguf(path).current.freq_factors
    other = make_plan(inspect_gguf(path).original, 2 * CTX, "ntk-parts").target.freq_factors
    assert compare_factors(other, runtime_ff).problem
    r = validate(path, expect={"freq_factors": list(other)})
    assert r.expected_source == "expected"
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": FAILED, "d": FAILED}, format_report(r)
    assert "freq factors (src[2]): " in r.check("b").reason
    assert "the runtime follows the file; the file differs from the caller's expectation" in r.check("b").reason
    assert "runtime logits differ from the reference forward with the expected RoPE" in r.check("d").reason


def test_file_without_factors_shows_none_and_fails_when_factors_are_expected(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    r = validate(path, ctx=L)
    assert r.passed, format_report(r)
    b = r.check("b").figures["freq_factors"]
    assert b["expected"] == [] and set(b["runtime"].values()) == {None}  # src[2] NULL
    assert "freq_factors" not in r.check("a").figures  # no rope_freqs line where neither side has any
    r = validate(path, ctx=L, expect={"freq_factors": list(LLAMA3_FF)})
    assert statuses(r)["b"] == FAILED and statuses(r)["c"] == FAILED, format_report(r)
    assert "runtime has none, expected 8 factors" in r.check("b").reason
    assert "the file has none, the caller's expectation 8 factors" in r.check("a").reason


def test_neox_file_with_factors_fails_when_none_are_expected(copy_fixture):
    path = copy_fixture(EXAONE)
    r = validate(path, ctx=L, expect={"freq_factors": []})
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": FAILED, "d": FAILED}, format_report(r)
    assert "runtime has 8 factors, expected none" in r.check("b").reason
    assert "reference rotary with the caller's expectation's params misses" in r.check("c").reason


def test_report_json_carries_the_factors(copy_fixture):
    import json

    r = validate(patched(copy_fixture, "tiny-llama-q8_0.gguf", "ntk-parts"), reference_forward=False)
    d = json.loads(r.to_json())
    assert d["expected"]["freq_factors"] == d["checks"][1]["figures"]["freq_factors"]["expected"]
    assert len(d["expected"]["freq_factors"]) == 8


def test_factors_ropepatch_does_not_read_are_reported_not_judged(copy_fixture):
    """longrope files (rope_factors_long/short, values not read): the expectation's factors are
    unknown (None); b reports the runtime's src[2] without judging it, c uses the runtime's own.
    Driven here with the real captures of tiny-exaone."""
    from ropepatch.check.applied import capture_ropes, check_applied
    from ropepatch.check.factors import factors_of
    from ropepatch.check.ggml_args import ggml_rope_args
    from ropepatch.check.rotary import check_rotary

    cur = inspect_gguf(FIXTURES / EXAONE).current
    assert factors_of(cur) == LLAMA3_FF and factors_of(cur.with_(freq_factors=())) is None
    assert factors_of(cur.with_(has_freq_factors=False, freq_factors=())) == ()
    op = ggml_rope_args(cur)
    runs = [(100, 115)]
    got = capture_ropes(str(FIXTURES / EXAONE), runs, n_vocab=260, layers=(0,), n_ctx=None, ctx=L,
                        long_short=False, gpu_layers=0, n_threads=1, file_ctx_train=L)
    assert not got.error and len(got.captures) == 2
    b = check_applied(got.captures, op, op, "file", got.seconds, 1, want_ff=None, file_ff=None)
    assert b.passed and b.figures["freq_factors"]["judged"] is False
    assert b.figures["freq_factors"]["runtime"]["Qcur-0"] == list(LLAMA3_FF)
    assert "the runtime's own (not read by ropepatch)" in summary(b)
    c = check_rotary(got.captures, op, "file", False, runs, want_ff=None)
    assert c.passed and c.figures["freq_factors"] == "runtime's own (not read by ropepatch)"
    # judged against none, the same captures fail b and c
    assert not check_applied(got.captures, op, op, "file", 0.0, 1, want_ff=()).passed
    assert not check_rotary(got.captures, op, "file", False, runs, want_ff=()).passed
