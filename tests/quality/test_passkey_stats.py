"""Passkey statistics: Wilson intervals per depth and pooled per method, and a verdict that
claims ">= 80%" only when the interval shows it. Synthetic results for the verdict logic, then
the real thing on the tiny llama fixture (random weights: it mostly fails, which is fine)."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, require

from ropepatch.quality.passkey_results import (
    FAILS,
    PASSES,
    UNDECIDED,
    DepthResult,
    MethodPasskey,
    PasskeyResult,
    format_passkey,
    passkey_verdict,
)

MODEL = str(FIXTURES / "tiny-llama-f32.gguf")


def _method(name, correct, trials=5, visible=None):
    visible = visible or [True] * len(correct)
    ds = tuple(DepthResult(d, 100 * i, v, trials, c if v else 0, c / trials if v else None, 0.1 if v else None, ())
               for i, (d, c, v) in enumerate(zip((0.1, 0.5, 0.9), correct, visible)))
    return MethodPasskey(name, {}, ds)


def _result(**methods):
    return PasskeyResult("m.gguf", 8192, 32768, 32760, 5, 0, ("12345",) * 5, methods, 1.0, 1.0, 10)


@pytest.mark.parametrize("correct, trials, status", [
    ((5, 5, 5), 5, UNDECIDED),  # 15/15: [79.6%, 100%], not yet >= 80% with 95% confidence
    ((6, 6, 6), 6, PASSES),     # 18/18: [82.4%, 100%]
    ((10, 10, 9), 10, PASSES),  # 29/30: [83.3%, 99.4%]
    ((5, 5, 0), 5, FAILS),      # depth 0.9: 0/5 [0%, 43%] lies below 80%
    ((2, 3, 2), 5, FAILS),      # 7/15: [24.8%, 69.9%] below 80% overall
    ((4, 4, 4), 5, UNDECIDED),  # 12/15: [54.8%, 93.0%]
])
def test_status_uses_the_wilson_intervals(correct, trials, status):
    assert _method("yarn", correct, trials).status() == status


def test_passkey_verdict_and_json():
    r = _result(ntk=_method("ntk", (2, 3, 2)), yarn=_method("yarn", (5, 5, 5)),
                window=_method("window", (0, 0, 5), visible=[False, False, True]))
    v = passkey_verdict(r)
    assert v == ("verdict: no method is shown to retrieve the key at >= 80% (95% Wilson interval); best yarn "
                 "15/15 [79-100%]: consistent with 80% but not established (more --trials would decide)")
    d = json.loads(json.dumps(r.to_json()))
    assert d["verdict"] == v and d["confidence"] == 0.95 and d["pass_rate"] == 0.8
    y = d["methods"]["yarn"]["overall"]
    assert y["trials"] == 15 and y["correct"] == 15 and y["accuracy"] == 1.0 and y["status"] == UNDECIDED
    assert y["ci"] == [0.7961, 1.0]
    w = d["methods"]["window"]
    assert w["overall"]["trials"] == 5 and w["depths"][0]["ci"] is None and w["depths"][2]["ci"] == [0.5655, 1.0]
    assert d["methods"]["ntk"]["depths"][0]["ci"] == [0.1176, 0.7693]  # 2/5
    table = format_passkey(r)
    assert "2/5 [11-77%] NLL 0.10" in table and "(baseline)" in table and table.endswith(v)
    assert "not in view" in table and "95% Wilson interval" in table


def test_passkey_verdict_pass_and_fail():
    r = _result(ntk=_method("ntk", (6, 6, 6), 6), yarn=_method("yarn", (6, 6, 5), 6))
    assert passkey_verdict(r).startswith("verdict: retrieves the key at >= 80% (95% Wilson interval): ntk (18/18 ")
    r = _result(ntk=_method("ntk", (5, 5, 0)), none=_method("none", (0, 1, 0)))
    assert passkey_verdict(r) == ("verdict: no method retrieves the key at >= 80% (95% Wilson interval); best ntk "
                                  "10/15 [41-85%] is below 80% at depth 0.9 with 95% confidence")
    assert "no method to judge" in passkey_verdict(_result(window=_method("window", (1, 1, 1))))


def test_passkey_trials_on_the_tiny_model():
    """Five trials per depth (the default) on the real runtime: per-depth and pooled accuracies
    with their Wilson intervals, and the verdict, in the result, the table and the JSON."""
    require("llama_cpp")
    from ropepatch.quality.passkey import passkey
    from ropepatch.quality.stats import wilson

    r = passkey(MODEL, 512, methods="ntk", depths="0.2,0.8", seed=5, n_threads=2, n_batch=128)
    assert r.trials == 5 and len(r.keys) == len(set(r.keys)) == 5  # different keys, one filler
    m = r.methods["ntk"]
    assert m.trials == 10 and m.correct == sum(d.correct for d in m.depths)
    for d in m.depths:
        assert d.trials == 5 and len(d.greedy) == 5 and d.accuracy == d.correct / 5
        assert d.ci == wilson(d.correct, 5) and d.ci.lo <= d.accuracy <= d.ci.hi
    assert m.status() in (PASSES, FAILS, UNDECIDED)
    d = json.loads(json.dumps(r.to_json()))
    assert d["methods"]["ntk"]["overall"]["ci"] == [round(m.ci.lo, 4), round(m.ci.hi, 4)]
    assert d["verdict"].startswith("verdict: ") and d["verdict"] in format_passkey(r)
