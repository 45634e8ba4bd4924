"""LongRoPE as real Phi-3-128k GGUFs carry it (tiny-phi3-longrope-f32: architecture phi3, NEOX,
fused attn_qkv and ffn_up, NO rope.scaling.type, original_context_length 32, attn_factor,
rope_factors_long/short): llama.cpp's phi3 applies the long factors past the original context
whatever the type says. The factor methods multiply them in place, --replace-scaling keeps them
(and says so), revert restores the original bytes, and the real llama-cpp-python agrees with the
NumPy references on every check, d included (the reference forward splits the fused tensors)."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, require, sha256
from test_gguf_longrope import LONG, SHORT, n_ctx_train, tensor_values

from ropepatch.check.report import PASSED, format_report
from ropepatch.check.validate import validate
from ropepatch.errors import UnsupportedModelError
from ropepatch.formats.gguf.header import read_header
from ropepatch.formats.gguf.tensors import ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS, find_tensor
from ropepatch.patch import gguf as gp
from ropepatch.rope import factors as ff
from ropepatch.rope.params import ScalingType

require("llama_cpp")
require("gguf")

FIXTURE = "tiny-phi3-longrope-f32.gguf"
CTX = 512


def passed_all_four(path, ctx=None):
    r = validate(path, ctx=ctx)
    assert r.passed, format_report(r)
    assert [c.status for c in r.checks] == [PASSED] * 4, format_report(r)  # d is not skipped
    return r


def test_the_fixture_is_a_phi3_file_as_convert_writes_it_and_validates_as_shipped(copy_fixture):
    path = copy_fixture(FIXTURE)
    h = read_header(path)
    names = {t.name for t in h.tensors}
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names
    assert not names & {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight", ROPE_FREQS}
    assert h.get("phi3.rope.scaling.type") is None and h.get("phi3.rope.scaling.original_context_length") == 32
    assert tensor_values(path, ROPE_FACTORS_LONG) == LONG and tensor_values(path, ROPE_FACTORS_SHORT) == SHORT
    cur = gp.inspect_gguf(path).current
    assert cur.scaling_type == ScalingType.NONE and cur.orig_ctx == 32 and cur.freq_factors == LONG
    assert n_ctx_train(path) == 128
    for ctx in (None, 16):
        r = passed_all_four(path, ctx)
        assert r.check("b").figures["freq_factors"]["expected"] == list(LONG)


@pytest.mark.parametrize("method, options", [("ntk-parts", None), ("factors", {"points": (1.0, 1.5, 4.0)})])
def test_factor_methods_multiply_the_long_factors_and_the_runtime_applies_them(copy_fixture, method, options):
    path = copy_fixture(FIXTURE)
    before = sha256(path)
    res = gp.patch_gguf(path, CTX, method, options=options)
    new = (ff.ntk_parts_factors(16, 10000.0, 128, CTX / 128) if method == "ntk-parts"
           else ff.profile_factors(8, options["points"]))
    composed = tuple(ff.f32(a * b) for a, b in zip(LONG, new))
    assert tensor_values(path, ROPE_FACTORS_LONG) == composed == res.plan.target.freq_factors
    assert tensor_values(path, ROPE_FACTORS_SHORT) == SHORT
    h = read_header(path)
    assert h.get("phi3.rope.scaling.type") is None and find_tensor(h, ROPE_FREQS) is None  # still as convert wrote it
    r = passed_all_four(path)
    assert r.check("b").figures["freq_factors"]["expected"] == list(composed)
    assert n_ctx_train(path) == CTX
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_replace_scaling_keeps_the_long_factors_warns_and_the_runtime_agrees(cli, copy_fixture):
    """phi3 applies rope_factors_long whatever the type: yarn written over it acts TOGETHER with
    them, which ropepatch warns about and validate's plan predicts exactly."""
    path = copy_fixture(FIXTURE)
    before = sha256(path)
    r = cli("gguf", str(path), "--ctx", str(CTX), "--method", "yarn", "--replace-scaling")
    assert r.returncode == 0, r.stderr
    assert "warning: llama.cpp's phi3 applies the file's rope_factors_long/short whatever" in r.stderr
    v = passed_all_four(path)
    assert v.check("b").figures["freq_factors"]["expected"] == list(LONG)
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_a_method_that_cannot_compose_is_refused_with_nothing_written(copy_fixture):
    path = copy_fixture(FIXTURE)
    before = sha256(path)
    for method in ("ntk", "yarn", "linear", "dynamic"):
        with pytest.raises(UnsupportedModelError, match="cannot compose"):
            gp.patch_gguf(path, CTX, method)
    assert sha256(path) == before


def test_inspect_says_the_factor_methods_multiply_the_long_factors(cli):
    r = cli("inspect", str(FIXTURES / FIXTURE))
    assert r.returncode == 0, r.stderr
    assert ("no rope_freqs.weight (an extra tensor fails the load; ntk-parts/factors multiply "
            "rope_factors_long when the file has it); rope_factors_long/short applied whenever present") in r.stdout
