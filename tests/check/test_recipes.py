"""Runtime recipes are right for the file AS IT IS, and checked in the real runtime.

Every recipe (:func:`llama_cpp_python_kwargs`, :func:`kv_overrides`, :func:`llama_cpp_run_flags`)
takes the plan (from the ORIGINAL parameters) and the file's CURRENT parameters. For each
fixture state -- unpatched, and patched with each method to 512 tokens -- and each planned
method, the recipe is applied to that file in llama-cpp-python through :func:`probe` (the
kwargs as ``llama_context_params`` fields, the kv overrides as model kv overrides, the
llama.cpp flags through :func:`flags_to_probe`, a translation written from llama.cpp's
common/arg.cpp), and the ROPE op's freq_base, freq_scale, ext_factor, attn_factor (and
n_ctx_orig, where the kernel reads it: ext_factor != 0) plus the context's n_ctx must equal
:func:`ggml_rope_args` of the plan's target -- float32-exact. kv overrides and flags must also
leave the model's training context at the target (llama-server caps every slot at it; checked
in a real llama-server at the end when one is built).

Plus the pure side (unpatched output unchanged, the issue's example, resets, revert-first) and
the next step printed by ``gguf`` and ``plan`` (text and --json).
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, require

from ropepatch.formats.gguf.params import (
    kv_overrides,
    llama_cpp_run_flags,
    override_kv_flags,
    runtime_settings,
)
from ropepatch.rope.methods import METHODS, make_plan
from ropepatch.rope.params import RopeLayout, RopeParams
from ropepatch.rope.runtime_flags import (
    llama_cpp_flags,
    llama_cpp_python_kwargs,
    needs_patch,
    next_steps,
    ollama_name,
    recipe_problem,
)

FIXTURE = "tiny-llama-f32.gguf"  # llama, NORM, training context 128, base 10000
PATCHED_CTX = 512
TOKENS = [1, 75, 104, 108]
BARE = RopeParams(arch="llama", n_ctx_train=8192, rope_dim=64, head_dim=64, freq_base=100000.0)


def f32(x: float) -> float:
    return float(np.float32(x))


# ---- pure: the recipes ----------------------------------------------------------------------

# `plan --base 100000 --rope-dim 64 --orig-ctx 8192 --ctx 16384 --json` before recipes took the
# file's current state: an unpatched file still gets exactly these.
UNPATCHED_16K = {
    "ntk": (["-c", "16384", "--rope-freq-base", "204522.28712025366"],
            {"n_ctx": 16384, "rope_freq_base": 204522.28712025366},
            {"llama.context_length": 16384, "llama.rope.freq_base": 204522.28712025366}),
    "dynamic": (["-c", "16384", "--rope-freq-base", "310822.36667168816"],
                {"n_ctx": 16384, "rope_freq_base": 310822.36667168816},
                {"llama.context_length": 16384, "llama.rope.freq_base": 310822.36667168816}),
    "linear": (["-c", "16384", "--rope-scaling", "linear", "--rope-scale", "2.0"],
               {"n_ctx": 16384, "rope_scaling_type": 1, "rope_freq_scale": 0.5},
               {"llama.context_length": 16384, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}),
    "yarn": (["-c", "16384", "--rope-scaling", "yarn", "--rope-scale", "2.0", "--yarn-orig-ctx", "8192"],
             {"n_ctx": 16384, "rope_scaling_type": 2, "rope_freq_scale": 0.5, "yarn_orig_ctx": 8192},
             {"llama.context_length": 16384, "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0,
              "llama.rope.scaling.original_context_length": 8192}),
    "none": (["-c", "16384"], {"n_ctx": 16384}, {"llama.context_length": 16384}),
}


def test_factor_plans_need_the_patched_file():
    """No flag or kv override adds a tensor: a factor plan's recipe is the patched file."""
    for method in (m for m in METHODS if METHODS[m].writes_factors):
        plan = make_plan(BARE, 16384, method)
        assert needs_patch(plan) and "cannot be set at run time" in recipe_problem(plan)
        rt = runtime_settings(plan, "/m/p.gguf")
        assert rt["llama_cpp_flags"] is None and "revert_first" not in rt
        assert "patch the file first (ropepatch gguf /m/p.gguf --ctx 16384" in rt["patch_first"]
        assert recipe_problem(plan, plan.target) == "" and not needs_patch(plan, plan.target)


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].writes_factors])
def test_unpatched_file_recipes_are_unchanged(method):
    plan = make_plan(BARE, 16384, method)
    flags, kwargs, kvs = UNPATCHED_16K[method]
    for current in (None, BARE):
        assert llama_cpp_flags(plan, current) == flags
        assert llama_cpp_python_kwargs(plan, current) == kwargs
        assert kv_overrides(plan, current) == kvs
        # llama-server / llama-cli also need the training context raised (slots are capped at it)
        assert llama_cpp_run_flags(plan, current) == flags + ["--override-kv", "llama.context_length=int:16384"]


def patched(plan) -> RopeParams:
    """What inspect_gguf reads back from a file patched with ``plan``: float32 values."""
    t = plan.target
    return t.with_(freq_base=f32(t.freq_base), scaling_factor=f32(t.scaling_factor))


def test_linear_on_an_ntk_patched_file_undoes_the_base():
    """The issue's example: after `gguf p.gguf --ctx 16384` (ntk), `plan p.gguf --ctx 16384
    --method linear` must not stack freq_base 204522 AND freq_scale 0.5."""
    current = patched(make_plan(BARE, 16384, "ntk"))
    plan = make_plan(BARE, 16384, "linear")
    assert llama_cpp_run_flags(plan, current) == [
        "-c", "16384", "--rope-freq-base", "100000.0", "--rope-scaling", "linear", "--rope-scale", "2.0"]
    assert llama_cpp_python_kwargs(plan, current) == {
        "n_ctx": 16384, "rope_freq_base": 100000.0, "rope_scaling_type": 1, "rope_freq_scale": 0.5}
    yarn = make_plan(BARE, 16384, "yarn")
    assert llama_cpp_flags(yarn, current) == ["-c", "16384", "--rope-freq-base", "100000.0", "--rope-scaling",
                                              "yarn", "--rope-scale", "2.0", "--yarn-orig-ctx", "8192"]


@pytest.mark.parametrize("scaled", ["linear", "yarn"])
@pytest.mark.parametrize("target", ["ntk", "none", "dynamic"])
def test_an_unscaled_target_on_a_scaled_file_resets_the_scaling(scaled, target):
    current = patched(make_plan(BARE, 16384, scaled))
    plan = make_plan(BARE, 16384, target)
    flags = llama_cpp_flags(plan, current)
    assert flags[flags.index("--rope-scaling"):][:4] == ["--rope-scaling", "none", "--rope-scale", "1.0"]
    kw = llama_cpp_python_kwargs(plan, current)
    assert kw["rope_scaling_type"] == 0 and kw["rope_freq_scale"] == 1.0
    kvs = kv_overrides(plan, current)  # the old bug: kv overrides never reset a dropped scaling
    assert kvs["llama.rope.scaling.type"] == "none" and kvs["llama.rope.scaling.factor"] == 1.0
    assert "llama.rope.scaling.type=str:none" in " ".join(override_kv_flags(plan, current))


def test_yarn_always_carries_the_original_context():
    for state in ("yarn", "ntk", "linear"):
        current = patched(make_plan(BARE, 16384, state))
        for ctx in (16384, 32768):
            plan = make_plan(BARE, ctx, "yarn")
            assert llama_cpp_python_kwargs(plan, current)["yarn_orig_ctx"] == 8192
            assert kv_overrides(plan, current)["llama.rope.scaling.original_context_length"] == 8192
            assert llama_cpp_flags(plan, current)[-2:] == ["--yarn-orig-ctx", "8192"]


@pytest.mark.parametrize("method", list(METHODS))
def test_a_file_that_carries_the_plan_needs_only_the_context(method):
    plan = make_plan(BARE, 16384, method)
    current = patched(plan)
    extra = ["--yarn-orig-ctx", "8192"] if method == "yarn" else []
    assert llama_cpp_run_flags(plan, current) == ["-c", "16384", *extra]
    # a larger target: the training context is raised for llama-server too
    bigger = make_plan(BARE, 32768, method)
    assert llama_cpp_run_flags(bigger, current)[-2:] == ["--override-kv", "llama.context_length=int:32768"]


def test_what_no_runtime_setting_can_change_means_revert_first():
    plan = make_plan(BARE, 16384, "ntk")
    factors = BARE.with_(has_freq_factors=True)
    assert "rope frequency factors" in recipe_problem(plan, factors)
    assert "layout" in recipe_problem(plan, BARE.with_(layout=RopeLayout.NEOX))
    rt = runtime_settings(plan, "/m/p.gguf", factors)
    assert rt["llama_cpp_flags"] is None and rt["llama_cpp_python"] is None and rt["override_kv_flags"] is None
    assert rt["revert_first"].endswith("revert first (ropepatch revert /m/p.gguf) or use the unpatched file")
    assert recipe_problem(plan, None) == "" and "revert_first" not in runtime_settings(plan)
    # a patched file with factors (gguf --replace-scaling): the factors' selection follows the keys
    orig = BARE.with_(has_freq_factors=True)
    p = make_plan(orig, 16384, "ntk", replace_scaling=True)
    assert "patched" in recipe_problem(make_plan(orig, 16384, "linear", replace_scaling=True), patched(p))


# ---- pure: the next step --------------------------------------------------------------------


def test_next_steps_name_the_absolute_path_and_the_context():
    steps = next_steps(16384, "/models/My Model.Q4.gguf")
    assert steps["llama-server"] == "llama-server -m '/models/My Model.Q4.gguf' -c 16384"
    assert steps["llama-cli"] == "llama-cli -m '/models/My Model.Q4.gguf' -c 16384"
    assert steps["llama-cpp-python"] == "Llama('/models/My Model.Q4.gguf', n_ctx=16384)"
    assert steps["ollama_modelfile"] == "FROM /models/My Model.Q4.gguf\nPARAMETER num_ctx 16384\n"
    assert steps["ollama"] == "ollama create my-model.q4 -f Modelfile"
    assert "--contextsize 16384" in steps["koboldcpp"] and "256..262144" not in steps["koboldcpp"]
    assert "--context-length 16384" in steps["lm_studio"]
    assert "ctx-size 16384" in steps["text-generation-webui"] and "alpha_value" in steps["text-generation-webui"]
    assert "256..262144" in next_steps(200, "/m.gguf")["koboldcpp"]


@pytest.mark.parametrize("name", ["x.gguf", "-weird name!!.gguf", "ÄÖ.gguf", "a" * 200 + ".gguf", "Qwen2.5-7B.gguf"])
def test_ollama_names_are_valid(name):
    """ollama/ollama types/model/name.go isValidPart: [A-Za-z0-9_] first, then also - and ."""
    assert re.fullmatch(r"[a-z0-9_][a-z0-9_.-]{0,63}", ollama_name("/d/" + name))


# ---- the CLI prints the next step ------------------------------------------------------------


def test_gguf_prints_the_next_step(tmp_path, cli):
    out = tmp_path / "p 1k.gguf"
    r = cli("gguf", str(FIXTURES / FIXTURE), "--ctx", "1024", "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = r.stdout.split("run it at 1024 tokens:\n", 1)[1]
    q = f"'{out}'"
    assert f"llama-server -m {q} -c 1024" in text and f"llama-cli -m {q} -c 1024" in text
    assert f"Llama('{out}', n_ctx=1024)" in text
    assert f"\n{'':27}FROM {out}\n{'':27}PARAMETER num_ctx 1024\n" in text
    assert "ollama create p-1k -f Modelfile" in text and "--contextsize 1024" in text
    r = cli("gguf", str(out), "--ctx", "1024", "--json")  # no-op: the file already carries it
    assert json.loads(r.stdout)["next_steps"]["llama-server"] == f"llama-server -m {q} -c 1024"
    r = cli("gguf", str(out), "--ctx", "2048", "--dry-run")
    assert r.returncode == 0 and "run it at" not in r.stdout
    r = cli("gguf", str(out), "--ctx", "2048", "--dry-run", "--json")
    assert json.loads(r.stdout)["next_steps"] is None


def test_plan_prints_the_next_step_and_recipes_for_the_file_as_it_is(tmp_path, cli):
    p = tmp_path / "p.gguf"
    shutil.copyfile(FIXTURES / FIXTURE, p)
    r = cli("plan", str(p), "--ctx", "512", "--method", "ntk")
    assert "run it at 512 tokens: patch it first" in r.stdout and f"llama-server -m {p} -c 512" in r.stdout
    assert "Ollama Modelfile:" not in r.stdout and "file now:" not in r.stdout
    d = json.loads(cli("plan", str(p), "--ctx", "512", "--json").stdout)
    assert d["patch_first"] is True and d["next_steps"]["ollama_modelfile"] == f"FROM {p}\nPARAMETER num_ctx 512\n"
    assert cli("gguf", str(p), "--ctx", "512").returncode == 0  # ntk
    r = cli("plan", str(p), "--ctx", "512", "--method", "ntk")
    assert "run it at 512 tokens (the file already carries this plan):" in r.stdout
    assert "  llama.cpp flags:    -c 512\n" in r.stdout and "file now: llama: context_length 512" in r.stdout
    r = cli("plan", str(p), "--ctx", "512", "--method", "linear")
    assert "  llama.cpp flags:    -c 512 --rope-freq-base 10000.0 --rope-scaling linear --rope-scale 4.0\n" in r.stdout
    d = json.loads(cli("plan", str(p), "--ctx", "512", "--method", "linear", "--json").stdout)
    assert d["patch_first"] is True and d["current"]["freq_base"] == pytest.approx(48760.546875)
    assert d["plans"]["linear"]["runtime"]["llama_cpp_python"] == {
        "n_ctx": 512, "rope_freq_base": 10000.0, "rope_scaling_type": 1, "rope_freq_scale": 0.25}


# ---- the real runtime ------------------------------------------------------------------------

#: the llama.cpp flags the recipes use -> probe() keyword arguments, as llama.cpp's
#: common/arg.cpp parses them (vendored in llama-cpp-python 0.3.36): "-c" n_ctx = value;
#: "--rope-freq-base" rope_freq_base = std::stof(value); "--rope-scale" rope_freq_scale =
#: 1.0f / std::stof(value); "--rope-scaling" none/linear/yarn -> LLAMA_ROPE_SCALING_TYPE_*;
#: "--yarn-orig-ctx" yarn_orig_ctx = value; "--override-kv" KEY=TYPE:VALUE
#: (string_parse_kv_override: int via atol, float via atof, str as is).
SCALING = {"none": 0, "linear": 1, "yarn": 2}


def flags_to_probe(flags: list[str]) -> dict:
    kw: dict = {"kv_overrides": {}}
    it = iter(flags)
    for flag in it:
        value = next(it)
        if flag == "-c":
            kw["n_ctx"] = int(value)
        elif flag == "--rope-freq-base":
            kw["rope_freq_base"] = f32(float(value))
        elif flag == "--rope-scale":
            kw["rope_freq_scale"] = float(np.float32(1) / np.float32(float(value)))
        elif flag == "--rope-scaling":
            kw["rope_scaling_type"] = SCALING[value]
        elif flag == "--yarn-orig-ctx":
            kw["yarn_orig_ctx"] = int(value)
        elif flag == "--override-kv":
            key, typed = value.split("=", 1)
            kind, v = typed.split(":", 1)
            kw["kv_overrides"][key] = {"int": int, "float": float, "str": str}[kind](v)
        else:
            raise AssertionError(f"flags_to_probe: {flag} is not a flag the recipes use")
    return kw


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """name -> path: the unpatched fixture and a copy patched with each method to 512."""
    from ropepatch.patch.gguf import patch_gguf

    d = tmp_path_factory.mktemp("states")
    out = {"unpatched": str(d / "unpatched.gguf")}
    shutil.copyfile(FIXTURES / FIXTURE, out["unpatched"])
    for m in METHODS:
        out[m] = str(d / f"{m}.gguf")
        patch_gguf(out["unpatched"], PATCHED_CTX, m, out=out[m])
    return out


CASES = [(s, m, PATCHED_CTX) for s in ["unpatched", *METHODS] for m in METHODS]
CASES += [(s, m, 1024) for s in ["unpatched", "linear", "yarn"] for m in METHODS]


@pytest.mark.parametrize("state,method,ctx", CASES)
def test_each_recipe_gives_the_target_in_the_runtime(states, state, method, ctx):
    require("llama_cpp")
    from ropepatch.check.ggml_args import ggml_rope_args
    from ropepatch.patch.gguf import inspect_gguf
    from ropepatch.runtime.probe import probe

    path = states[state]
    info = inspect_gguf(path)
    plan = make_plan(info.original, ctx, method)
    if needs_patch(plan, info.current) or info.current.freq_factors != plan.target.freq_factors:
        # per-pair factors the file lacks (patch it) or has and the plan does not (revert it)
        assert "rope frequency factors" in recipe_problem(plan, info.current)
        return
    assert recipe_problem(plan, info.current) == ""
    want = ggml_rope_args(plan.target)
    runs = {
        "llama-cpp-python": (llama_cpp_python_kwargs(plan, info.current), False),
        "kv overrides": ({"n_ctx": 0, "kv_overrides": kv_overrides(plan, info.current)}, True),
        "llama.cpp flags": (flags_to_probe(llama_cpp_run_flags(plan, info.current)), True),
    }
    for recipe, (kw, train_ctx_matters) in runs.items():
        res = probe(path, TOKENS, 0, n_threads=1, logits=False, **kw)
        op = res.rope("Qcur-0").op
        got = {"freq_base": op.freq_base, "freq_scale": op.freq_scale, "ext_factor": op.ext_factor,
               "attn_factor": op.attn_factor, "n_ctx": res.n_ctx}
        expected = {**{k: want[k] for k in ("freq_base", "freq_scale", "ext_factor", "attn_factor")}, "n_ctx": ctx}
        if want["ext_factor"] != 0:  # the kernel reads n_ctx_orig only for YaRN's ramp
            got["n_ctx_orig"], expected["n_ctx_orig"] = op.n_ctx_orig, want["n_ctx_orig"]
        if train_ctx_matters:  # llama-server caps each slot at the model's training context
            got["n_ctx_train"], expected["n_ctx_train"] = res.n_ctx_train, ctx
        assert got == expected, (state, method, ctx, recipe, kw)


# ---- a real llama-server (built by tools/build_llama_server.py) -------------------------------


def _server_binary() -> str:
    """The llama-server the README's test command builds: a missing one FAILS, never skips."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    path = ROOT / ".cache" / "llama-server" / version / "bin" / "llama-server"
    if not path.is_file():
        pytest.fail(f"llama-server is not built ({path} is missing); build it: "
                    f".venv/bin/python tools/build_llama_server.py", pytrace=False)
    return str(path)


def _slot_ctx(binary: str, model: str, flags: list[str]) -> int:
    """Start llama-server with ``flags``, read the per-slot context from /props, stop it by pid."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"llama-server exited with {proc.returncode}: {flags}"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/props")
                resp = conn.getresponse()
                if resp.status == 200:
                    return int(json.loads(resp.read())["default_generation_settings"]["n_ctx"])
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"llama-server did not answer /props within 60 s: {flags}")
    finally:
        os.kill(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


@pytest.mark.parametrize("method", ["ntk", "linear", "yarn"])
def test_llama_server_slots_get_the_target_context(states, method):
    """llama-server caps every slot at the model's training context
    (tools/server/server-context.cpp n_ctx_slot()): the RoPE flags alone serve 128 tokens
    for ntk and linear (a runtime YaRN scale re-adjusts it); the run flags serve 512."""
    from ropepatch.patch.gguf import inspect_gguf

    binary = _server_binary()
    info = inspect_gguf(states["unpatched"])
    plan = make_plan(info.original, PATCHED_CTX, method)
    assert _slot_ctx(binary, states["unpatched"], llama_cpp_run_flags(plan, info.current)) == PATCHED_CTX
    rope_only = _slot_ctx(binary, states["unpatched"], llama_cpp_flags(plan, info.current))
    assert rope_only == (PATCHED_CTX if method == "yarn" else info.original.n_ctx_train)


def test_the_readme_shows_what_gguf_prints():
    from ropepatch.cli.commands_plan import next_step_lines

    readme = (ROOT / "README.md").read_text()
    block = "\n".join(["run it at 16384 tokens:",
                       *next_step_lines(next_steps(16384, "/models/SmolLM2-135M-Instruct.Q4_1.gguf"))])
    assert f"  ...\n{block}\n```" in readme
    methods = (ROOT / "docs" / "methods.md").read_text()
    assert "-c 16384 --rope-freq-base 100000.0 --rope-scaling linear --rope-scale 2.0" in methods
