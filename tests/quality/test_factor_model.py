"""Factor methods (ntk-parts, factors) in eval / passkey through a temporary patched copy, on the
tiny fixtures (training ctx 128, random weights) at ctx 512, in the real llama.cpp.

What is checked: the copy scores exactly what a file patched by ``ropepatch gguf`` scores; the
user's file is never written (sha256) and no temporary copy is left, after an error or Ctrl-C
too; one copy serves a whole run (re-patched in place); a file already patched with factors is
still measured relative to its original; refusals (qwen2, no room) are one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import FIXTURES, require, run_cli, sha256

require("llama_cpp")

from _helpers_eval import MODEL  # noqa: E402
from _helpers_eval import model as model  # noqa: E402  (a fixture: the loaded tiny model)
from _helpers_eval import tokens as tokens  # noqa: E402  (a fixture: this module's text, tokenized)

from ropepatch.errors import UnsupportedModelError, UsageError  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.quality import factor_model as FM  # noqa: E402
from ropepatch.quality.scoring import runtime_settings_for  # noqa: E402

QWEN = str(FIXTURES / "tiny-qwen2-f32.gguf")
CTX = 512


@pytest.fixture(scope="module")
def text() -> str:
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return f.read()[:4000]


def _copies(d) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith(FM.PREFIX)]


def _nll(res, label):
    m = res.methods[label]
    return m.nll_sum / np.maximum(m.count, 1)


def test_eval_through_the_copy_equals_the_file_patched_by_ropepatch_gguf(copy_fixture, private_tmp, tokens, model):
    before = sha256(MODEL)
    res = E.evaluate(MODEL, CTX, tokens=tokens, methods="none,ntk-parts,factors", window=False, model=model)
    assert sha256(MODEL) == before and _copies(private_tmp) == []  # the user's file only read; no copy left
    patched = copy_fixture("tiny-llama-f32.gguf", "np.gguf")
    p = run_cli("gguf", patched, "--ctx", str(CTX), "--method", "ntk-parts")
    assert p.returncode == 0, p.stderr
    # the patched file itself, unscaled settings at ctx (its factors in the file): no copy made
    with E.Model(patched, n_threads=2, n_batch=128) as pm:
        direct = E.evaluate(patched, CTX, tokens=tokens, methods="ntk-parts", window=False, model=pm)
        seq = np.concatenate([[pm.bos], tokens[:CTX - 1]]).astype(np.int32)
        settings, _ = runtime_settings_for(E.extension_original(MODEL, CTX), CTX, "none", None)
        with pm.context(settings) as c:
            raw = c.score(seq)
    assert _copies(private_tmp) == []
    np.testing.assert_array_equal(_nll(res, "ntk-parts")[1:], _nll(direct, "ntk-parts")[1:])
    np.testing.assert_array_equal(_nll(res, "ntk-parts")[1:], raw[1:])
    # the factors default (the ntk-parts ramp read at 8 points = every pair of this 16-dim model)
    np.testing.assert_array_equal(_nll(res, "factors")[1:], raw[1:])
    assert not np.array_equal(_nll(res, "none")[1:], raw[1:])  # the factors do reach llama.cpp


def test_a_factor_patched_file_is_still_measured_relative_to_its_original(copy_fixture, private_tmp, tokens, model):
    patched = copy_fixture("tiny-llama-f32.gguf", "np.gguf")
    assert run_cli("gguf", patched, "--ctx", str(CTX), "--method", "ntk-parts").returncode == 0
    before = sha256(patched)
    orig = E.evaluate(MODEL, CTX, tokens=tokens, methods="none", model=model)
    res = E.evaluate(patched, CTX, tokens=tokens, methods="none", n_threads=2, n_batch=128)
    for label in ("none", "window"):  # a copy patched with none: the original's unscaled model
        np.testing.assert_array_equal(_nll(res, label)[1:], _nll(orig, label)[1:])
    assert sha256(patched) == before and _copies(private_tmp) == []


def test_one_copy_serves_a_run_repatched_in_place(private_tmp, tokens, model, monkeypatch):
    calls, real = [], FM.patch_gguf

    def spy(path, ctx, method, alpha=None, **kw):
        r = real(path, ctx, method, alpha, **kw)
        calls.append((path, kw.get("out"), method, r.mode))
        return r

    monkeypatch.setattr(FM, "patch_gguf", spy)
    E.evaluate(MODEL, CTX, tokens=tokens, methods="ntk-parts,ntk,factors@2", window=False, model=model)
    (src, out, m1, mode1), (again, out2, m2, mode2) = calls  # ntk needs no copy
    assert src == MODEL and out is not None and mode1 == "rewrite" and m1 == "ntk-parts"
    assert again == out and out2 is None and mode2 == "in-place" and m2 == "factors"
    assert _copies(private_tmp) == []


def test_copy_is_removed_on_error_and_ctrl_c_and_orphans_are_swept(private_tmp):
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with FM.PatchedCopy(MODEL, n_threads=2) as pc:
                pc.load(CTX, "ntk-parts", None)
                assert len(_copies(private_tmp)) == 1 and FM.is_copy(pc.model)
                raise exc("stop")
        assert _copies(private_tmp) == []
    orphan = private_tmp / f"{FM.PREFIX}dead{FM.SUFFIX}"  # left by a run killed outright
    orphan.mkdir()
    (orphan / "x.gguf").write_bytes(b"x")
    assert FM.sweep() == 1 and not orphan.exists()
    orphan.mkdir()
    with FM.PatchedCopy(MODEL, n_threads=2) as live:
        live.patch(CTX, "ntk-parts", None)
        assert not orphan.exists()  # a new copy sweeps first
        assert FM.sweep() == 0 and os.path.exists(live.path)  # the live run's flock keeps its own
    assert _copies(private_tmp) == []


def test_no_room_for_the_copy_is_one_line_and_writes_nothing(private_tmp, tokens, model, monkeypatch):
    import shutil

    monkeypatch.setattr(FM.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(UsageError) as ei:
        E.evaluate(MODEL, CTX, tokens=tokens, methods="none,ntk-parts", model=model)
    msg = str(ei.value)
    assert "\n" not in msg and "TMPDIR" in msg and "tiny-llama-f32.gguf" in msg and "1 MiB free" in msg
    assert _copies(private_tmp) == []


def test_qwen2_refuses_factor_methods_in_one_line_before_scoring(private_tmp, text):
    seen = []
    with pytest.raises(UnsupportedModelError) as ei:
        E.evaluate(QWEN, CTX, text, methods="none,ntk-parts", n_threads=2, progress=seen.append)
    msg = str(ei.value)
    assert "\n" not in msg and "tiny-qwen2-f32.gguf" in msg and "qwen2" in msg and "ntk-parts" in msg
    assert seen == [] and _copies(private_tmp) == []  # nothing scored, nothing copied


def test_cli_eval_and_passkey_with_factor_methods(tmp_path, private_tmp, text, monkeypatch):
    tf = tmp_path / "t.txt"
    tf.write_text(text)
    monkeypatch.setenv("TMPDIR", str(private_tmp))  # the workers' copies go there too
    p = run_cli("eval", MODEL, "--ctx", str(CTX), "--text", str(tf), "--methods", "ntk-parts,factors",
                "--threads", "2", "-q", "--json")
    assert p.returncode == 0, p.stderr
    assert '"ntk-parts"' in p.stdout and '"factors"' in p.stdout
    k = run_cli("passkey", MODEL, "--ctx", str(CTX), "--methods", "ntk-parts", "--depths", "0.5",
                "--trials", "1", "--threads", "2", "-q", "--json")
    assert k.returncode == 0, k.stderr
    assert '"ntk-parts"' in k.stdout
    q = run_cli("eval", QWEN, "--ctx", str(CTX), "--text", str(tf), "--methods", "factors", "-q")
    assert q.returncode == 2 and len(q.stderr.strip().splitlines()) == 1 and "qwen2" in q.stderr
    assert _copies(private_tmp) == []


def test_refusal_names_why_a_method_cannot_be_measured():
    from ropepatch.patch.gguf import inspect_gguf

    qwen, llama = inspect_gguf(QWEN).original, inspect_gguf(MODEL).original
    why = FM.refusal(qwen, CTX, "factors")
    assert why is not None and "qwen2" in why and "\n" not in why
    assert FM.refusal(qwen, CTX, "ntk") is None and FM.refusal(llama, CTX, "ntk-parts") is None
    assert FM.writes_factors("ntk-parts") and FM.writes_factors("factors")
    assert not FM.writes_factors("window") and not FM.writes_factors("yarn")
