"""Cross-format translation (--from-hf, --as-hf) and the HF commands through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES, sha256

from ropepatch.errors import UsageError
from ropepatch.patch import gguf as gp
from ropepatch.patch.hf import patch_hf
from ropepatch.patch.translate import plan_from_hf


@pytest.fixture
def pair(tmp_path):
    """The tiny llama as GGUF and as HF (same weights), copied to tmp_path."""
    g = tmp_path / "m.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", g)
    shutil.copytree(FIXTURES / "hf" / "tiny-llama", tmp_path / "hf")
    return str(g), str(tmp_path / "hf")


@pytest.mark.parametrize("method", ["ntk", "dynamic", "linear", "yarn"])
def test_from_hf_reproduces_the_same_extension(pair, method, cli):
    g, hf = pair
    patch_hf(hf, 512, method)
    tr = plan_from_hf(f"{hf}/config.json", gp.inspect_gguf(g).original, 512 if method == "dynamic" else None)
    assert (tr.method, tr.ctx) == (method, 512)
    assert tr.alpha == pytest.approx(4.0)
    r = cli("gguf", g, "--from-hf", f"{hf}/config.json", *(["--ctx", "512"] if method == "dynamic" else []), "--json")
    assert r.returncode == 0, r.stderr
    if method == "dynamic":
        assert "llama.cpp has no dynamic NTK mode" in r.stderr
    direct = gp.make_plan(gp.inspect_gguf(g).original, 512, method, 4.0).target
    cur = gp.inspect_gguf(g).current
    assert cur.freq_base == pytest.approx(direct.freq_base, rel=1e-6)
    assert (cur.scaling_type, cur.n_ctx_train) == (direct.scaling_type, 512)


def test_as_hf_round_trips_through_from_hf(pair, cli):
    g, _ = pair
    gp.patch_gguf(g, 1024, "yarn")
    r = cli("inspect", g, "--as-hf", "--json")
    assert r.returncode == 0, r.stderr
    block = json.loads(r.stdout)["transformers_v4"]
    assert block["rope_scaling"] == {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 128}
    assert block["max_position_embeddings"] == 1024


def test_as_hf_of_an_unpatched_file_restates_it(pair, cli):
    g, _ = pair
    r = cli("inspect", g, "--as-hf", "--json")
    block = json.loads(r.stdout)["transformers_v4"]
    assert block == {"rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 128}


def test_from_hf_refuses_configs_without_extension_or_for_another_model(pair, tmp_path, cli):
    g, hf = pair
    with pytest.raises(UsageError, match="carries no context extension"):
        plan_from_hf(f"{hf}/config.json", gp.inspect_gguf(g).original)
    cfg = json.loads(open(f"{hf}/config.json").read())
    cfg["head_dim"] = 32
    cfg["hidden_size"] = 128
    p = tmp_path / "other.json"
    p.write_text(json.dumps(cfg))
    r = cli("gguf", g, "--from-hf", str(p))
    assert r.returncode == 2 and "do not match the GGUF's 16" in r.stderr
    r = cli("gguf", g, "--from-hf", f"{hf}/config.json", "--method", "yarn")
    assert r.returncode == 2 and "drop --method/--alpha" in r.stderr


def test_hf_cli_patch_inspect_plan_revert(pair, cli):
    _, hf = pair
    before = {f: sha256(f"{hf}/{f}") for f in ("config.json", "model.safetensors")}
    r = cli("plan", hf, "--ctx", "512", "--json")
    assert r.returncode == 0, r.stderr
    plans = json.loads(r.stdout)["plans"]
    assert set(plans) == {"ntk", "dynamic", "linear", "yarn"}
    assert "--hf-overrides" in plans["yarn"]["hf"]["vllm_args"]
    r = cli("hf", hf, "--ctx", "512", "--method", "dynamic", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["patched"]["rope_type"] == "dynamic" and out["patched"]["max_position_embeddings"] == 128
    r = cli("inspect", hf, "--json")
    assert json.loads(r.stdout)["record"]["method"] == "dynamic"
    r = cli("revert", hf)
    assert r.returncode == 0, r.stderr
    assert {f: sha256(f"{hf}/{f}") for f in before} == before
    r = cli("revert", hf)
    assert r.returncode == 2 and "ropepatch: error:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
