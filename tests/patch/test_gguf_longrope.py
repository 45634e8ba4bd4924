"""Per-pair factor methods on a LongRoPE file (tiny-llama-longrope-f32: llama with
rope.scaling.type longrope, original_context_length 32, rope_factors_long/short): the new
factors multiply the LONG ones in place (llama.cpp applies them past the original context),
the short ones and the type stay, revert restores the original bytes (same sha256), and the
real llama-cpp-python applies the composed factors (validate's checks a-d)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import FIXTURES, require, sha256
from test_gguf_factors import _set_string

from ropepatch.check.report import format_report
from ropepatch.check.validate import validate
from ropepatch.errors import FormatError, UnsupportedModelError
from ropepatch.formats.gguf.header import read_header
from ropepatch.formats.gguf.tensors import ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS, find_tensor
from ropepatch.patch import gguf as gp
from ropepatch.rope import factors as ff
from ropepatch.rope.params import ScalingType

llama_cpp = require("llama_cpp")
gguf = require("gguf")

FIXTURE = "tiny-llama-longrope-f32.gguf"
CTX = 512  # 4x the file's context_length 128 (itself 4x the original 32)
# the fixture's factors as tools/make_fixtures.py writes them: top ** ((i / 7) ** 1.5)
LONG = tuple(float(np.float32(4.0 ** ((i / 7) ** 1.5))) for i in range(8))
SHORT = tuple(float(np.float32(1.25 ** ((i / 7) ** 1.5))) for i in range(8))


def tensor_values(path, name) -> tuple[float, ...]:
    """A tensor's values as gguf-py's own reader sees them (an independent parser)."""
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    return tuple(float(x) for x in t.data)


def n_ctx_train(path) -> int:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        return llama_cpp.llama_model_n_ctx_train(llm.model)
    finally:
        llm.close()


def test_the_fixture_is_read_as_longrope_with_its_long_factors(copy_fixture):
    path = copy_fixture(FIXTURE)
    assert tensor_values(path, ROPE_FACTORS_LONG) == LONG and tensor_values(path, ROPE_FACTORS_SHORT) == SHORT
    cur = gp.inspect_gguf(path).current
    assert cur.scaling_type == ScalingType.LONGROPE and cur.orig_ctx == 32 and cur.freq_scale == 1.0
    assert cur.freq_factors == LONG and find_tensor(read_header(path), ROPE_FREQS) is None
    assert n_ctx_train(path) == 128
    for ctx in (None, 16):  # as it ships; and validated below its original ctx: the probes still run
        r = validate(path, ctx=ctx)  # past it, where the runtime applies the long factors (a patch's)
        assert r.passed, format_report(r)
        assert r.check("b").figures["freq_factors"]["expected"] == list(LONG)


def test_ntk_parts_multiplies_the_long_factors_in_place_and_revert_restores_them(copy_fixture):
    path = copy_fixture(FIXTURE)
    before = sha256(path)
    res = gp.patch_gguf(path, CTX, "ntk-parts")
    new = ff.ntk_parts_factors(16, 10000.0, 128, CTX / 128)
    composed = tuple(ff.f32(a * b) for a, b in zip(LONG, new))
    assert res.tensor_change == f"{ROPE_FACTORS_LONG} data changed (8 F32 factors, 32 bytes)"
    assert tensor_values(path, ROPE_FACTORS_LONG) == composed == res.plan.target.freq_factors
    assert tensor_values(path, ROPE_FACTORS_SHORT) == SHORT  # never touched
    h = read_header(path)
    assert find_tensor(h, ROPE_FREQS) is None and len(h.tensors) == len(read_header(FIXTURES / FIXTURE).tensors)
    assert h.get("llama.rope.scaling.type") == "longrope" and h.get("llama.rope.scaling.original_context_length") == 32
    assert h.get("llama.rope.scaling.factor") is None  # the pair needs no factor: none is written
    info = gp.inspect_gguf(path)
    assert info.original.freq_factors == LONG and info.current.freq_factors == composed
    rec = info.provenance.record.rope_freqs
    assert rec.tensor == ROPE_FACTORS_LONG and rec.raw == struct.pack("<8f", *LONG)
    assert json.loads(h.get("ropepatch.original"))["rope_freqs"] == {"raw": rec.raw.hex(), "tensor": ROPE_FACTORS_LONG}
    assert n_ctx_train(path) == CTX
    again = gp.patch_gguf(path, CTX, "factors", options={"points": (1.0, 2.0, 3.0)})
    assert again.mode == "in-place" and 0 < again.data_bytes <= 32  # never compounds: LONG times the new ones
    assert tensor_values(path, ROPE_FACTORS_LONG) == tuple(
        ff.f32(a * b) for a, b in zip(LONG, ff.profile_factors(8, (1.0, 2.0, 3.0))))
    rv = gp.revert_gguf(path)
    assert rv.tensor_change == f"{ROPE_FACTORS_LONG} data changed (8 F32 factors, 32 bytes)"
    assert tensor_values(path, ROPE_FACTORS_LONG) == LONG
    assert sha256(path) == before


@pytest.mark.parametrize("method, options", [("ntk-parts", None), ("factors", {"points": (1.0, 1.5, 4.0),
                                                                                 "attn_factor": 1.1})])
def test_the_runtime_applies_the_composed_long_factors(copy_fixture, method, options):
    """validate a-d: the runtime's ROPE ops divide by the composed long factors past the original
    context (b compares them exactly), and its rotary and logits match the NumPy references."""
    path = copy_fixture(FIXTURE)
    res = gp.patch_gguf(path, CTX, method, options=options)
    r = validate(path)
    assert r.passed and r.expected_source == "plan", format_report(r)
    b = r.check("b").figures
    assert b["freq_factors"]["expected"] == list(res.plan.target.freq_factors)
    assert all(got == list(res.plan.target.freq_factors) for got in b["freq_factors"]["runtime"].values())
    assert b["expected"]["n_ctx_orig"] == 32
    assert "rope_factors_long.weight: 8 factors = the recorded plan's" in format_report(r)


def test_other_methods_and_replacing_the_type_are_refused_with_nothing_written(copy_fixture):
    path = copy_fixture(FIXTURE)
    before = sha256(path)
    with pytest.raises(UnsupportedModelError, match="cannot compose"):
        gp.patch_gguf(path, CTX, "ntk")
    with pytest.raises(UnsupportedModelError, match="only while rope.scaling.type is longrope"):
        gp.patch_gguf(path, CTX, "yarn", replace_scaling=True)
    with pytest.raises(UnsupportedModelError, match="only while rope.scaling.type is longrope"):
        gp.patch_gguf(path, CTX, "ntk-parts", replace_scaling=True)  # would drop the type, and the pair
    assert sha256(path) == before


@pytest.mark.parametrize("field", [
    lambda raw: {"raw": raw},  # says rope_freqs.weight, which this file has none of
    lambda raw: {"raw": raw, "tensor": ROPE_FACTORS_SHORT},  # ropepatch never writes the short ones
    lambda raw: {"raw": raw, "tensor": "token_embd.weight"},
    lambda raw: {"raw": raw, "tensor": ROPE_FACTORS_LONG, "data_length": 4},
])
def test_a_forged_tensor_name_in_the_record_is_refused_in_one_line(copy_fixture, field):
    path = copy_fixture(FIXTURE)
    gp.patch_gguf(path, CTX, "ntk-parts")
    text = read_header(path).get("ropepatch.original")
    d = json.loads(text)
    d["rope_freqs"] = field(d["rope_freqs"]["raw"])
    new = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert len(new) <= len(text)
    _set_string(path, "ropepatch.original", new.ljust(len(text)))
    before = sha256(path)
    for fn in (gp.inspect_gguf, gp.revert_gguf, lambda p: gp.patch_gguf(p, CTX, "ntk-parts", alpha=8.0)):
        with pytest.raises(FormatError) as e:
            fn(path)
        assert "\n" not in str(e.value) and "provenance is damaged" in str(e.value)
    assert sha256(path) == before


@pytest.mark.parametrize("fixture", [FIXTURE, "tiny-exaone-f32.gguf"])
def test_plan_all_lists_what_does_not_compose_and_plans_the_factor_methods(cli, fixture):
    """plan --method all on a file with factors (LongRoPE's, llama3's): the factor methods are
    planned (named by the tensor they change), the others listed as not applicable with why."""
    r = cli("plan", str(FIXTURES / fixture), "--ctx", "512", "--method", "all", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["plans"]) == {"ntk-parts", "factors"}
    assert set(data["not_applicable"]) == {"none", "ntk", "dynamic", "linear", "yarn"}
    assert all("cannot compose" in why for why in data["not_applicable"].values())
    text = cli("plan", str(FIXTURES / fixture), "--ctx", "512", "--method", "all").stdout
    tensor = ROPE_FACTORS_LONG if fixture == FIXTURE else ROPE_FREQS
    assert f"  {tensor}: 8 per-pair divisors 1..16" in text
    assert "not applicable: ntk, dynamic, linear, yarn, none (they do not compose" in text
    one = cli("plan", str(FIXTURES / fixture), "--ctx", "512", "--method", "ntk")
    assert one.returncode != 0 and one.stderr.count("\n") == 1 and "cannot compose" in one.stderr


def test_inspect_names_the_longrope_pair(cli):
    r = cli("inspect", str(FIXTURES / FIXTURE))
    assert r.returncode == 0, r.stderr
    assert ("scaling longrope (factor 0, original ctx 32), per-pair frequency factors (LongRoPE's "
            "rope_factors_long/short: long past the original ctx)") in r.stdout


def test_kills_while_changing_the_long_factors_leave_the_original_or_a_revertable_file(tmp_path):
    """kill -9 after every write step: the first patch (a rewrite), the re-patch (header run,
    then one pwrite of the long factors) and revert: the file is the original, the complete
    result, or (between the two in-place writes) new keys with the old factors, which reverts
    and is finished by running the command again."""
    import sys

    sys.path.insert(0, str(FIXTURES.parent / "tools"))
    import crash_harness as ch

    c, rows = ch.kill_matrix([ch.LONGROPE_FIXTURE], ch.LONGROPE_SCENARIOS, str(tmp_path), jobs=2, log=None)
    assert c.problems == [] and c.corrupt == 0 and c.other_valid == 0 and c.retry_failed == 0
    first, repatch, revert = rows
    assert first["kills"] >= 4 and first["original"] == first["retry_ok"] > 0 and first["patched"] > 0
    assert repatch["partial"] > 0 and repatch["patched"] > 0
    assert revert["kills"] > 0 and revert["patched"] > 0
