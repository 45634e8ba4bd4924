"""The effect map through the CLI: ``inspect`` shows the architecture's row (text and --json) for
synthetic headers of every rotary architecture; ``plan``/``gguf``/``hf`` refuse the per-pair factor
methods in one line where llama.cpp cannot take them (qwen2 fixtures, HF models), writing nothing;
and the sliding-window warnings reach ``plan`` and ``gguf``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, build_gguf, llama_kvs, require, sha256

from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.patch.gguf import inspect_gguf
from ropepatch.rope import effects as fx
from ropepatch.rope.arch import MROPE_ARCHS, NEOX_ARCHS, NORM_ARCHS

ROPE_ARCHS = sorted(a for a in NORM_ARCHS | NEOX_ARCHS | MROPE_ARCHS if fx.effects_for(a).rope)


def _tree_digest(root) -> dict:
    return {os.path.relpath(os.path.join(d, f), root): sha256(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs}


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropepatch: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("arch", ROPE_ARCHS)
def test_inspect_shows_the_row_for_every_rotary_architecture(cli, tmp_path, arch):
    path = build_gguf(tmp_path / f"{arch}.gguf", llama_kvs(arch, rope_dim=16))
    r = cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    eff = json.loads(r.stdout)["effects"]
    assert eff == {**json.loads(json.dumps(fx.effects_for(arch).to_dict())), "file_freq_base_swa": None}
    text = cli("inspect", path).stdout
    assert f"llama.cpp reads: {fx.effects_for(arch).summary}" in text


def test_inspect_shows_the_files_own_sliding_window_base(cli, tmp_path):
    swa = [("gemma3.rope.freq_base_swa", T.FLOAT32, 10000.0)]
    path = build_gguf(tmp_path / "g3.gguf", llama_kvs("gemma3", extra=swa))
    r = cli("inspect", path)
    assert "sliding-window base rope.freq_base_swa (default 10000), scaling NOT applied there" in r.stdout
    assert "this file's rope.freq_base_swa: 10000" in r.stdout
    assert json.loads(cli("inspect", path, "--json").stdout)["effects"]["file_freq_base_swa"] == 10000.0
    plain = build_gguf(tmp_path / "q.gguf", llama_kvs("qwen2"))
    assert "rope.freq_base_swa" not in cli("inspect", plain).stdout


def test_inspect_an_unknown_architecture_says_effects_are_unknown(cli, tmp_path):
    path = build_gguf(tmp_path / "x.gguf", llama_kvs("brand-new-arch"))
    r = cli("inspect", path)
    assert r.returncode == 0 and "effects unknown" in r.stdout
    assert json.loads(cli("inspect", path, "--json").stdout)["effects"]["known"] is False


@pytest.mark.parametrize("method", ["ntk-parts", "factors"])
def test_plan_and_gguf_refuse_factor_methods_on_qwen2_in_one_line(cli, copy_fixture, method):
    src = str(FIXTURES / "tiny-qwen2-f32.gguf")
    msg = _one_line_error(cli("plan", src, "--ctx", "512", "--method", method),
                          src, "'qwen2'", "rope_freqs.weight", "use --method yarn or ntk")
    assert "wrong number of tensors" in msg
    path = copy_fixture("tiny-qwen2-f32.gguf")
    before = sha256(path)
    listing = sorted(os.listdir(os.path.dirname(path)))
    _one_line_error(cli("gguf", path, "--ctx", "512", "--method", method), path, "'qwen2'", "use --method yarn or ntk")
    assert sha256(path) == before and sorted(os.listdir(os.path.dirname(path))) == listing
    out = os.path.join(os.path.dirname(path), "out.gguf")
    _one_line_error(cli("gguf", path, "--ctx", "512", "--method", method, "-o", out), "'qwen2'")
    assert not os.path.exists(out)


def test_plan_all_on_qwen2_skips_the_factor_methods_and_says_so(cli):
    src = str(FIXTURES / "tiny-qwen2-f32.gguf")
    r = cli("plan", src, "--ctx", "512")
    assert r.returncode == 0, r.stderr
    assert "not applicable: ntk-parts, factors (llama.cpp applies no per-pair factors to qwen2" in r.stdout
    data = json.loads(cli("plan", src, "--ctx", "512", "--json").stdout)
    assert set(data["not_applicable"]) == {"ntk-parts", "factors"}
    assert "ntk-parts" not in data["plans"] and "yarn" in data["plans"]
    llama = json.loads(cli("plan", str(FIXTURES / "tiny-llama-f32.gguf"), "--ctx", "512", "--json").stdout)
    assert "not_applicable" not in llama and {"ntk-parts", "factors"} <= set(llama["plans"])


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-llama"])
def test_hf_and_plan_refuse_factor_methods_on_hf_models_in_one_line(cli, tmp_path, model):
    root = tmp_path / model
    shutil.copytree(FIXTURES / "hf" / model, root)
    before = _tree_digest(root)
    for method in ("ntk-parts", "factors"):
        _one_line_error(cli("hf", str(root), "--ctx", "512", "--method", method),
                        str(root), f"--method {method}", "GGUF files only", "use --method yarn or ntk")
        _one_line_error(cli("plan", str(root), "--ctx", "512", "--method", method), "GGUF files only")
    assert _tree_digest(root) == before and sorted(os.listdir(tmp_path)) == [model]
    r = cli("plan", str(root), "--ctx", "512", "--json")  # --method all: the HF-writable methods only
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["plans"]) == {"ntk", "dynamic", "linear", "yarn"}


def test_sliding_window_warnings_reach_plan_and_gguf(cli, tmp_path):
    path = build_gguf(tmp_path / "g3.gguf", llama_kvs("gemma3", ctx=128))
    r = cli("plan", path, "--ctx", "512", "--method", "ntk")
    assert r.returncode == 0, r.stderr
    assert "warning: llama.cpp's gemma3 sliding-window layers use gemma3.rope.freq_base_swa" in r.stdout
    data = json.loads(cli("plan", path, "--ctx", "512", "--method", "yarn", "--json").stdout)
    assert any("run unscaled" in w for w in data["plans"]["yarn"]["warnings"])
    r = cli("gguf", path, "--ctx", "512", "--method", "ntk")
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("ropepatch: warning: ")]
    assert len(warned) == 1 and "only the global layers" in warned[0]
    qwen = build_gguf(tmp_path / "q.gguf", llama_kvs("qwen2", ctx=128))
    assert "warning" not in cli("gguf", qwen, "--ctx", "512", "--method", "ntk").stderr


def test_inspect_help_shows_an_example(cli):
    r = cli("inspect", "--help")
    assert r.returncode == 0 and "ropepatch inspect model.gguf" in r.stdout


def _longrope_file(tmp_path, arch):
    kvs = llama_kvs(arch, ctx=128, extra=[(f"{arch}.rope.scaling.type", T.STRING, "longrope"),
                                          (f"{arch}.rope.scaling.factor", T.FLOAT32, 4.0),
                                          (f"{arch}.rope.scaling.original_context_length", T.UINT32, 32)])
    tensors = (("token_embd.weight", (8, 4), 0), ("rope_factors_long.weight", (8,), 0),
               ("rope_factors_short.weight", (8,), 0))
    return build_gguf(tmp_path / f"{arch}-longrope.gguf", kvs, tensors=tensors)


def test_replacing_a_llama_longrope_scaling_is_refused_in_one_line(cli, tmp_path):
    path = _longrope_file(tmp_path, "llama")
    before = sha256(path)
    _one_line_error(cli("gguf", path, "--ctx", "512", "--method", "yarn", "--replace-scaling"),
                    path, "'llama'", "rope_factors_long/short only while rope.scaling.type is longrope")
    assert sha256(path) == before and sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_phi3_long_short_factors_are_warned_about_when_replacing_its_scaling(cli, tmp_path):
    path = _longrope_file(tmp_path, "phi3")
    r = cli("gguf", path, "--ctx", "512", "--method", "yarn", "--replace-scaling", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "ropepatch: warning: llama.cpp's phi3 applies the file's rope_factors_long/short" in r.stderr


# ---- the row's claim in the real runtime: rope_freqs on qwen2 fails the load, on llama it loads --------


def _with_rope_freqs(src: str, dst: str, n_pairs: int) -> str:
    """gguf-py (an independent writer) copies ``src`` with every key and tensor, plus a
    rope_freqs.weight F32 tensor of ``n_pairs`` ones."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        sub = {"sub_type": f.types[-1]} if f.types[0] == GGUFValueType.ARRAY else {}
        w.add_key_value(f.name, f.contents(), f.types[0], **sub)
    w.add_tensor("rope_freqs.weight", np.ones(n_pairs, dtype=np.float32))
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


_LOAD = ("import sys, llama_cpp\n"
         "llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=True)\n"
         "print('LOADED')\n")


@pytest.mark.parametrize("fixture, loads", [("tiny-llama-f32.gguf", True), ("tiny-qwen2-f32.gguf", False)])
def test_llama_cpp_loads_rope_freqs_exactly_where_the_map_says(tmp_path, fixture, loads):
    require("gguf")
    require("llama_cpp")
    src = str(FIXTURES / fixture)
    info = inspect_gguf(src).current
    assert fx.reads_freq_factors(info.arch) is loads
    path = _with_rope_freqs(src, str(tmp_path / fixture), info.rope_dim // 2)
    r = subprocess.run([sys.executable, "-c", _LOAD, path], capture_output=True, text=True, timeout=120)
    if loads:
        assert r.returncode == 0 and "LOADED" in r.stdout, r.stderr[-2000:]
    else:
        assert r.returncode != 0 and "LOADED" not in r.stdout
        assert "wrong number of tensors" in r.stderr, r.stderr[-2000:]
