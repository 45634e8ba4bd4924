"""tune knows when not to extend: it always measures ``window`` (the unscaled model through a
sliding window of L on the same tokens), prints it, says "extension does not pay here" when no
feasible candidate beats it, ``--apply`` refuses such a winner unless ``--force``, and
``--method all`` searches every method with ONE window / baseline measurement.

Real llama.cpp on the tiny llama fixture (training ctx 128, random weights) at ctx 256. Its
perplexities mean nothing; which side wins depends on the text, and two texts give both cases:
pydecimal (extension pays) and "abcdefghij" repeated (the window beats every candidate)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import FIXTURES, require, sha256

require("llama_cpp")

from ropepatch.errors import UsageError  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf, revert_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.quality import tune_all  # noqa: E402
from ropepatch.quality.specs import MethodSpec  # noqa: E402
from ropepatch.quality.tune import (  # noqa: E402
    ApplyRefused,
    Trial,
    TuneAllResult,
    WindowRow,
    apply_tune,
    format_tune,
    pay_verdict,
    tune,
)
from ropepatch.quality.tune_alpha import measured  # noqa: E402
from ropepatch.quality.tune_result import vs_window  # noqa: E402

MODEL = str(FIXTURES / "tiny-llama-f32.gguf")
L = 128
CTX = 256
FAST = dict(grid=[2.0, 4.0], refine=0)  # a short search: the machinery, not the optimum


@pytest.fixture(scope="module")
def model():
    with E.Model(MODEL, n_threads=2, n_batch=128) as m:
        yield m


@pytest.fixture(scope="module")
def pays_tokens(model):
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return model.tokenize(f.read()[:4000])


@pytest.fixture(scope="module")
def loses_tokens(model):
    return model.tokenize("abcdefghij" * 100)


@pytest.fixture(scope="module")
def losing(model, loses_tokens):
    """ntk on the text where the sliding window wins (the case the verdict is for)."""
    return tune(MODEL, CTX, tokens=loses_tokens, method="ntk", model=model)


# ---- the verdict, as a function ----------------------------------------------------------------


def _t(label: str, ext: float | None, feasible: bool = True) -> Trial:
    return Trial(2.0, label, 5.0, ext, feasible, "grid")


def test_pay_verdict():
    w = WindowRow(5.0, 4.69, 8192, 4096)
    pays, v = pay_verdict(w, _t("yarn@2", 4.36), "yarn")
    assert pays and v.startswith("extension pays: yarn@2 beats the sliding window") and "4.69" in v
    pays, v = pay_verdict(w, _t("ntk@2.178", 49.7), "ntk")
    assert not pays and v == ("extension does not pay here: use a sliding window "
                              "(window ppl_ext 4.69 vs best 49.7, ntk@2.178: +959.7%, no interval, point estimates)")
    assert not pay_verdict(w, _t("ntk@2", 4.69), "ntk")[0]  # a tie does not pay
    pays, v = pay_verdict(w, None, "ntk")
    assert not pays and v.startswith("extension does not pay here: use a sliding window (window ppl_ext 4.69;")
    assert "no ntk candidate kept ppl_in within the tolerance" in v


def _paired(ext_window: list[float], ext_method: list[float]) -> tuple[WindowRow, Trial]:
    """A window row and a trial whose ppl_ext are the exp of their block means' mean."""
    a, b = np.array(ext_window), np.array(ext_method)
    w = WindowRow(5.0, math.exp(a.mean()), 8192, 4096, ext=("block", a))
    return w, Trial(2.0, "yarn@2", 5.0, math.exp(b.mean()), True, "grid", ext=("block", b))


def test_pay_verdict_is_paired_on_the_same_blocks():
    # the same 4 blocks, the method lower on every one by 0.05 +- 0.01: beats (the interval is below 0%)
    w, t = _paired([1.0, 2.0, 1.5, 1.2], [0.95, 1.94, 1.46, 1.15])
    pays, v = pay_verdict(w, t, "yarn")
    assert pays and v.startswith("extension pays: yarn@2 beats the sliding window on ppl_ext")
    assert "paired over 4 blocks of one window, a rough guide" in v and "-4.9% [" in v
    # the same mean difference, but the blocks disagree (one far worse): a tie, which does not pay
    w, t = _paired([1.0, 2.0, 1.5, 1.2], [0.7, 1.7, 1.2, 1.9])
    pays, v = pay_verdict(w, t, "yarn")
    assert not pays and v.startswith("extension does not pay here: use a sliding window (yarn@2 ties with it")
    assert "the interval includes 0%" in v and "--windows" in v
    # worse on every block: does not pay, with the paired interval
    w, t = _paired([1.0, 2.0, 1.5, 1.2], [1.1, 2.12, 1.6, 1.29])
    pays, v = pay_verdict(w, t, "yarn")
    assert not pays and "vs best" in v and "paired over 4 blocks" in v and v.count("+") >= 3
    # point estimates alone would call the tie a win: the paired rule is what decides
    w, t = _paired([1.0, 2.0, 1.5, 1.2], [0.7, 1.7, 1.2, 1.9])
    assert t.ppl_ext < w.ppl_ext
    assert not pay_verdict(w, t, "yarn")[0]
    assert pay_verdict(WindowRow(w.ppl_in, w.ppl_ext, 8192, 4096), dataclasses.replace(t, ext=None), "yarn")[0]


# ---- the window row ----------------------------------------------------------------------------


def test_window_row_is_evals_window_on_the_same_tokens(model, pays_tokens):
    steps = []
    r = tune(MODEL, CTX, tokens=pays_tokens, method="ntk", model=model, on_step=steps.append, **FAST)
    ev = E.evaluate(MODEL, CTX, tokens=pays_tokens, methods="none", model=model, max_windows=1)
    w = ev.methods["window"]
    assert (r.window.ppl_in, r.window.ppl_ext) == (w.ppl_in, w.ppl_ext)  # the same scorer, bit for bit
    assert (r.window.length, r.window.stride) == (L, L // 2)
    # the window's first L positions ARE the unscaled model's ppl_in: the baseline, measured once
    assert r.baseline_ppl_in == r.window.ppl_in
    assert r.baseline_ppl_in == pytest.approx(ev.methods["none"].ppl_in, rel=1e-6)
    assert sum("scoring window" in s for s in steps) == 1
    # the winner's point estimate is below the window's, but on 4 blocks of 32 tokens the paired
    # interval includes 0%: a tie, which does not pay (the samples came from the real scoring)
    assert r.winner.ppl_ext < r.window.ppl_ext
    ratio, iv = vs_window(r.window, r.winner)
    assert iv is not None and iv.n == 4 and iv.lo < 1 < iv.hi and ratio == pytest.approx(r.winner.ppl_ext / w.ppl_ext)
    assert not r.pays and r.verdict.startswith(f"extension does not pay here: use a sliding window ({r.winner.label} "
                                               f"ties with it on ppl_ext")
    table = format_tune(r).splitlines()
    row = next(line for line in table if line.split()[:1] == ["window"])
    assert f"{w.ppl_in:.4g}" in row and f"{w.ppl_ext:.4g}" in row and "sliding window of 128, stride 64" in row
    assert table[-1] == r.verdict
    d = json.loads(json.dumps(r.to_json()))
    assert d["window"] == {"label": "window", "ppl_in": pytest.approx(w.ppl_in, rel=1e-5),
                           "ppl_ext": pytest.approx(w.ppl_ext, rel=1e-5), "window": L, "stride": L // 2}
    assert d["pays"] is False and d["verdict"] == r.verdict and d["tuning"] and d["winner"]["method"] == "ntk"
    assert d["vs_window"] == {"ppl_ext_ratio": pytest.approx(ratio, rel=1e-5),
                              "ci": [pytest.approx(iv.lo, rel=1e-5), pytest.approx(iv.hi, rel=1e-5)],
                              "paired_over": "4 blocks"}


# ---- does not pay: the verdict, --apply refuses, --force applies -----------------------------------


def test_does_not_pay_is_said_plainly(losing):
    r = losing
    assert r.winner is not None and r.winner.feasible  # a feasible winner ...
    assert r.winner.ppl_ext >= r.window.ppl_ext  # ... that the window beats (this text's premise)
    assert not r.pays
    ratio, iv = vs_window(r.window, r.winner)  # +16.6% [-13.7%, +57.6%] here: worse, but a tie on 4 blocks
    assert ratio > 1 and iv is not None and iv.lo < 1
    assert r.verdict == (f"extension does not pay here: use a sliding window ({r.winner.label} ties with it on "
                         f"ppl_ext: {r.winner.ppl_ext:.4g} vs window {r.window.ppl_ext:.4g}, "
                         f"{100 * (ratio - 1):+.1f}% [{100 * (iv.lo - 1):+.1f}%, {100 * (iv.hi - 1):+.1f}%], paired "
                         f"over 4 blocks of one window, a rough guide; the interval includes 0%, more text would "
                         f"narrow it: eval --windows 2 or more)")
    assert format_tune(r).splitlines()[-1] == r.verdict
    assert r.to_json()["pays"] is False


def test_apply_refuses_a_winner_that_does_not_pay_and_force_applies_it(losing, copy_fixture):
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    with pytest.raises(ApplyRefused) as e:
        apply_tune(path, losing)
    msg = str(e.value)
    assert "\n" not in msg and "extension does not pay here" in msg and "--force" in msg and "nothing written" in msg
    assert sha256(path) == before and inspect_gguf(path).provenance is None
    done = apply_tune(path, losing, force=True)
    assert done.applied is not None and any("--force" in w and "does not pay" in w for w in done.warnings)
    prov = inspect_gguf(path).provenance
    assert prov.method == "ntk" and prov.alpha == pytest.approx(losing.winner.alpha) and prov.ctx == CTX
    assert done.to_json()["warnings"] == list(done.warnings)
    revert_gguf(path)
    assert sha256(path) == before


def test_apply_refuses_when_nothing_is_feasible(losing, copy_fixture):
    import dataclasses

    path = copy_fixture("tiny-llama-f32.gguf")
    none_won = dataclasses.replace(losing, winner=None)
    for force in (False, True):
        with pytest.raises(ApplyRefused, match="found no ntk alpha within the ppl_in tolerance"):
            apply_tune(path, none_won, force=force)
    assert inspect_gguf(path).provenance is None


def test_cli_apply_refuses_then_force_applies(tmp_path, copy_fixture, cli):
    path = copy_fixture("tiny-llama-f32.gguf")
    text = tmp_path / "abc.txt"
    text.write_text("abcdefghij" * 100)
    before = sha256(path)
    base = ["tune", path, "--ctx", str(CTX), "--text", str(text), "--threads", "2", "-q"]
    r = cli(*base, "--apply")
    assert r.returncode == 2 and sha256(path) == before
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ropepatch: error: ") and "does not pay" in err[0], r.stderr
    assert "window" in r.stdout and "extension does not pay here: use a sliding window" in r.stdout  # the table
    r = cli(*base, "--apply", "--json")
    assert r.returncode == 2 and sha256(path) == before
    d = json.loads(r.stdout)  # one JSON document: the result, with the refusal
    assert d["pays"] is False and "does not pay" in d["refused"] and "applied" not in d
    r = cli(*base, "--apply", "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert "ropepatch: warning: --force: applied" in r.stderr
    d = json.loads(r.stdout)
    assert d["applied"]["method"] == "ntk" and d["pays"] is False and d["warnings"]
    assert inspect_gguf(path).provenance.alpha == pytest.approx(d["winner"]["alpha"])
    r = cli(*base, "--force")  # --force alone is a mistake, said in one line
    assert r.returncode == 2 and "--force only matters with --apply" in r.stderr


# ---- --method all -------------------------------------------------------------------------------


def test_method_all_picks_the_best_across_methods_and_applies_it(model, pays_tokens, copy_fixture):
    steps = []
    path = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(path)
    r = tune(path, CTX, tokens=pays_tokens, method="all", tolerance=0.3, model=model, on_step=steps.append,
             apply=True, force=True, budget=0.01, **FAST)  # budget: the factors search stops at once
    # (force: on this random-weight fixture the winner ties with the window, which does not pay)
    assert isinstance(r, TuneAllResult)
    searched = [x.method for x in r.results]
    assert {"ntk", "dynamic", "linear", "yarn", "ntk-parts"} <= set(searched)  # all but (maybe) factors
    assert set(searched) | {m for m, _ in r.skipped} == set(tune_all.TUNABLE)
    best = min((x for x in r.results if x.winner), key=lambda x: x.winner.ppl_ext)
    assert (r.winner_method, r.winner) == (best.method, best.winner)
    assert all(x.window == r.window and x.baseline_ppl_in == r.baseline_ppl_in for x in r.results)
    assert sum("scoring window" in s for s in steps) == 1  # window and baseline: once for all methods
    assert any("(method 2 of" in s for s in steps)
    ratio, iv = vs_window(r.window, r.winner)
    assert iv is not None and r.pays == (iv.hi < 1)  # paired, like eval's verdict
    assert r.verdict == pay_verdict(r.window, r.winner, "any method")[1]
    text = format_tune(r)
    assert f"winner: {r.winner.label}" in text and text.splitlines()[-2] == r.verdict
    assert sum(line.split()[:1] == ["window"] for line in text.splitlines()) == 1
    d = json.loads(json.dumps(r.to_json()))
    assert d["method"] == "all" and set(d["methods"]) == set(searched) and d["window"]["stride"] == L // 2
    assert d["winner"]["method"] == r.winner_method and d["applied"]["method"] == r.winner_method
    prov = inspect_gguf(path).provenance
    assert prov.method == r.winner_method and prov.alpha == pytest.approx(r.winner.alpha)
    revert_gguf(path)
    assert sha256(path) == before


def _synthetic_scorer(calls: list):
    """No model: ppl_in grows with log alpha; ppl_ext has a per-method optimum; window 30."""
    opt = {"ntk": 3.0, "dynamic": 2.5, "linear": 2.0, "yarn": 4.0, "ntk-parts": 3.5, "factors": 2.2}
    scale = {"ntk": 4.0, "dynamic": 4.4, "linear": 4.6, "yarn": 3.6, "ntk-parts": 3.9, "factors": 3.7}

    def scorer(spec, stop_in=None):
        calls.append(spec.method)
        if spec.method == "window":
            return {"result": {"ppl_in": 6.0, "ppl_ext": 30.0}}
        a = spec.alpha or 1.0
        pin = 6.0 * (1 + 0.01 * math.log(a))
        if stop_in is not None and stop_in(pin):
            return {"result": {"ppl_in": pin, "ppl_ext": None}, "complete": False}
        return {"result": {"ppl_in": pin, "ppl_ext": scale[spec.method] * math.exp((math.log(a / opt[spec.method]))
                                                                                  ** 2)}}

    return scorer


def test_all_measures_window_once_and_plugins_hook_in(monkeypatch):
    """The dispatch: alpha searches for every method but ``factors``, whose search plugs in
    from :data:`tune_all.PLUGIN_MODULE`; without it, ``all`` skips it and ``--method factors``
    is one line."""
    monkeypatch.setattr(tune_all, "plugin_searches", lambda: {})
    calls: list = []
    r = tune(MODEL, CTX, method="all", scorer=_synthetic_scorer(calls))
    assert calls.count("window") == 1 and "none" not in calls  # no separate baseline run
    assert [x.method for x in r.results] == [m for m in tune_all.TUNABLE if m != "factors"]
    assert [m for m, _ in r.skipped] == ["factors"] and "skipped factors:" in format_tune(r)
    assert r.winner_method == "yarn" and r.pays  # the lowest ppl_ext of all the methods' winners
    with pytest.raises(UsageError, match="--method factors: tune cannot search it here"):
        tune(MODEL, CTX, method="factors", scorer=_synthetic_scorer([]))

    seen = []

    def plugged(shared, method):  # what a plug-in gets, and how it answers
        seen.append((method, shared.window.ppl_ext, shared.limit))
        pts = (("points", (1.0, 2.0)),)
        pin, pext = measured(shared.scorer(MethodSpec("factors[1,2]", method, 2.0, pts), None))
        t = Trial(2.0, "factors[1,2]", pin, pext, True, "start", options=pts)
        return shared.finish(method, [t], t, "one profile")

    monkeypatch.setattr(tune_all, "plugin_searches", lambda: {"factors": plugged})
    calls.clear()
    r = tune(MODEL, CTX, method="all", scorer=_synthetic_scorer(calls))
    assert calls.count("window") == 1 and seen == [("factors", 30.0, pytest.approx(6.0 * 1.05))]
    f = next(x for x in r.results if x.method == "factors")
    assert not r.skipped and f.winner.options == (("points", (1.0, 2.0)),) and f.pays
    assert r.to_json()["methods"]["factors"]["winner"]["options"] == {"points": [1.0, 2.0]}


def test_cli_help_and_choices(cli):
    r = cli("tune", "-h")
    assert r.returncode == 0
    assert "--method all" in r.stdout and "--apply --force" in r.stdout and "does not pay" in r.stdout
    r = cli("tune", MODEL, "--ctx", "256", "--text", "x", "--method", "bogus")
    assert r.returncode == 2 and "invalid choice" in r.stderr
