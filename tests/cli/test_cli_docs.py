"""The CLI is documented and scriptable: every command has help with an example, is in the
README, emits JSON with --json; CI runs the README's exact test command."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES, ROOT, run_cli

from ropepatch.cli import COMMANDS
from ropepatch.rope.methods import METHODS

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_cmd = next(line for line in ci if line.startswith("python3 -m venv"))
    assert "pytest" in test_cmd and "hf-test" not in test_cmd  # the default suite installs no torch
    assert f"   {test_cmd}\n" in README
    live = ci[-1]  # then the live transformers comparison, also as the README states it
    assert "-m transformers" in live and live in README


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_is_documented_with_an_example(command, cli):
    assert f"`ropepatch {command} " in README
    r = cli(command, "-h")
    assert r.returncode == 0
    assert "example" in r.stdout and f"ropepatch {command}" in r.stdout
    assert "--json" in r.stdout


def test_every_method_is_documented(cli):
    methods_doc = (ROOT / "docs" / "methods.md").read_text()
    r = cli("gguf", "-h")
    for name, m in METHODS.items():
        assert f"`{name}`" in methods_doc and f"`{name}`" in README
        assert name in r.stdout
        author = m.reference.split(",")[0]
        assert author in methods_doc, (name, author)


def test_json_output_of_every_command(tmp_path, cli):
    src = FIXTURES / "tiny-qwen2-f32.gguf"
    p = str(tmp_path / "m.gguf")
    shutil.copyfile(src, p)
    out = {}
    for args in (
        ["inspect", p],
        ["plan", p, "--ctx", "1024"],
        ["plan", "--base", "100000", "--rope-dim", "64", "--orig-ctx", "8192", "--ctx", "16384"],
        ["gguf", p, "--ctx", "1024", "--method", "yarn"],
        ["revert", p],
    ):
        r = cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        out[args[0] + str(len(out))] = json.loads(r.stdout)
    plan = out["plan2"]["plans"]["ntk"]
    assert plan["params"]["freq_base"] == pytest.approx(100000 * 2 ** (64 / 62))
    assert plan["runtime"]["llama_cpp_flags"][:2] == ["-c", "16384"]
    assert out["gguf3"]["mode"] == "rewrite"
    assert out["inspect0"]["current"]["layout"] == "neox"


def test_plan_prints_runtime_equivalents(cli):
    r = cli("plan", "--base", "100000", "--rope-dim", "64", "--orig-ctx", "8192", "--ctx", "16384")
    assert r.returncode == 0
    assert "--rope-freq-base 204522.2871" in r.stdout
    assert "--rope-scaling yarn --rope-scale 2.0 --yarn-orig-ctx 8192" in r.stdout
    assert "--override-kv llama.rope.freq_base=float:204522.2871" in r.stdout
    assert "rope_scaling_type=1, rope_freq_scale=0.5" in r.stdout
    assert "PARAMETER num_ctx 16384" in r.stdout


def test_no_command_prints_help():
    """Through the real entry point (a new ``python -m ropepatch`` process)."""
    r = run_cli()
    assert r.returncode == 2 and "quick start" in r.stdout


def test_eval_tune_passkey_through_the_cli(tmp_path, cli):
    import _pydecimal

    model = str(FIXTURES / "tiny-llama-f32.gguf")
    r = cli("eval", model, "--ctx", "384", "--text", _pydecimal.__file__, "--methods", "none,ntk", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["methods"]) == {"none", "ntk", "window"} and out["ctx"] == 384
    assert {"ppl_in", "ppl_ext", "buckets", "params"} <= set(out["methods"]["ntk"])
    r = cli("passkey", model, "--ctx", "384", "--methods", "ntk", "--depths", "0.5", "--trials", "1", "--json")
    assert r.returncode == 0, r.stderr
    r = cli("eval", model, "--ctx", "384", "--text", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and r.stderr.startswith("ropepatch: error: ") and "Traceback" not in r.stderr
