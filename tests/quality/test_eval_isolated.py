"""Crash isolation of eval, tune and passkey on the tiny fixtures: the worker process runs the
same code (the same numbers, progress and steps streamed back), a crash in it is one line, errors
cross back and objects local to this process do not."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_eval import CTX, MODEL
from _helpers_eval import model as model  # the shared fixtures, by name
from _helpers_eval import text as text
from _helpers_eval import tokens as tokens
from conftest import require

require("llama_cpp")

from ropepatch.errors import RopepatchError, UsageError  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402

# ---- crash isolation ---------------------------------------------------------------------------


def _without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "timing"}


def test_evaluate_isolated_matches_in_process(text):
    """The worker runs the same evaluate: the same numbers, progress and steps streamed back."""
    from ropepatch.quality.isolated import evaluate_isolated

    kw = dict(methods="none,ntk", max_windows=1, n_threads=2, n_batch=128)
    here = E.evaluate(MODEL, 256, text, **kw)
    steps, prog = [], []
    there = evaluate_isolated(MODEL, 256, text, progress=prog.append, on_step=steps.append, **kw)
    assert _without_timing(there.to_json()) == _without_timing(here.to_json())
    for name, m in here.methods.items():
        np.testing.assert_array_equal(there.methods[name].nll_sum, m.nll_sum)
    assert steps == ["loading tiny-llama-f32.gguf", "scoring none at 256 tokens",
                     "scoring ntk at 256 tokens", "scoring window at 256 tokens"]
    assert prog and prog[-1].done == prog[-1].total == there.timing.tokens_decoded


@pytest.mark.parametrize("after, step", [(1, "loading tiny-llama-f32.gguf"), (2, "scoring ntk at 256 tokens")])
def test_evaluate_isolated_crash_is_one_line(monkeypatch, text, after, step):
    from ropepatch.quality.isolated import evaluate_isolated
    from ropepatch.runtime.isolate import RuntimeCrash

    monkeypatch.setenv("ROPEPATCH_WORKER_CRASH", f"SEGV:{after}")
    with pytest.raises(RuntimeCrash) as e:
        evaluate_isolated(MODEL, 256, text, methods="ntk", window=False, n_threads=2)
    msg = str(e.value)
    assert "\n" not in msg and "SIGSEGV" in msg and f"while {step} on cpu" in msg, msg


def test_isolated_errors_cross_and_local_objects_do_not(model):
    from ropepatch.quality.isolated import evaluate_isolated, passkey_isolated

    with pytest.raises(RopepatchError, match="no such file"):
        evaluate_isolated("/nonexistent.gguf", CTX, text="x")
    with pytest.raises(UsageError, match="cannot cross"):
        passkey_isolated(MODEL, CTX, model=model)


def test_tune_isolated_searches_in_the_worker_and_applies_here(copy_fixture, tokens, model, monkeypatch):
    from ropepatch.quality import isolated
    from ropepatch.quality.tune import tune

    path = copy_fixture("tiny-llama-f32.gguf")
    kw = dict(tokens=tokens, method="ntk", tolerance=0.5, refine=1, n_threads=2, n_batch=128)
    here = tune(MODEL, CTX, model=model, **kw)
    applied_in = []
    real = isolated.apply_tune
    monkeypatch.setattr(isolated, "apply_tune", lambda p, r, **k: applied_in.append(p) or real(p, r, **k))
    logged = []
    # force: on this random-weight fixture the winner ties with the window (does not pay)
    there = isolated.tune_isolated(path, CTX, apply=True, force=True, log=logged.append, **kw)
    assert [t.to_json() for t in there.tried] == [t.to_json() for t in here.tried]
    assert there.winner == here.winner and there.verdict == here.verdict and there.pays == here.pays
    assert there.to_json()["vs_window"] == here.to_json()["vs_window"] and here.to_json()["vs_window"]["ci"]
    assert applied_in == [path] and there.applied is not None and logged
    prov = inspect_gguf(path).provenance
    assert prov is not None and prov.alpha == pytest.approx(there.winner.alpha)


def test_passkey_isolated_matches_in_process(model):
    from ropepatch.quality.isolated import passkey_isolated
    from ropepatch.quality.passkey import passkey

    kw = dict(methods="ntk", depths="0.5", trials=1, seed=1)
    here = passkey(MODEL, CTX, model=model, **kw)
    there = passkey_isolated(MODEL, CTX, n_threads=2, n_batch=128, **kw)
    assert _without_timing(there.to_json()) == _without_timing(here.to_json())
