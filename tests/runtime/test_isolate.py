"""The runtime worker (ropepatch.runtime.isolate / worker): results, events, errors and native
crashes of a real child process. The crashes are real signals: ROPEPATCH_WORKER_CRASH makes the
worker send itself the signal after its Nth event."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from conftest import require

from ropepatch.errors import RopepatchError, UsageError
from ropepatch.runtime.isolate import Job, Outcome, RuntimeCrash, run_isolated

FIXTURE = str(Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama-f32.gguf")

TARGETS = '''
import sys

def steps(n, on_step=None, progress=None):
    for i in range(n):
        on_step(f"step {i}")
        progress(i)
    return {"done": n, "first_modules": FIRST}

def fails():
    raise ValueError("bad value")

FIRST = [m for m in ("llama_cpp", "numpy", "hashlib") if m in sys.modules]
'''


@pytest.fixture
def targets(tmp_path, monkeypatch):
    """A module the worker can import (put on its PYTHONPATH)."""
    (tmp_path / "rp_worker_targets.py").write_text(textwrap.dedent(TARGETS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("ROPEPATCH_WORKER_CRASH", raising=False)
    return "rp_worker_targets"


def test_result_and_events_stream_back_in_order(targets):
    seen, steps, out = [], [], Outcome()
    res = run_isolated(Job(f"{targets}:steps", (3,), callbacks=("on_step", "progress")),
                       file="m.gguf", callbacks={"progress": seen.append, "on_step": steps.append},
                       outcome=out)
    assert res["done"] == 3
    assert seen == [0, 1, 2] and steps == ["step 0", "step 1", "step 2"]
    assert out.events == 6 and out.step == "step 2"


def test_worker_imports_llama_cpp_before_anything_else(targets):
    require("llama_cpp")
    res = run_isolated(Job(f"{targets}:steps", (0,), callbacks=("on_step", "progress")), file="m.gguf")
    # the worker imported llama_cpp first; numpy came in with it (llama_cpp imports numpy)
    assert "llama_cpp" in res["first_modules"]


def test_ropepatch_error_keeps_its_class_and_line():
    with pytest.raises(UsageError) as e:
        run_isolated(Job("ropepatch.runtime.binding:gpu_layers", (-5,)), file="m.gguf")
    assert str(e.value) == "--gpu-layers must be -1 (all) or >= 0, found -5"


def test_other_exception_is_one_line(targets):
    with pytest.raises(RopepatchError) as e:
        run_isolated(Job(f"{targets}:fails"), file="m.gguf")
    assert "\n" not in str(e.value)
    assert str(e.value).endswith("ValueError: bad value")


@pytest.mark.parametrize("sig, after", [("SEGV", 0), ("SEGV", 3), ("ABRT", 2), ("KILL", 1)])
def test_native_crash_is_one_line_naming_signal_step_file_device(targets, monkeypatch, sig, after):
    monkeypatch.setenv("ROPEPATCH_WORKER_CRASH", f"{sig}:{after}")
    seen = []
    with pytest.raises(RuntimeCrash) as e:
        run_isolated(Job(f"{targets}:steps", (5,), callbacks=("on_step", "progress")),
                     file="model.gguf", device="gpu (n_gpu_layers=-1)", callbacks={"progress": seen.append})
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 1
    assert msg.startswith("model.gguf: the llama.cpp runtime crashed with SIG" + sig)
    assert "on gpu (n_gpu_layers=-1)" in msg
    step = "starting the runtime" if after == 0 else f"step {(after - 1) // 2}"
    assert f"while {step} on" in msg
    assert seen == list(range(after // 2))  # the events before the crash were delivered
    if sig == "KILL":
        assert "out of memory?" in msg


def test_real_model_load_in_the_worker():
    require("llama_cpp")
    res = run_isolated(Job("ropepatch.runtime.probe:probe", (FIXTURE, [1, 2, 3], 200),
                           {"layers": (0,), "logits": False}), file=FIXTURE)
    assert res.positions.tolist() == [200, 201, 202]
    assert res.rope("Kcur-0").op.n_ctx_orig == 128


def test_signal_names_cover_the_crashes_we_report():
    from ropepatch.runtime.isolate import crash_line

    assert "SIGSEGV" in crash_line(-signal.SIGSEGV, "f", "cpu", "x")
    assert "exited with status 3" in crash_line(3, "f", "cpu", "x")


@pytest.mark.parametrize("json_out", [False, True])
def test_validate_cli_with_its_runtime_killed_by_sigsegv(monkeypatch, json_out):
    """The real command, its real worker killed by SIGSEGV during check b: the finished check is
    reported on stdout, the crash is ONE line on stderr, exit status 1, no traceback."""
    import json

    from conftest import run_cli

    require("llama_cpp")
    monkeypatch.setenv("ROPEPATCH_WORKER_CRASH", "SEGV:3")  # a: step, check; b: step -> killed
    monkeypatch.setenv("ROPEPATCH_NO_REPACK", "1")  # the line as it reads without the repacking retry
    p = run_cli("validate", FIXTURE, *(["--json"] if json_out else []))
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert err[0].startswith(f"ropepatch: error: {FIXTURE}: the llama.cpp runtime crashed with SIGSEGV while check b")
    assert "on cpu" in err[0] and "Traceback" not in p.stderr
    if json_out:
        rep = json.loads(p.stdout)
        assert [c["status"] for c in rep["checks"]] == ["passed", "failed", "skipped", "skipped"]
        assert rep["crash"] in err[0]
    else:
        assert "PASS a." in p.stdout and "FAIL b." in p.stdout and "SIGSEGV" in p.stdout


@pytest.mark.parametrize("command", ["eval", "passkey"])
def test_quality_cli_with_its_runtime_killed(monkeypatch, tmp_path, command):
    from conftest import run_cli

    require("llama_cpp")
    monkeypatch.setenv("ROPEPATCH_WORKER_CRASH", "ABRT:1")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    extra = ["--text", str(text), "--ctx", "256"] if command == "eval" else ["--ctx", "512", "--trials", "1"]
    p = run_cli(command, FIXTURE, *extra, "-q", "--gpu-layers", "-1")
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "crashed with SIGABRT while" in err[0], p.stderr
    assert "on gpu (n_gpu_layers=-1)" in err[0] and "--gpu-layers 0" in err[0]
    assert p.stdout == ""


def test_worker_log_switch_shows_llama_cpp_log(monkeypatch):
    """The crash line tells the user to set ROPEPATCH_WORKER_LOG=1 to see llama.cpp's log: it does."""
    from conftest import run_cli

    require("llama_cpp")
    quiet = run_cli("validate", FIXTURE)
    monkeypatch.setenv("ROPEPATCH_WORKER_LOG", "1")
    loud = run_cli("validate", FIXTURE)
    assert quiet.returncode == loud.returncode == 0
    assert "llama_model_loader" not in quiet.stderr
    assert "llama_model_loader" in loud.stderr
