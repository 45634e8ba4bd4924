"""The rope layer: the method registry is complete, every per-method table elsewhere covers it,
and rope/ is pure (standard library only)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from ropepatch.errors import UnsupportedModelError, UsageError
from ropepatch.rope.arch import MROPE_ARCHS, NEOX_ARCHS, NO_ROPE_ARCHS, NORM_ARCHS
from ropepatch.rope.methods import DEFAULT_METHOD, METHODS, HFSpelling, get_method, make_plan, method_note
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE, RopeParams, ScalingType

ROOT = Path(__file__).resolve().parents[2]
ORIG = RopeParams("llama", 8192, 64, 64, 100000.0)
NOTES = ("gguf_note", "gguf_plan_note", "hf_note", "hf_plan_note")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_carries_its_whole_description(name):
    m = METHODS[name]
    assert m.name == name and get_method(name) is m
    for field in ("summary", "reference", "alpha_help", "writes"):
        assert getattr(m, field).strip(), field
    assert isinstance(m.hf, HFSpelling)
    plan = make_plan(ORIG, 16384, name)
    assert plan.target.n_ctx_train == 16384 and plan.original == ORIG
    for which in NOTES:  # every template renders with the plan's values
        assert "{" not in method_note(plan, which)


def test_registry_facts():
    assert DEFAULT_METHOD in METHODS
    assert [m for m in METHODS.values() if not m.takes_alpha] == [METHODS["none"]]
    assert METHODS["ntk"].hf.theta_from_target and METHODS["yarn"].hf.writes_orig_max_pos
    with pytest.raises(UsageError, match="unknown method 'ntk2': expected one of"):
        get_method("ntk2")


def test_tables_elsewhere_cover_the_registry():
    from ropepatch.formats.hf.apply import rope_block
    from ropepatch.formats.hf.keys import METHOD_ROPE_TYPE
    from ropepatch.patch.hf_plan import check_hf_method
    from ropepatch.quality.tune import TUNABLE

    assert set(METHOD_ROPE_TYPE) == set(METHODS)
    assert set(TUNABLE) == {n for n, m in METHODS.items() if m.takes_alpha}
    for name, m in METHODS.items():  # every method has an HF spelling, or is refused for HF models in one line
        if m.writes_factors:  # per-pair factors live in GGUF files only (rope_freqs.weight)
            with pytest.raises(UnsupportedModelError, match=f"^model: --method {name} writes per-pair .* GGUF"):
                check_hf_method("model", name)
        else:
            check_hf_method("model", name)
            rope_block(make_plan(ORIG, 16384, name))
    assert {t.value for t in ScalingType} == set(LLAMA_ROPE_SCALING_TYPE)
    docs = (ROOT / "docs" / "methods.md").read_text()
    assert all(f"`{name}`" in docs for name in METHODS)


def test_architecture_tables_are_disjoint():
    tables = [NORM_ARCHS, NEOX_ARCHS, MROPE_ARCHS, NO_ROPE_ARCHS]
    for i, a in enumerate(tables):
        for b in tables[i + 1:]:
            assert not a & b


def test_rope_layer_is_standard_library_only():
    allowed = set(sys.stdlib_module_names) | {"ropepatch"}
    for path in (ROOT / "ropepatch" / "rope").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] in allowed, f"{path.name} imports {n}"
                if n.startswith("ropepatch."):
                    assert n.split(".")[1] in ("rope", "errors", "version"), f"{path.name} imports {n}"


def test_alpha_for_a_method_without_one_is_refused():
    with pytest.raises(UsageError, match="--alpha does not apply to method none"):
        make_plan(ORIG, 16384, "none", 3.0)
    assert make_plan(ORIG, 16384, "none").alpha_given is False


def test_an_extreme_context_carries_a_warning():
    assert make_plan(ORIG, 16384 * 4, "yarn").warnings == ()
    (w,) = make_plan(ORIG, 1_000_000, "yarn").warnings
    assert w.startswith("--ctx 1000000 is 122x the training context 8192")


def test_cli_shows_the_extreme_context_warning(copy_fixture, cli):
    path = copy_fixture("tiny-llama-f32.gguf")
    r = cli("gguf", path, "--ctx", "1000000", "--dry-run")
    assert r.returncode == 0 and "is 7.81e+03x the training context 128" in r.stdout + r.stderr
    r = cli("gguf", path, "--ctx", "1024", "--method", "none", "--alpha", "3")
    assert r.returncode == 2 and "--alpha does not apply to method none" in r.stderr
