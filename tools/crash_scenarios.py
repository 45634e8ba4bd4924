"""The GGUF kill harness's scenarios (tools/crash_harness.py): the fixtures, the commands under
test with the state they start from, and what their complete result is."""

from __future__ import annotations

from dataclasses import dataclass

from crash_common import ROOT

FIXTURES = ROOT / "fixtures"
GGUF_FIXTURES = ["tiny-llama-q8_0.gguf", "tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf", "tiny-qwen2-f32.gguf"]


@dataclass(frozen=True)
class Scenario:
    """``setup`` commands make the state before the command under test (``args``); ``{f}`` is
    the model file, ``{o}`` an output path next to it. ``expect`` describes the complete result:
    ("patch", ctx, method, record) or ("pristine",)."""

    name: str
    setup: tuple[tuple[str, ...], ...]
    args: tuple[str, ...]
    expect: tuple
    output: bool = False  # the command writes {o}; {f} must stay as it was
    llama_only: bool = False  # writes rope_freqs.weight: only llama-family fixtures take it
    # two in-place writes (the header, then one pwrite of the factor data): a kill between them
    # leaves the new header with the old factors, which must revert to the original and be
    # finished by running the command again (counted as "partial")
    partial_ok: bool = False


def gguf_args(ctx, method="ntk", *more):
    """``ropepatch gguf {f} --ctx CTX --method METHOD ...``."""
    return ("gguf", "{f}", "--ctx", str(ctx), "--method", method, *more)


def fmt_file(args, f, o):
    """The command line ``args`` with ``{f}`` (the model file) and ``{o}`` (the output) filled."""
    return [a.format(f=f, o=o) for a in args]


_p = gguf_args  # the scenario tables below read best with a short name

SCENARIOS = [
    Scenario("first patch (rewrite)", (), _p(1024, "yarn"), ("patch", 1024, "yarn", True)),
    Scenario("first patch to a copy (-o)", (), _p(2048, "ntk", "-o", "{o}"), ("patch", 2048, "ntk", True),
             output=True),
    Scenario("re-patch yarn->ntk (in place, key count changes)", (_p(1024, "yarn"),), _p(2048, "ntk"),
             ("patch", 2048, "ntk", True)),
    Scenario("re-patch ntk->yarn (in place, key count changes)", (_p(1024, "ntk"),), _p(4096, "yarn"),
             ("patch", 4096, "yarn", True)),
    Scenario("re-patch yarn->yarn (in place, new ctx)", (_p(1024, "yarn"),), _p(4096, "yarn"),
             ("patch", 4096, "yarn", True)),
    Scenario("re-patch ntk->linear (in place)", (_p(2048, "ntk"),), _p(1024, "linear"),
             ("patch", 1024, "linear", True)),
    Scenario("revert (rewrite)", (_p(1024, "yarn"),), ("revert", "{f}"), ("pristine",)),
    Scenario("--no-record (in place)", (), _p(1024, "ntk", "--no-record"), ("patch", 1024, "ntk", False)),
]
QUICK_SCENARIOS = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[3], SCENARIOS[6]]
# per-pair factors (issue 14): the add-tensor rewrite, the in-place data pwrite, the tensor's removal
FACTOR_SCENARIOS = [
    Scenario("ntk-parts first patch (adds rope_freqs, rewrite)", (), _p(1024, "ntk-parts"),
             ("patch", 1024, "ntk-parts", True), llama_only=True),
    Scenario("re-patch ntk-parts alpha (header + one data pwrite)", (_p(1024, "ntk-parts"),),
             _p(1024, "ntk-parts", "--alpha", "12"), ("patch", 1024, "ntk-parts", True, 12.0), llama_only=True,
             partial_ok=True),
    Scenario("re-patch ntk-parts->yarn (removes rope_freqs, rewrite)", (_p(1024, "ntk-parts"),), _p(1024, "yarn"),
             ("patch", 1024, "yarn", True), llama_only=True),
    Scenario("revert ntk-parts (removes rope_freqs)", (_p(1024, "ntk-parts"),), ("revert", "{f}"), ("pristine",),
             llama_only=True),
    Scenario("factors first patch to a copy (-o)", (), _p(2048, "factors", "--factors", "1,2,4", "-o", "{o}"),
             ("patch", 2048, "factors", True, None, (("points", (1.0, 2.0, 4.0)),)), output=True, llama_only=True),
    Scenario("re-patch yarn->ntk-parts (adds rope_freqs, rewrite)", (_p(1024, "yarn"),), _p(2048, "ntk-parts"),
             ("patch", 2048, "ntk-parts", True), llama_only=True),
    Scenario("re-patch ntk-parts->factors (header + one data pwrite)", (_p(1024, "ntk-parts"),),
             _p(1024, "factors", "--factors", "1,3"), ("patch", 1024, "factors", True, None, (("points", (1.0, 3.0)),)),
             llama_only=True, partial_ok=True),
    # the attn_factor key is added lazily: the first re-patch that sets it grows the header
    Scenario("re-patch ntk->factors --attn-factor (adds rope_freqs and the attn_factor key)", (_p(1024, "ntk"),),
             _p(1024, "factors", "--factors", "1,2", "--attn-factor", "1.25"),
             ("patch", 1024, "factors", True, None, (("points", (1.0, 2.0)), ("attn_factor", 1.25))),
             llama_only=True),
    Scenario("re-patch factors->factors, new attn_factor (header + one data pwrite)",
             (_p(1024, "factors", "--factors", "1,2", "--attn-factor", "1.1"),),
             _p(1024, "factors", "--factors", "1,3", "--attn-factor", "1.2"),
             ("patch", 1024, "factors", True, None, (("points", (1.0, 3.0)), ("attn_factor", 1.2))),
             llama_only=True, partial_ok=True),
]
SCENARIOS += FACTOR_SCENARIOS
# LongRoPE (tiny-llama-longrope-f32 only): the factor methods change rope_factors_long.weight in place
LONGROPE_FIXTURE = "tiny-llama-longrope-f32.gguf"
LONGROPE_SCENARIOS = [
    Scenario("LongRoPE ntk-parts first patch (long factors changed, rewrite)", (), _p(512, "ntk-parts"),
             ("patch", 512, "ntk-parts", True), llama_only=True),
    Scenario("LongRoPE re-patch ntk-parts->factors (header + one data pwrite)", (_p(512, "ntk-parts"),),
             _p(512, "factors", "--factors", "1,3"), ("patch", 512, "factors", True, None, (("points", (1.0, 3.0)),)),
             llama_only=True, partial_ok=True),
    Scenario("LongRoPE revert (long factors restored)", (_p(512, "ntk-parts"),), ("revert", "{f}"), ("pristine",),
             llama_only=True),
]
# the --big synthetic file: first patch, in-place re-patch, revert
BIG_SCENARIOS = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[6]]
