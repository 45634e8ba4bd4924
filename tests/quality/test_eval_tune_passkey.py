"""Tune and passkey on the tiny fixtures (training ctx 128, byte-level vocabulary, random
weights) at ctx 512, the tune search on a synthetic objective, and ``--flash-attn`` of eval /
tune / passkey reaching the runtime.

As for eval, the numbers of a random-weight model mean nothing: these tests check the machinery
(the table and its winner, applying it, stopping early, passkey depths sharing their prefix)."""

from __future__ import annotations

import json
import math

import pytest
from _helpers_eval import CTX, MODEL, L
from _helpers_eval import model as model  # the shared fixtures, by name
from _helpers_eval import text as text
from _helpers_eval import tokens as tokens
from conftest import require

require("llama_cpp")

from ropepatch.patch.gguf import inspect_gguf  # noqa: E402

# ---- tune --------------------------------------------------------------------------------------


def test_tune_table_winner_and_apply(copy_fixture, tokens, model):
    from ropepatch.quality.tune import format_tune, tune

    path = copy_fixture("tiny-llama-f32.gguf")
    r = tune(path, CTX, tokens=tokens, method="ntk", tolerance=0.5, refine=1, apply=True, force=True,
             model=model)  # force: on this random-weight fixture the winner ties with the window
    assert len(r.tried) >= 2 and r.winner is not None and r.winner.feasible
    assert any(t.alpha == pytest.approx(CTX / L) for t in r.tried)  # the untuned formula is in the table
    feasible = [t for t in r.tried if t.feasible]
    assert r.winner.ppl_ext == min(t.ppl_ext for t in feasible)
    assert all(t.ppl_in <= r.limit for t in feasible)
    assert all(t.ppl_ext is None for t in r.tried if not t.feasible)
    d = json.loads(json.dumps(r.to_json()))
    assert d["winner"]["alpha"] == pytest.approx(r.winner.alpha) and d["tried"] and d["verdict"]
    assert "winner" in format_tune(r)
    prov = inspect_gguf(path).provenance
    assert prov is not None and prov.method == "ntk" and prov.alpha == pytest.approx(r.winner.alpha)
    assert prov.ctx == CTX


def test_tune_prefix_check_stops_infeasible_early(tokens, model):
    from ropepatch.quality.tune import tune

    r = tune(MODEL, CTX, tokens=tokens, method="linear", tolerance=0.0, grid=[4.0], refine=0, model=model)
    t = next(x for x in r.tried if x.alpha == 4.0)
    if not t.feasible:  # linear x4 moves ppl_in; stopped after the first L positions
        assert t.ppl_ext is None and "stopped" in t.note


@pytest.mark.parametrize("opt, slope", [(2.7, 0.05), (2.7, 0.2), (1.5, 0.01), (8.0, 0.001)])
def test_tune_search_finds_constrained_optimum_in_few_evaluations(opt, slope):
    """Search logic on a synthetic objective (no model): ppl_in grows with log alpha, ppl_ext is
    smooth and unimodal in log alpha with its minimum at ``opt``; the answer is the best
    feasible alpha, min(opt, the tolerance boundary)."""
    from ropepatch.quality.tune import tune

    calls = []

    def scorer(spec, stop_in=None):
        a = spec.alpha or 1.0
        pin = 6.68 * (1 + slope * math.log(a)) if spec.method != "none" else 6.68
        pext = 4.0 * math.exp(2 * (math.log(a) - math.log(opt)) ** 2)
        calls.append(spec.label)
        if stop_in is not None and stop_in(pin):
            return {"result": {"ppl_in": pin, "ppl_ext": None}, "complete": False}
        return {"result": {"ppl_in": pin, "ppl_ext": pext}, "complete": True}

    r = tune(MODEL, 256, method="ntk", scorer=scorer)
    target = min(opt, math.exp(0.05 / slope))
    assert r.winner is not None and r.winner.ppl_in <= r.limit
    assert abs(math.log(r.winner.alpha / target)) < 0.1, (r.winner.alpha, target)
    assert len(calls) <= 1 + 8  # the baseline prefix + at most 8 candidates


# ---- passkey -----------------------------------------------------------------------------------


def test_passkey_per_depth(model):
    from ropepatch.quality.passkey import format_passkey, make_keys, passkey

    r = passkey(MODEL, CTX, methods="none,ntk", depths="0.1,0.95", trials=2, seed=7, model=model)
    assert list(r.methods) == ["none", "ntk", "window"]
    assert list(r.keys) == make_keys(2, 7) and all(len(k) == 5 and k.isdigit() for k in r.keys)
    assert r.tokens <= CTX
    for name in ("none", "ntk"):
        ds = r.methods[name].depths
        assert [d.depth for d in ds] == [0.1, 0.95]
        assert ds[0].position < ds[1].position
        for d in ds:
            assert d.visible and d.trials == 2 and 0 <= d.correct <= 2
            assert d.accuracy == d.correct / 2 and d.key_nll > 0 and len(d.greedy) == 2
    w = r.methods["window"].depths
    assert not w[0].visible and w[0].accuracy is None  # the key lies before the last L tokens
    assert w[1].visible and w[1].accuracy is not None
    d = json.loads(json.dumps(r.to_json()))
    assert set(d["methods"]["ntk"]["depths"][0]) >= {"depth", "accuracy", "key_nll", "visible"}
    assert "depth 0.1" in format_passkey(r)


def test_passkey_depths_share_the_prefix(model):
    """Depths run deepest first and reuse the cached filler: the same answers as scoring each
    depth on its own, with the shallower prefixes never decoded again."""
    from ropepatch.quality.passkey import build_prompts, passkey

    depths = [0.2, 0.9, 0.5]
    r = passkey(MODEL, CTX, methods="ntk", depths=depths, trials=2, seed=3, model=model, window=False)
    assert [d.depth for d in r.methods["ntk"].depths] == depths  # the order asked for
    alone_tokens = 0
    for i, d in enumerate(depths):
        a = passkey(MODEL, CTX, methods="ntk", depths=[d], trials=2, seed=3, model=model, window=False)
        alone_tokens += a.tokens_decoded
        got, want = r.methods["ntk"].depths[i], a.methods["ntk"].depths[0]
        assert (got.correct, got.greedy, got.position) == (want.correct, want.greedy, want.position)
        assert got.key_nll == pytest.approx(want.key_nll, rel=1e-4, abs=1e-5)
    ps = build_prompts(model, CTX, depths, r.keys)
    rests = sum(len(p.rest) - 1 for d in depths for p in ps[d])
    assert r.tokens_decoded == len(ps[0.9][0].prefix) + rests
    assert alone_tokens == sum(len(ps[d][0].prefix) for d in depths) + rests


# ---- --flash-attn on the command line --------------------------------------------------------


@pytest.mark.parametrize("flag, expected", [(None, None), ("auto", None), ("on", True), ("off", False)])
@pytest.mark.parametrize("command", ["eval", "tune", "passkey"])
def test_cli_flash_attn_reaches_the_runtime(monkeypatch, tmp_path, capsys, command, flag, expected):
    """``--flash-attn`` of eval / tune / passkey is the ``flash_attn`` of the job the runtime
    worker runs (auto = leave llama.cpp's default); the worker then runs the real command."""
    from ropepatch import cli
    from ropepatch.quality import isolated

    seen = []
    real_run = isolated.run_isolated

    def spy(job, **kw):
        seen.append(job.kwargs["flash_attn"])
        return real_run(job, **kw)

    monkeypatch.setattr(isolated, "run_isolated", spy)
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    argv = [command, MODEL, "--ctx", "512" if command == "passkey" else "256", "--threads", "2", "-q", "--json"]
    argv += {"eval": ["--text", str(text), "--methods", "ntk", "--no-window"],
             "tune": ["--text", str(text), "--method", "ntk"],
             "passkey": ["--methods", "ntk", "--depths", "0.5", "--trials", "1"]}[command]
    if flag is not None:
        argv += ["--flash-attn", flag]
    assert cli.main(argv) == 0
    json.loads(capsys.readouterr().out)
    assert seen == [expected]


def test_cli_flash_attn_rejects_other_values(capsys):
    from ropepatch import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["eval", MODEL, "--ctx", "256", "--text", "x", "--flash-attn", "yes"])
    assert e.value.code == 2
    assert "--flash-attn: invalid choice: 'yes'" in capsys.readouterr().err
