"""A CPU crash before the first decode returned is retried once with llama.cpp's weight repacking off
(ROPEPATCH_NO_REPACK): measured on a Xeon with AMX in a VM, where SmolLM2 Q4_1 crashes with
SIGSEGV at its first decode unless repacking is off. The crashes here are real signals of a real
child; the target crashes only while the variable is unset, as that machine's kernels did."""

from __future__ import annotations

import textwrap

import pytest
from conftest import require

from ropepatch.runtime.binding import NO_REPACK_ENV, cpu_has_amx, repack_off
from ropepatch.runtime.isolate import Job, Outcome, RuntimeCrash, run_isolated

TARGETS = '''
import os, signal
from ropepatch.runtime.binding import decoded

def crashes_with_repack(on_step=None, progress=None, decode_first=False):
    on_step("loading")
    progress(1)  # a result before any decode (as validate's check a)
    if decode_first:
        decoded()
    if os.environ.get("ROPEPATCH_NO_REPACK") != "1":
        os.kill(os.getpid(), signal.SIGSEGV)  # the first decode crashes
    decoded()
    progress(2)
    return "answered"

def always_crashes(on_step=None, progress=None):
    on_step("decoding")
    os.kill(os.getpid(), signal.SIGILL)
'''


@pytest.fixture
def targets(tmp_path, monkeypatch):
    (tmp_path / "rp_repack_targets.py").write_text(textwrap.dedent(TARGETS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("ROPEPATCH_WORKER_CRASH", raising=False)
    monkeypatch.setenv(NO_REPACK_ENV, "0")  # repacking on, even on an AMX CPU (where it is off by default)
    return "rp_repack_targets"


def _job(targets, name="crashes_with_repack", **kw):
    return Job(f"{targets}:{name}", (), kw, callbacks=("on_step", "progress"))


def test_cpu_crash_before_the_first_decode_is_retried_without_repacking(targets):
    seen, out = [], Outcome()
    res = run_isolated(_job(targets), file="m.gguf", callbacks={"progress": seen.append}, outcome=out)
    assert res == "answered" and out.repack_off and out.decoded
    assert seen == [1, 2]  # the result the first try delivered is not delivered again


def test_no_retry_on_gpu(targets):
    out = Outcome()
    with pytest.raises(RuntimeCrash) as e:
        run_isolated(_job(targets), file="m.gguf", device="gpu (n_gpu_layers=-1)", outcome=out)
    assert "crashed with SIGSEGV while loading on gpu" in str(e.value) and not out.repack_off
    assert "repacking" not in str(e.value)


def test_no_retry_after_a_decode_returned(targets):
    """A crash after llama.cpp has decoded is not the repacked kernels' first-decode crash: no
    retry (a long run is not run twice)."""
    seen, out = [], Outcome()
    with pytest.raises(RuntimeCrash) as e:
        run_isolated(_job(targets, decode_first=True), file="m.gguf", callbacks={"progress": seen.append},
                     outcome=out)
    assert seen == [1] and out.decoded and not out.repack_off and "repacking" not in str(e.value)


def test_no_retry_when_the_user_already_switched_repacking_off(targets, monkeypatch):
    monkeypatch.setenv(NO_REPACK_ENV, "1")
    out = Outcome()
    with pytest.raises(RuntimeCrash) as e:
        run_isolated(_job(targets, name="always_crashes"), file="m.gguf", outcome=out)
    msg = str(e.value)
    assert msg.startswith("m.gguf: the llama.cpp runtime crashed with SIGILL while decoding on cpu;"), msg
    assert not out.repack_off


def test_a_crash_on_both_tries_is_one_line_saying_so(targets):
    out = Outcome()
    with pytest.raises(RuntimeCrash) as e:
        run_isolated(_job(targets, name="always_crashes"), file="m.gguf", outcome=out)
    msg = str(e.value)
    assert out.repack_off and e.value.rc < 0 and "\n" not in msg
    assert "crashed with SIGILL (also with its weight repacking off) while decoding on cpu" in msg


def test_a_real_model_loads_and_probes_with_repacking_off(monkeypatch):
    require("llama_cpp")
    from pathlib import Path

    fixture = str(Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama-f32.gguf")
    monkeypatch.setenv(NO_REPACK_ENV, "1")
    res = run_isolated(Job("ropepatch.runtime.probe:probe", (fixture, [1, 2, 3], 200),
                           {"layers": (0,), "logits": False}), file=fixture)
    assert res.positions.tolist() == [200, 201, 202]


@pytest.mark.parametrize("value, off", [("1", True), ("0", False), (" 1 ", True), ("yes", True)])
def test_the_variable_decides_when_set(monkeypatch, value, off):
    monkeypatch.setenv(NO_REPACK_ENV, value)
    assert repack_off() is off


def test_unset_it_is_off_exactly_on_amx_cpus(monkeypatch):
    monkeypatch.delenv(NO_REPACK_ENV, raising=False)
    try:
        flags = [ln.split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")]
    except OSError:
        flags = []
    amx = any("amx_tile" in f for f in flags)
    assert cpu_has_amx() is amx and repack_off() is amx
