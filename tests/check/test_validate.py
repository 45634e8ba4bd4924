"""``ropepatch validate`` against the real runtime (llama-cpp-python), no mocks.

* Every fixture (tiny llama / qwen2, F32 / Q8_0, training ctx 128) patched with every method
  to ctx 1024 (8x) passes checks a-d on CPU: the runtime reads back what ropepatch wrote, the
  ROPE ops it builds carry exactly the planned parameters, the NumPy reference rotary
  reproduces its rotation at positions 120..135 and 1008..1023, and the NumPy reference
  forward reproduces its logits over positions 704..1023 (attention distances up to 319 > 128).
* Negative controls fail with the right reason: a base changed behind ropepatch's back, a
  wrong rotary layout, a wrong YaRN original context.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import FIXTURES, GGUF_FIXTURES, require

require("gguf")
require("llama_cpp")


from ropepatch.check.ggml_args import ggml_rope_args  # noqa: E402
from ropepatch.check.isolated import validate_isolated  # noqa: E402
from ropepatch.check.validate import (  # noqa: E402
    FAILED,
    PASSED,
    SKIPPED,
    ValidationReport,
    default_positions,
    format_report,
    parse_positions,
    validate,
)
from ropepatch.errors import UnsupportedModelError, UsageError  # noqa: E402
from ropepatch.formats.gguf.header import read_header  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf, patch_gguf  # noqa: E402
from ropepatch.rope.methods import METHODS, make_plan  # noqa: E402
from ropepatch.runtime.probe import gpu_available  # noqa: E402

CTX = 1024  # 8 x the fixtures' training context
L = 128


def patched(copy_fixture, name: str, method: str, ctx: int = CTX) -> str:
    path = copy_fixture(name, f"{method}-{name}")
    patch_gguf(path, ctx, method)
    return path


def poke(path: str, key: str, fmt: str, value) -> None:
    """Overwrite a scalar metadata value in place, behind ropepatch's back (provenance kept)."""
    h = read_header(path)
    kv = h.entry(key)
    assert kv is not None, key
    off = h.raw.find(kv.raw)
    assert off > 0 and h.raw.count(kv.raw) == 1
    off += len(kv.raw) - struct.calcsize(fmt)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))
    assert read_header(path).get(key) == pytest.approx(value)


def statuses(r: ValidationReport) -> dict[str, str]:
    return {c.id: c.status for c in r.checks}


def untimed(x):
    """A report's dict without its timings (which differ from run to run)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


# ---- every fixture x every method passes -------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", GGUF_FIXTURES)
def test_validate_passes_every_fixture_and_method(copy_fixture, name, method):
    if METHODS[method].writes_factors and "qwen2" in name:  # qwen2 loads no rope_freqs: refused, nothing to validate
        with pytest.raises(UnsupportedModelError, match="takes no per-pair factors in rope_freqs.weight"):
            patched(copy_fixture, name, method)
        return  # factor files: tests/check/test_validate_factors.py
    path = patched(copy_fixture, name, method)
    r = validate(path)
    assert r.passed, format_report(r)
    assert statuses(r) == {"a": PASSED, "b": PASSED, "c": PASSED, "d": PASSED}, format_report(r)
    info = inspect_gguf(path)
    plan = make_plan(info.original, CTX, method)
    assert (r.ctx, r.original_ctx, r.expected_source, r.device) == (CTX, L, "plan", "cpu")
    assert r.provenance["method"] == method and r.provenance["ctx"] == CTX

    # a: the runtime's training ctx is the target; the plan is recorded consistently
    a = r.check("a").figures
    assert a["n_ctx_train"] == {"runtime": CTX, "file": CTX}
    assert a["plan_consistent"] is True
    assert a["rope_type"]["runtime"] == ("norm" if "llama" in name else "neox")
    # b: the applied params are the plan's, exactly
    b = r.check("b").figures
    want = ggml_rope_args(plan.target)
    assert b["expected"] == want
    assert set(b["runtime"]) == {"Qcur-0", "Kcur-0"}
    for op in b["runtime"].values():
        assert op == want
    if method == "yarn":
        assert want["ext_factor"] == 1.0 and want["n_ctx_orig"] == L and want["freq_scale"] == 1 / 8
    # c: positions straddle L and reach ctx - 1; both reference modes within tolerance
    c = r.check("c").figures
    assert c["positions"] == [[L - 8, L + 7], [CTX - 16, CTX - 1]]
    assert c["n_captures"] == 4 and c["pass_through_max_abs"] == 0.0
    for mode in ("f32", "f64"):
        assert c[mode]["max_over_tol"] <= 1.0
    assert c["f32"]["max_rel"] <= 4 * np.finfo(np.float32).eps
    # d: attention spans distances beyond L at positions up to ctx - 1
    d = r.check("d").figures
    assert d["positions"] == [CTX - 320, CTX - 1] and d["beyond_original_ctx"]
    assert d["tolerance_class"] == ("q8_0" if "q8_0" in name else "f32")
    assert d["top1_agreement"] >= 0.98


def test_unpatched_file_and_report_formats(copy_fixture):
    """An unpatched file is checked against its own settings; default thread count; JSON and text."""
    path = copy_fixture("tiny-qwen2-f32.gguf")
    r = validate(path)
    assert r.passed, format_report(r)
    assert r.provenance is None and r.expected_source == "file" and r.ctx == L
    assert r.check("a").figures["plan_consistent"] is None
    assert r.check("c").figures["positions"] == [[L - 16, L - 1]]  # L-8..L-1 and L-16..L-1 merge
    d = json.loads(r.to_json())
    assert d["passed"] is True and [c["status"] for c in d["checks"]] == [PASSED] * 4
    assert d["expected"]["layout"] == "neox" and d["expected_op"]["mode"] == 2
    text = format_report(r)
    assert text.count("PASS ") == 4 and text.splitlines()[-1].startswith("OK: 0 check(s) failed")


def test_custom_positions_and_options(copy_fixture):
    path = patched(copy_fixture, "tiny-llama-q8_0.gguf", "linear")
    r = validate(path, positions=[0, 1, 2, 5000, 5001], reference_forward=False, n_threads=2)
    assert r.passed, format_report(r)
    assert r.check("c").figures["positions"] == [[0, 2], [5000, 5001]]
    assert r.check("d").status == SKIPPED and "not requested" in r.check("d").reason
    assert parse_positions("8180-8183, 16368") == [8180, 8181, 8182, 8183, 16368]
    for bad in ("", "x", "5-3", "-4"):
        with pytest.raises(UsageError):
            parse_positions(bad)
    assert default_positions(8192, 16384) == list(range(8184, 8200)) + list(range(16368, 16384))
    with pytest.raises(UsageError):
        validate(path + ".missing")


def test_gpu_layers(copy_fixture):
    """--gpu-layers passes through; without a GPU build the report says the GPU was not validated."""
    path = patched(copy_fixture, "tiny-qwen2-q8_0.gguf", "yarn")
    r = validate(path, gpu_layers=-1)
    assert r.passed, format_report(r)
    if gpu_available():
        assert r.device.startswith("gpu") and r.check("c").figures["judged_by"] == "f64"
    else:
        assert r.device == "cpu"
        assert any("GPU: not validated" in n for n in r.notes)
        assert "GPU: not validated" in format_report(r)


# ---- negative controls -------------------------------------------------------------------------


def test_negative_base_changed_behind_ropepatchs_back(copy_fixture):
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "ntk")
    planned = make_plan(inspect_gguf(path).original, CTX, "ntk").target.freq_base  # float64
    poke(path, "llama.rope.freq_base", "<f", 1e6)
    r = validate(path)
    assert not r.passed
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": FAILED, "d": FAILED}, format_report(r)
    a, b, c = (r.check(x).reason for x in "abc")
    assert "behind ropepatch's back" in a and "llama.rope.freq_base is 1000000 in the file" in a
    assert f"the recorded plan gives {planned:.9g}" in a
    assert "freq_base: runtime 1000000, plan 107672.016" in b and "runtime follows the file" in b
    assert "parameters differ, not the kernel" in c
    assert "\n" not in a + b + c


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf"])
def test_negative_wrong_rotary_layout(copy_fixture, name):
    """Expecting the other pairing (what a wrong architecture table in ropepatch would do)."""
    path = patched(copy_fixture, name, "yarn")
    actual, wrong = ("NORM", "NEOX") if "llama" in name else ("NEOX", "NORM")
    r = validate(path, expect={"layout": wrong.lower()}, reference_forward=False)
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": FAILED, "d": SKIPPED}, format_report(r)
    assert r.expected_source == "expected"
    assert f"runtime rope type {actual}" in r.check("a").reason
    assert f"mode: runtime {actual}, expected {wrong}" in r.check("b").reason
    c = r.check("c")
    assert c.figures["f32"]["max_over_tol"] > 1e4 and c.figures["runtime_params_max_over_tol"] <= 1
    assert "misses the runtime's output" in c.reason


def test_negative_wrong_yarn_original_ctx(copy_fixture):
    """original_context_length set to the target (a common mistake) behind ropepatch's back."""
    path = patched(copy_fixture, "tiny-qwen2-q8_0.gguf", "yarn")
    poke(path, "qwen2.rope.scaling.original_context_length", "<I", CTX)
    r = validate(path)
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": FAILED, "d": FAILED}, format_report(r)
    assert ("qwen2.rope.scaling.original_context_length is 1024 in the file, the recorded plan gives 128"
            in r.check("a").reason)
    assert "n_ctx_orig: runtime 1024, plan 128" in r.check("b").reason
    assert "parameters differ, not the kernel" in r.check("c").reason


def test_negative_yarn_original_ctx_only_check_b_sees(copy_fixture):
    """128 -> 64 leaves YaRN's integer correction dims at [0, 3] for d = 16, base 1e4: the
    rotation is bit-for-bit the same, so c and d pass; a and b catch the parameter itself."""
    path = patched(copy_fixture, "tiny-qwen2-q8_0.gguf", "yarn")
    poke(path, "qwen2.rope.scaling.original_context_length", "<I", 64)
    r = validate(path, reference_forward=False)
    assert statuses(r) == {"a": FAILED, "b": FAILED, "c": PASSED, "d": SKIPPED}, format_report(r)
    assert "n_ctx_orig: runtime 64, plan 128" in r.check("b").reason


def test_unreadable_file_is_not_handed_to_llama_cpp(copy_fixture):
    """A scaling type llama.cpp would abort on: check a fails from ropepatch's reader, nothing loads."""
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "yarn")
    h = read_header(path)
    kv = h.entry("llama.rope.scaling.type")
    off = h.raw.find(kv.raw) + len(kv.raw) - 4
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"yam!")  # "yarn" -> "yam!": same length
    r = validate(path)
    assert statuses(r) == {"a": FAILED, "b": SKIPPED, "c": SKIPPED, "d": SKIPPED}
    assert "ropepatch cannot read the file" in r.check("a").reason and "yam!" in r.check("a").reason


@pytest.mark.skipif(not gpu_available(), reason="llama-cpp-python built without GPU offload")
@pytest.mark.parametrize("name", GGUF_FIXTURES)
def test_validate_on_gpu(copy_fixture, name):
    path = patched(copy_fixture, name, "yarn")
    r = validate(path, gpu_layers=-1)
    assert r.device.startswith("gpu") and r.passed, format_report(r)


# ---- streaming, and validate in a runtime worker ------------------------------------------------


def test_steps_and_checks_are_streamed(copy_fixture):
    """on_step names each check (and its positions) before it runs; on_check gets each result."""
    path = patched(copy_fixture, "tiny-llama-f32.gguf", "ntk")
    steps, done = [], []
    r = validate(path, on_step=steps.append, on_check=done.append)
    assert [s[:8] for s in steps] == ["check a:", "check b:", "check c:", "check d:"]
    assert "positions 120..135, 1008..1023" in steps[1] and "positions 704..1023" in steps[3]
    assert done == list(r.checks) and r.crash is None and r.to_dict()["crash"] is None


def test_validate_isolated_gives_validates_report(copy_fixture):
    path = patched(copy_fixture, "tiny-qwen2-q8_0.gguf", "yarn")
    streamed = []
    r_in = validate(path)
    r_iso = validate_isolated(path, on_check=streamed.append)
    assert statuses(r_iso) == statuses(r_in) == {c: PASSED for c in "abcd"}, format_report(r_iso)
    assert untimed(r_iso.to_dict()) == untimed(r_in.to_dict())
    assert [c.id for c in streamed] == list("abcd")
    with pytest.raises(UsageError, match="no such file"):
        validate_isolated(path + ".missing")


@pytest.mark.parametrize("after, step", [(2, "check a: loading the model"), (3, "check b: ROPE op parameters")])
def test_validate_isolated_reports_a_crash(monkeypatch, after, step):
    """The worker kills itself with SIGSEGV after its Nth event (2: check a's result, 3: check b's
    step): check a is reported as it finished, the next check fails with the crash line, the
    rest are skipped, and ``crash`` names the signal and the step."""
    monkeypatch.setenv("ROPEPATCH_WORKER_CRASH", f"SEGV:{after}")
    path = str(FIXTURES / "tiny-llama-f32.gguf")
    r = validate_isolated(path)
    assert statuses(r) == {"a": PASSED, "b": FAILED, "c": SKIPPED, "d": SKIPPED}, format_report(r)
    assert r.crash and "\n" not in r.crash
    assert "crashed with SIGSEGV" in r.crash and f"while {step}" in r.crash and path in r.crash
    assert r.check("b").reason == r.crash and r.check("c").reason == "not run: the runtime crashed"
    assert r.check("a").figures["n_ctx_train"]["runtime"] == L
    assert r.arch == "llama" and r.original_ctx == L and not r.passed
    d = json.loads(r.to_json())
    assert d["crash"] == r.crash and d["passed"] is False


def test_validate_past_the_files_context_warns(copy_fixture):
    """An unextended model validated at a ctx beyond its context_length: the checks pass (the
    runtime applies what the file says) but a WARN line says nothing extends it, and how to."""
    from ropepatch.check.validate import format_report, validate

    path = copy_fixture("tiny-llama-f32.gguf")
    text = format_report(validate(path, ctx=512, reference_forward=False))
    warn = [ln for ln in text.splitlines() if ln.startswith("  WARN: ")]
    assert len(warn) == 1 and "--ctx 512 is beyond the file's context_length 128" in warn[0]
    assert f"ropepatch gguf {path} --ctx 512" in warn[0]
    assert text.splitlines()[-1].startswith("OK: 0 check(s) failed, 1 skipped, 1 warning(s)")
    assert "WARN" not in format_report(validate(path, reference_forward=False))


def test_validate_without_the_runtime_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    """A machine without a usable llama-cpp-python (simulated by a llama_cpp package that fails
    to import, first on the worker's path): one line naming the install command, exit 2."""
    from conftest import run_cli

    fake = tmp_path / "site" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: llama-cpp-python not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    p = run_cli("validate", str(FIXTURES / "tiny-llama-f32.gguf"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "pip install 'ropepatch[validate]'" in p.stderr and "simulated" in p.stderr
