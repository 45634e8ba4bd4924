"""Per-pair frequency factors (ntk-parts, factors) written as rope_freqs.weight: the first patch
adds the tensor (rewrite), re-patches change its bytes in place (one data pwrite), other
methods and revert take it back out (or restore a llama3-style file's own bytes); every file
loads in the real llama-cpp-python, which applies the factors; revert gives the original
sha256."""

from __future__ import annotations

import json
import math
import struct

import pytest
from conftest import FIXTURES, require, sha256

from ropepatch.errors import FormatError, UnsupportedModelError, UsageError
from ropepatch.formats.gguf.header import TensorInfo, make_kv, read_header, serialize_header
from ropepatch.formats.gguf.keys import ValueType
from ropepatch.formats.gguf.tensors import ROPE_FREQS, data_size, encode_tensor_info, find_tensor, pad_to
from ropepatch.patch import gguf as gp
from ropepatch.rope import factors as ff

llama_cpp = require("llama_cpp")
gguf = require("gguf")

LLAMA = ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf"]
CTX = 512  # 4x the fixtures' 128
N_PAIRS = 8  # the fixtures' rope_dim 16 / 2


def with_rope_freqs(src, dst, values, ggml_type=0) -> str:
    """A llama3-style copy of ``src``: rope_freqs.weight (F32, or F16 with ``ggml_type=1``)
    holding ``values``, appended after the other tensors."""
    h = read_header(str(src))
    offset = data_size(h.tensors, h.alignment)
    fmt = "<%de" if ggml_type == 1 else "<%df"
    blob = struct.pack(fmt % len(values), *values)
    info = encode_tensor_info(TensorInfo(ROPE_FREQS, (len(values),), ggml_type, offset))
    head = serialize_header(h.version, h.kvs, h.tensor_info_raw + info, len(h.tensors) + 1)
    head += bytes(pad_to(len(head), h.alignment) - len(head))
    with open(src, "rb") as f:
        f.seek(h.data_offset)
        data = f.read()
    data += bytes(offset - len(data)) + blob + bytes(pad_to(len(blob), h.alignment) - len(blob))
    with open(dst, "wb") as f:
        f.write(head + data)
    return str(dst)


def gguf_py_factors(path) -> tuple[float, ...] | None:
    """rope_freqs.weight as gguf-py's own reader sees it (an independent parser)."""
    r = gguf.GGUFReader(str(path))
    t = next((t for t in r.tensors if t.name == ROPE_FREQS), None)
    return None if t is None else tuple(float(x) for x in t.data)


def logits(path, n_tokens=24):
    """The real runtime's logits of a fixed prompt (positions 0..n-1) for ``path``."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, seed=0)
    try:
        toks = (llm.tokenize(b"the quick brown fox jumps over the lazy dog " * 4))[:n_tokens]
        llm.eval(toks)
        return [list(row) for row in llm.scores[: len(toks)]], llama_cpp.llama_model_n_ctx_train(llm.model)
    finally:
        llm.close()


@pytest.mark.parametrize("fixture", LLAMA)
def test_ntk_parts_adds_rope_freqs_loads_and_reverts(copy_fixture, fixture):
    path = copy_fixture(fixture)
    before = sha256(path)
    res = gp.patch_gguf(path, CTX, "ntk-parts")
    assert res.mode == "rewrite" and res.tensor_change.startswith(f"{ROPE_FREQS} added (8 F32")
    want = ff.ntk_parts_factors(16, 10000.0, 128, CTX / 128)
    assert res.plan.target.freq_factors == want
    info = gp.inspect_gguf(path)
    assert info.current.freq_factors == want and info.current.has_freq_factors
    assert info.original.freq_factors == () and not info.original.has_freq_factors
    assert info.provenance.options == {"beta_fast": 32.0, "beta_slow": 1.0}
    assert gguf_py_factors(path) == want
    h0, h1 = read_header(str(FIXTURES / fixture)), read_header(path)
    assert h1.tensors[-1] == TensorInfo(ROPE_FREQS, (N_PAIRS,), 0, data_size(h0.tensors, h0.alignment))
    assert h1.file_size == h1.data_offset + data_size(h1.tensors, h1.alignment)
    _, n_ctx_train = logits(path, 4)
    assert n_ctx_train == CTX
    rv = gp.revert_gguf(path)
    assert rv.tensor_change.endswith("removed (the original file has none)")
    assert sha256(path) == before


def test_llama_cpp_applies_the_factors(copy_fixture, tmp_path):
    """All-ones factors give the original's logits exactly; the ntk-parts ramp changes them:
    the runtime reads the tensor ropepatch wrote and divides by it."""
    orig = copy_fixture("tiny-llama-f32.gguf")
    ones = copy_fixture("tiny-llama-f32.gguf", "ones.gguf")
    ramp = copy_fixture("tiny-llama-f32.gguf", "ramp.gguf")
    gp.patch_gguf(ones, CTX, "factors", options={"points": (1.0, 1.0)})
    gp.patch_gguf(ramp, CTX, "ntk-parts", alpha=16.0)
    assert gguf_py_factors(ones) == (1.0,) * N_PAIRS
    base, _ = logits(orig)
    assert logits(ones)[0] == base
    changed = logits(ramp)[0]
    assert changed[0] == base[0]  # position 0: no rotation, factors or not
    assert max(abs(a - b) for ra, rb in zip(changed[1:], base[1:]) for a, b in zip(ra, rb)) > 1e-3


@pytest.mark.parametrize("fixture", LLAMA)
def test_repatch_is_one_in_place_data_write(copy_fixture, fixture):
    path = copy_fixture(fixture)
    before = sha256(path)
    gp.patch_gguf(path, CTX, "ntk-parts")
    size = read_header(path).file_size
    res = gp.patch_gguf(path, CTX, "ntk-parts", alpha=6.0)
    assert res.mode == "in-place" and res.tensor_change.startswith(f"{ROPE_FREQS} data changed")
    assert 0 < res.data_bytes <= N_PAIRS * 4 and res.data_bytes < res.bytes_written < 4096
    assert gp.inspect_gguf(path).current.freq_factors == ff.ntk_parts_factors(16, 10000.0, 128, 6.0)
    assert gguf_py_factors(path) == ff.ntk_parts_factors(16, 10000.0, 128, 6.0)
    assert read_header(path).file_size == size
    again = gp.patch_gguf(path, CTX, "ntk-parts", alpha=6.0)
    assert again.mode == "no-op" and again.bytes_written == 0
    beta = gp.patch_gguf(path, CTX, "ntk-parts", alpha=6.0, options={"beta_slow": 0.25})
    assert beta.mode == "in-place" and beta.data_bytes > 0
    assert gp.inspect_gguf(path).provenance.options == {"beta_fast": 32.0, "beta_slow": 0.25}
    _, n_ctx_train = logits(path, 4)
    assert n_ctx_train == CTX
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_factors_points_and_method_switches_revert_to_original(copy_fixture):
    path = copy_fixture("tiny-llama-q8_0.gguf")
    before = sha256(path)
    pts = (1.0, 1.5, 2.0, 4.0)
    res = gp.patch_gguf(path, CTX, "factors", options={"points": pts})
    assert res.plan.target.freq_factors == ff.profile_factors(N_PAIRS, pts)
    assert gguf_py_factors(path) == ff.profile_factors(N_PAIRS, pts)
    assert gp.inspect_gguf(path).provenance.options == {"points": pts, "attn_factor": 1.0}
    for method, tensor in (("yarn", None), ("ntk-parts", "added"), ("ntk", None), ("factors", "added")):
        r = gp.patch_gguf(path, 1024, method)
        assert r.mode == "rewrite", method
        has = find_tensor(read_header(path), ROPE_FREQS) is not None
        assert has == (tensor is not None), method
        _, n_ctx_train = logits(path, 4)
        assert n_ctx_train == 1024
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_ntk_first_then_ntk_parts_records_the_absent_tensor(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    gp.patch_gguf(path, CTX, "ntk")
    assert gp.inspect_gguf(path).provenance.record.rope_freqs is None
    r = gp.patch_gguf(path, CTX, "ntk-parts")
    assert r.tensor_change.startswith(f"{ROPE_FREQS} added")
    assert gp.inspect_gguf(path).provenance.record.rope_freqs.raw is None
    gp.revert_gguf(path)
    assert sha256(path) == before


LLAMA3 = (1.0, 1.0, 1.0, 1.25, 2.0, 4.0, 8.0, 8.0)


@pytest.mark.parametrize("fixture", LLAMA)
def test_compose_with_llama3_style_factors(copy_fixture, tmp_path, fixture):
    path = with_rope_freqs(FIXTURES / fixture, tmp_path / "l3.gguf", LLAMA3)
    before = sha256(path)
    info = gp.inspect_gguf(path)
    assert info.current.freq_factors == LLAMA3
    _, n0 = logits(path, 4)  # the runtime takes our llama3-style file too
    assert n0 == 128
    res = gp.patch_gguf(path, CTX, "ntk-parts")
    new = ff.ntk_parts_factors(16, 10000.0, 128, CTX / 128)
    product = tuple(ff.f32(a * b) for a, b in zip(LLAMA3, new))
    assert res.tensor_change.startswith(f"{ROPE_FREQS} data changed")
    assert gp.inspect_gguf(path).current.freq_factors == product == gguf_py_factors(path)
    assert gp.inspect_gguf(path).original.freq_factors == LLAMA3  # never compounds
    assert gp.inspect_gguf(path).provenance.record.rope_freqs.raw == struct.pack("<8f", *LLAMA3)
    again = gp.patch_gguf(path, CTX, "ntk-parts", alpha=8.0)
    assert again.mode == "in-place" and again.data_bytes > 0
    assert gguf_py_factors(path) == tuple(
        ff.f32(a * b) for a, b in zip(LLAMA3, ff.ntk_parts_factors(16, 10000.0, 128, 8.0)))
    _, n1 = logits(path, 4)
    assert n1 == CTX
    repl = gp.patch_gguf(path, CTX, "factors", options={"points": (1.0, 3.0)}, replace_scaling=True)
    assert repl.plan.target.freq_factors == ff.profile_factors(N_PAIRS, (1.0, 3.0))
    assert gguf_py_factors(path) == ff.profile_factors(N_PAIRS, (1.0, 3.0))
    gp.revert_gguf(path)
    assert sha256(path) == before


def test_unreadable_rope_freqs_is_inspectable_and_refused(tmp_path):
    """An F16 rope_freqs: inspect works (factors not read), a factor method is refused."""
    path = with_rope_freqs(FIXTURES / "tiny-llama-f32.gguf", tmp_path / "f16.gguf", LLAMA3, ggml_type=1)
    info = gp.inspect_gguf(path)
    assert info.current.has_freq_factors and info.current.freq_factors == ()
    before = sha256(path)
    with pytest.raises(UnsupportedModelError, match="cannot compose"):
        gp.patch_gguf(path, CTX, "ntk-parts")
    with pytest.raises(UnsupportedModelError, match="not F32"):
        gp.patch_gguf(path, CTX, "ntk-parts", replace_scaling=True)
    assert sha256(path) == before


def test_no_record_refused_and_dry_run_shows_the_tensor(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    with pytest.raises(UsageError, match="--no-record cannot write the per-pair factors of ntk-parts"):
        gp.patch_gguf(path, CTX, "ntk-parts", record=False, out=path + ".out")
    dry = gp.patch_gguf(path, CTX, "ntk-parts", dry_run=True)
    assert dry.mode == "dry-run" and dry.tensor_change == f"{ROPE_FREQS} added (8 F32 factors, 32 bytes)"
    assert sha256(path) == before
    with pytest.raises(UsageError, match="does not take"):
        gp.patch_gguf(path, CTX, "ntk-parts", options={"points": (1.0, 2.0)})


def _set_string(path, key, text):
    """Rewrite ``path`` with string entry ``key`` set to ``text`` (the data bytes kept)."""
    h = read_header(path)
    kvs = [make_kv(key, ValueType.STRING, text) if kv.key == key else kv for kv in h.kvs]
    head = serialize_header(h.version, kvs, h.tensor_info_raw, len(h.tensors))
    head += bytes(pad_to(len(head), h.alignment) - len(head))
    with open(path, "rb") as f:
        f.seek(h.data_offset)
        data = f.read()
    shift = len(head) - h.data_offset
    assert shift % h.alignment == 0
    with open(path, "wb") as f:
        f.write(head + data)


@pytest.mark.parametrize("bad", ['{"beta_fast":"x"}', "[1,2]", '{"beta_fast":1e999}', "not json"])
def test_damaged_options_refused_but_revert_works(copy_fixture, bad):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    gp.patch_gguf(path, CTX, "ntk-parts", options={"beta_fast": 16.0})
    h = read_header(path)
    _set_string(path, "ropepatch.options", bad.ljust(len(h.get("ropepatch.options"))))
    with pytest.raises(FormatError, match="ropepatch.options.*damaged.*revert"):
        gp.inspect_gguf(path)
    gp.revert_gguf(path)
    assert sha256(path) == before


@pytest.mark.parametrize("field", [{"raw": "zz"}, {"raw": "0000803f"}, {"data_length": -1},
                                   {"data_length": 10**12}, {"raw": "0000803f", "data_length": 1}, []])
def test_damaged_rope_freqs_record_is_one_line(copy_fixture, field):
    path = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(path, CTX, "ntk-parts")
    text = read_header(path).get("ropepatch.original")
    d = json.loads(text)
    d["rope_freqs"] = field
    new = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert len(new) <= len(text)  # fits the page-padded record: the header keeps its size
    _set_string(path, "ropepatch.original", new.ljust(len(text)))
    for fn in (gp.inspect_gguf, gp.revert_gguf):
        with pytest.raises(FormatError) as e:
            fn(path)
        assert "\n" not in str(e.value) and "rope_freqs" in str(e.value)


def test_old_records_without_options_load(copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(path, CTX, "yarn")
    prov = gp.inspect_gguf(path).provenance
    assert prov.options == {} and prov.record.rope_freqs is None
    assert read_header(path).get("ropepatch.options") is None  # methods without options: no key
    assert math.isclose(prov.alpha, 4.0)


def test_kills_during_the_tensor_writes_leave_a_revertable_file(tmp_path):
    """kill -9 after every write step of the add-tensor rewrite and of the in-place re-patch
    (header run, then one factor-data pwrite): the file is the original, the complete result,
    or (between the two in-place writes) new keys with the old factors, which reverts to the
    original and is finished by running the command again. Nothing else, ever."""
    import sys

    sys.path.insert(0, str(FIXTURES.parent / "tools"))
    import crash_harness as ch

    scenarios = ch.FACTOR_SCENARIOS[:2]
    c, rows = ch.kill_matrix(["tiny-llama-f32.gguf"], scenarios, str(tmp_path), jobs=2, log=None)
    assert c.problems == [] and c.corrupt == 0 and c.other_valid == 0 and c.retry_failed == 0
    first, repatch = rows
    assert first["kills"] >= 8 and first["original"] == first["retry_ok"] > 0 and first["patched"] > 0
    assert repatch["kills"] == 4 and repatch["partial"] == 2 and repatch["patched"] == 2


@pytest.mark.parametrize("replace", [False, True])
def test_recorded_plan_rebuilds_the_written_factors(tmp_path, replace):
    """On a llama3-style file, composing and replacing (--replace-scaling) are both valid
    plans: the provenance says which one was written, so a rebuilt plan gives the file's factors."""
    from ropepatch.rope.methods import make_plan

    path = with_rope_freqs(FIXTURES / "tiny-llama-f32.gguf", tmp_path / "l3.gguf", LLAMA3)
    gp.patch_gguf(path, CTX, "factors", options={"points": (1.0, 2.0, 2.0)}, replace_scaling=replace)
    info = gp.inspect_gguf(path)
    prov = info.provenance
    assert prov.replace_scaling is replace and prov.options == {"points": (1.0, 2.0, 2.0), "attn_factor": 1.0}
    rebuilt = make_plan(info.original, prov.ctx, prov.method, prov.alpha, prov.replace_scaling, options=prov.options)
    assert rebuilt.target.freq_factors == info.current.freq_factors == gguf_py_factors(path)


def test_cli_factor_options_json_and_refusals(cli, copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    r = cli("gguf", path, "--ctx", "512", "--method", "yarn", "--factors", "1,2")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--factors does not apply to method yarn" in r.stderr
    r = cli("gguf", path, "--ctx", "512", "--method", "factors", "--factors", "2,1")
    assert r.returncode == 2 and "never decrease" in r.stderr and sha256(path) == before
    r = cli("plan", path, "--ctx", "512", "--method", "ntk-parts", "--beta-slow", "0.5")
    assert r.returncode == 0 and "patch the file first" in r.stdout and "--beta-slow 0.5" in r.stdout
    r = cli("gguf", path, "--ctx", "512", "--method", "factors", "--factors", "1,1.5,3", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    want = list(ff.profile_factors(N_PAIRS, (1.0, 1.5, 3.0)))
    assert (d["plan"]["params"]["freq_factors"] == want
            and d["plan"]["options"] == {"points": [1.0, 1.5, 3.0], "attn_factor": 1.0})
    assert d["tensor_change"].startswith(f"{ROPE_FREQS} added") and d["mode"] == "rewrite"
    assert "rope flags" not in d["next_steps"]["llama-server"] and d["next_steps"]["llama-server"].endswith("-c 512")
    r = cli("gguf", path, "--ctx", "512", "--method", "ntk-parts", "--beta-fast", "16")
    assert r.returncode == 0 and "data changed" in r.stdout and "tensor data" in r.stdout
    assert "8 per-pair divisors 1..4 (beta_fast 16, beta_slow 1)" in r.stdout
    r = cli("revert", path)
    assert r.returncode == 0 and "removed" in r.stdout and sha256(path) == before


def test_as_hf_refuses_a_factor_patched_file(copy_fixture):
    """No transformers rope block carries arbitrary per-pair divisors: --as-hf says so instead
    of printing a default block that would silently drop them."""
    from ropepatch.errors import UnsupportedModelError
    from ropepatch.patch.translate import gguf_as_hf

    path = copy_fixture("tiny-llama-f32.gguf")
    gp.patch_gguf(path, CTX, "ntk-parts")
    with pytest.raises(UnsupportedModelError, match="no single HF rope block"):
        gguf_as_hf(gp.inspect_gguf(path))
