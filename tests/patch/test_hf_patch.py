"""Hugging Face models, patch and revert: each method end to end (config.json rope settings,
safetensors provenance, exact revert), headers rewritten or written in place, patches that never
compound, no-ops and dry runs, plans and snippets.

Real files, no mocks: small model directories are built in tmp_path (config.json written with
indent 2 and 4, tabs and CRLF, safetensors written with safetensors.numpy) and the committed
fixtures/hf models are copied when present (_helpers_hf.py).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from _helpers_hf import METHODS, L, N, cfg_of, fixture_model, llama_config, make_model, meta_of, snapshot, tensors
from safetensors.numpy import load_file

from ropepatch.errors import NotPatchedError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import inspect_hf, patch_hf, plan_hf, plan_hf_snippets, revert_hf
from ropepatch.rope.methods import ntk_base

# ---- each method, end to end --------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("method", METHODS)
def test_patch_and_revert_each_method(tmp_path, name, method):
    d = fixture_model(tmp_path, name)
    before = snapshot(d)
    text0 = (d / "config.json").read_text()
    tensors_before = load_file(str(d / "model.safetensors"))
    r = patch_hf(str(d), N, method)
    assert r.changed and not r.dry_run
    cfg = cfg_of(d)
    s = N / L
    if method == "ntk":
        assert cfg["rope_theta"] == pytest.approx(10000.0 * s ** (16 / 14), rel=1e-12)
        assert cfg["rope_scaling"] is None
        assert cfg["max_position_embeddings"] == N
    elif method == "dynamic":
        assert cfg["rope_scaling"] == {"factor": 4.0, "rope_type": "dynamic"}
        assert isinstance(cfg["rope_scaling"]["factor"], float)
        assert cfg["max_position_embeddings"] == L  # the ORIGINAL length
        assert cfg["rope_theta"] == 10000.0
    elif method == "linear":
        assert cfg["rope_scaling"] == {"factor": 4.0, "rope_type": "linear"}
        assert cfg["max_position_embeddings"] == L
    else:
        assert cfg["rope_scaling"] == {
            "factor": 4.0, "original_max_position_embeddings": L, "rope_type": "yarn"}
        assert cfg["max_position_embeddings"] == N
    # provenance in the shard, "format" kept, tensors untouched
    meta = meta_of(d / "model.safetensors")
    assert meta["format"] == "pt"
    assert meta[hk.RP_METHOD] == method and meta[hk.RP_CTX] == str(N)
    assert float(meta[hk.RP_ALPHA]) == 4.0
    rec = json.loads(meta[hk.RP_ORIGINAL])
    assert rec["config"] == text0 and rec["metadata"] == '{"format":"pt"}'
    after = load_file(str(d / "model.safetensors"))
    assert all(np.array_equal(after[k], v) for k, v in tensors_before.items())
    assert json.loads(json.dumps(r.to_dict()))["patched"]["rope_type"] == hk.METHOD_ROPE_TYPE[method]
    info = inspect_hf(str(d))
    assert json.loads(json.dumps(info.to_dict()))["record"]["method"] == method
    assert info.patched and info.record["method"] == method and info.record["ctx"] == N
    assert info.original.max_position_embeddings == L and info.original.rope_type == "default"
    assert info.rope.effective_ctx == N
    # revert: config.json and the shard byte-identical
    rv = revert_hf(str(d))
    assert rv.changed
    assert snapshot(d) == before
    with pytest.raises(NotPatchedError, match=r"no shard carries a ropepatch.original record; nothing to revert"):
        revert_hf(str(d))


def test_indent4_unsorted_keys_and_order_kept(tmp_path):
    cfg = llama_config()
    del cfg["rope_scaling"]  # the key is absent: it is added at the end (keys are not sorted)
    cfg = {"model_type": "llama", **{k: v for k, v in cfg.items() if k != "model_type"}}
    d = make_model(tmp_path / "m", cfg, indent=4)
    text0 = (d / "config.json").read_text()
    patch_hf(str(d), N, "yarn")
    text = (d / "config.json").read_text()
    expected = dict(cfg, max_position_embeddings=N)
    expected["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    assert text == json.dumps(expected, indent=4) + "\n"
    assert list(json.loads(text))[: len(cfg)] == list(cfg)
    revert_hf(str(d))
    assert (d / "config.json").read_text() == text0


def test_tab_indent_and_crlf_kept(tmp_path):
    d = make_model(tmp_path / "m")
    text = json.dumps(llama_config(), indent="\t").replace("\n", "\r\n") + "\r\n"
    (d / "config.json").write_bytes(text.encode())
    patch_hf(str(d), N, "linear")
    new = (d / "config.json").read_bytes().decode()
    assert "\r\n\t\"rope_scaling\": {\r\n\t\t\"factor\": 4.0," in new
    assert new.endswith("}\r\n")
    revert_hf(str(d))
    assert (d / "config.json").read_bytes() == text.encode()


def test_alpha_and_partial_rotary(tmp_path):
    d = make_model(tmp_path / "m", llama_config(partial_rotary_factor=0.5))
    r = patch_hf(str(d), N, "ntk", alpha=8.0)
    assert r.plan.original.rope_dim == 8
    assert cfg_of(d)["rope_theta"] == pytest.approx(ntk_base(10000.0, 8, 8.0))
    assert cfg_of(d)["rope_theta"] == pytest.approx(10000.0 * 8.0 ** (8 / 6))
    patch_hf(str(d), N, "dynamic", alpha=2.0)
    assert cfg_of(d)["rope_scaling"] == {"factor": 2.0, "rope_type": "dynamic"}


# ---- header paths: in place vs rewrite ------------------------------------------------------


def test_first_patch_rewrites_then_repatch_in_place(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    n0 = read_header(str(st)).header_length
    r1 = patch_hf(str(d), N, "ntk")
    assert [f.action for f in r1.files] == ["rewrite", "rewrite"]
    h1 = read_header(str(st))
    assert h1.header_length > n0 and h1.header_length % 8 == 0
    ino = os.stat(st).st_ino
    r2 = patch_hf(str(d), 2048, "yarn")
    assert r2.files[0].action == "in-place"
    assert os.stat(st).st_ino == ino  # same inode: written in place
    assert read_header(str(st)).header_length == h1.header_length
    # revert goes back to the original (smaller) header: a rewrite
    rv = revert_hf(str(d))
    assert [f.action for f in rv.files] == ["rewrite", "rewrite"]
    assert read_header(str(st)).header_length == n0


def _pad_header(path: Path, extra: int) -> None:
    """Re-write a safetensors file with ``extra`` spaces of header padding."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = raw[8 : 8 + n] + b" " * extra
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])


def test_metadata_that_fits_is_written_in_place(tmp_path):
    d = make_model(tmp_path / "m")
    st = d / "model.safetensors"
    _pad_header(st, 8192)
    before = snapshot(d)
    ino = os.stat(st).st_ino
    r = patch_hf(str(d), N, "yarn")
    assert r.files[0].action == "in-place"
    assert os.stat(st).st_ino == ino
    h = read_header(str(st))
    assert h.header_length == read_header(str(st)).header_length  # unchanged length
    assert load_file(str(st)).keys() == tensors().keys()
    rv = revert_hf(str(d))
    assert rv.files[1].action == "in-place"  # [config, shard]
    assert snapshot(d) == before


def test_file_without_metadata_gets_format_pt_and_reverts_exactly(tmp_path):
    d = make_model(tmp_path / "m", metadata={})
    st = d / "model.safetensors"
    assert read_header(str(st)).metadata is None
    before = snapshot(d)
    patch_hf(str(d), N, "linear")
    meta = meta_of(st)
    assert list(meta)[0] == "format" and meta["format"] == "pt"
    revert_hf(str(d))
    assert snapshot(d) == before


def test_other_metadata_and_tensor_order_kept(tmp_path):
    d = make_model(tmp_path / "m", metadata={"format": "pt", "note": "ünïcode ok"})
    st = d / "model.safetensors"
    h0 = read_header(str(st))
    patch_hf(str(d), N, "ntk")
    h1 = read_header(str(st))
    assert [t.name for t in h1.tensors] == [t.name for t in h0.tensors]
    assert [(t.begin, t.end) for t in h1.tensors] == [(t.begin, t.end) for t in h0.tensors]
    meta = dict(h1.metadata)
    assert list(meta)[:2] == list(h0.metadata) and meta["note"] == "ünïcode ok"
    # the text outside __metadata__ is untouched
    a, b = h1.metadata_span
    a0, b0 = h0.metadata_span
    assert h1.json_text[:a] == h0.json_text[:a0] and h1.json_text[b:] == h0.json_text[b0:]


# ---- never compound, no-op --------------------------------------------------------------------


def test_patch_twice_equals_patch_once(tmp_path):
    once = make_model(tmp_path / "once")
    twice = make_model(tmp_path / "twice")
    patch_hf(str(once), 1024, "ntk")
    patch_hf(str(twice), 512, "yarn")
    patch_hf(str(twice), 4096, "dynamic", alpha=3.0)
    patch_hf(str(twice), 1024, "ntk")
    assert (once / "config.json").read_bytes() == (twice / "config.json").read_bytes()
    m1, m2 = meta_of(once / "model.safetensors"), meta_of(twice / "model.safetensors")
    assert m1 == m2
    assert json.loads(m1[hk.RP_ORIGINAL])["config"] == json.dumps(llama_config(), indent=2) + "\n"
    r = inspect_hf(str(twice))
    assert r.original.rope_theta == 10000.0 and r.original.max_position_embeddings == L


def test_same_patch_again_writes_nothing(tmp_path):
    d = make_model(tmp_path / "m")
    patch_hf(str(d), N, "yarn")
    before = snapshot(d)
    mtimes = {p: os.stat(p).st_mtime_ns for p in d.iterdir()}
    r = patch_hf(str(d), N, "yarn")
    assert not r.changed
    assert {f.action for f in r.files} == {"unchanged"}
    assert "nothing written" in r.messages[-1]
    assert snapshot(d) == before
    assert {p: os.stat(p).st_mtime_ns for p in d.iterdir()} == mtimes


def test_dry_run_writes_nothing(tmp_path):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    r = patch_hf(str(d), N, "yarn", dry_run=True)
    assert r.dry_run and r.changed
    assert r.patched.rope_type == "yarn" and r.patched.max_position_embeddings == N
    assert {c.key for c in r.changes} == {"max_position_embeddings", "rope_scaling"}
    assert snapshot(d) == before


# ---- plan and snippets ----------------------------------------------------------------------


def test_plan_and_snippets(tmp_path):
    d = make_model(tmp_path / "m")
    before = snapshot(d)
    plan = plan_hf(str(d), N, "yarn")
    sn = plan_hf_snippets(plan)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    assert sn["transformers_v4"] == {"rope_theta": 10000.0, "rope_scaling": yarn, "max_position_embeddings": N}
    assert sn["transformers_v5"] == {"rope_parameters": {**yarn, "rope_theta": 10000.0}, "max_position_embeddings": N}
    assert json.loads(sn["vllm_hf_overrides"]) == sn["transformers_v4"]
    assert sn["vllm_args"].endswith(f"--max-model-len {N}")
    sn = plan_hf_snippets(plan_hf(str(d), N, "dynamic"))
    assert sn["rope_scaling"] == {"rope_type": "dynamic", "factor": 4.0}
    assert sn["max_position_embeddings"] == L and sn["notes"]
    sn = plan_hf_snippets(plan_hf(str(d), N, "ntk"))
    assert sn["rope_scaling"] is None and sn["transformers_v5"]["rope_parameters"]["rope_type"] == "default"
    assert sn["rope_theta"] == pytest.approx(10000.0 * 4 ** (16 / 14))
    assert snapshot(d) == before
    # a patched model plans from its originals
    patch_hf(str(d), 4096, "linear")
    assert plan_hf(str(d), N, "yarn") == plan


def test_inspect_unpatched(tmp_path):
    d = fixture_model(tmp_path, "tiny-qwen2")
    info = inspect_hf(str(d))
    assert not info.patched and info.record is None and info.original is None
    assert info.rope.model_type == "qwen2" and info.rope.head_dim == 16 and info.rope.rope_dim == 16
    assert info.params.layout.value == "neox" and info.params.n_ctx_train == L
    assert json.loads(json.dumps(info.to_dict()))["rope"]["rope_type"] == "default"
