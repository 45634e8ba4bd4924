"""Perplexity by position, the window baseline, tune, passkey and the plot, on the tiny
fixtures (training ctx 128, byte-level vocabulary, random weights) at ctx 512.

The perplexities of a random-weight model mean nothing; these tests check the machinery:
the JSON shape, that buckets cover every scored position once, that streaming scoring equals
one full-logits decode, that the window baseline scores the same tokens, and that each method
really reaches llama.cpp."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import FIXTURES, require

require("llama_cpp")

from ropepatch.errors import RopepatchError, UsageError  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402

MODEL = str(FIXTURES / "tiny-llama-f32.gguf")
L = 128
CTX = 512


@pytest.fixture(scope="module")
def text() -> str:
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return f.read()[:12000]  # ~12k byte tokens: 23 windows of 512 available


@pytest.fixture(scope="module")
def model():
    with E.Model(MODEL, n_threads=2, n_batch=128) as m:
        yield m


@pytest.fixture(scope="module")
def tokens(model, text):
    return model.tokenize(text)


@pytest.fixture(scope="module")
def progress_log():
    return []


@pytest.fixture(scope="module")
def result(tokens, model, progress_log):
    return E.evaluate(MODEL, CTX, tokens=tokens, model=model, max_windows=2, progress=progress_log.append)


# ---- JSON shape and buckets --------------------------------------------------------------------


def test_json_shape_exact(result):
    d = json.loads(json.dumps(result.to_json()))
    assert set(d) == {"model", "n_ctx_train", "ctx", "tokens", "windows", "intervals", "methods", "verdict",
                      "timing"}
    assert d["model"] == "tiny-llama-f32.gguf" and d["n_ctx_train"] == L and d["ctx"] == CTX
    assert d["tokens"] == 2 * (CTX - 1) and d["windows"] == [[0, CTX - 1], [CTX - 1, 2 * (CTX - 1)]]
    assert d["intervals"]["unit"] == "window" and d["intervals"]["samples"] == 2
    assert list(d["methods"]) == ["none", "linear", "ntk", "dynamic", "yarn", "window"]
    for name, m in d["methods"].items():
        extra = {"vs_window"} if name != "window" else set()
        assert set(m) == {"params", "buckets", "ppl_in", "ppl_ext", "ppl_in_ci", "ppl_ext_ci", "windows"} | extra
        assert m["ppl_in_ci"][0] <= m["ppl_in"] <= m["ppl_in_ci"][1] and len(m["windows"]) == 2
        assert all(set(b) == {"start", "end", "ppl"} for b in m["buckets"])
        assert m["ppl_in"] > 0 and m["ppl_ext"] > 0
    t = d["timing"]
    assert {"seconds", "decode_seconds", "decode_share", "tokens_per_s", "tokens_decoded", "windows"} <= set(t)
    assert t["windows"] == 2 and 0 < t["decode_share"] <= 1 and t["tokens_per_s"] > 0


def test_buckets_cover_every_scored_position_once(result):
    for name, m in result.methods.items():
        edges = [b.start for b in m.buckets] + [m.buckets[-1].end]
        assert edges[0] == 0 and edges[-1] == CTX and edges == sorted(set(edges)), name
        assert L in edges  # buckets straddle the training length
        assert all(a.end == b.start for a, b in zip(m.buckets, m.buckets[1:]))
        # positions 1..ctx-1 of each window scored exactly once, position 0 never
        assert m.count[0] == 0 and (m.count[1:] == 2).all(), name
        assert sum(b.n for b in m.buckets) == result.tokens == m.n_in + m.n_ext
        assert m.n_in == 2 * (L - 1) and m.n_ext == 2 * (CTX - L)
        # ppl_in / ppl_ext are the count-weighted means of the buckets
        nll_in = sum(math.log(b.ppl) * b.n for b in m.buckets if b.end <= L)
        assert math.isclose(math.exp(nll_in / m.n_in), m.ppl_in, rel_tol=1e-9)


def test_bucket_specs():
    assert E.parse_buckets(None, 16384, 8192) == [0, 2048, 4096, 6144, 8192, 10240, 12288, 14336, 16384]
    assert 8192 in E.parse_buckets(None, 12288, 8192)
    assert E.parse_buckets("0,100,300", CTX, L) == [0, 100, 300, CTX]
    assert E.parse_buckets("4", CTX, L) == [0, 128, 256, 384, 512]
    with pytest.raises(UsageError):
        E.parse_buckets("0,900", CTX, L)


def test_progress_reports_tokens_and_eta(result, progress_log):
    assert progress_log, "no progress reported"
    last = progress_log[-1]
    assert last.done == last.total == result.timing.tokens_decoded
    assert all(p.tokens_per_s > 0 and p.eta_s >= 0 for p in progress_log)
    assert [p.done for p in progress_log] == sorted(p.done for p in progress_log)


# ---- streaming == full logits ------------------------------------------------------------------


@pytest.mark.parametrize("flash_attn", [False, None])
def test_streaming_equals_full_logits(tokens, flash_attn):
    orig = inspect_gguf(MODEL).original
    settings, _ = E.runtime_settings_for(orig, CTX, "yarn", None)
    seq = np.concatenate([[1], tokens[:299]]).astype(np.int32)
    with E.Model(MODEL, n_threads=2, n_batch=64, flash_attn=flash_attn) as m:
        with m.context(settings) as c:
            c.clear()
            streamed = c.score(seq)  # 5 decodes of <= 64 tokens, logits reduced per batch
        # one llama_decode of all 300 tokens with every logit kept (n x vocab); with flash
        # attention llama.cpp's CPU kernel depends on the micro-batch, so split it the same way
        full = score_full_logits = E.score_full_logits(MODEL, seq, settings, model=m,
                                                       n_ubatch=None if flash_attn is False else 64)
    assert np.isnan(streamed[0]) and np.isnan(full[0])
    np.testing.assert_allclose(streamed[1:], score_full_logits[1:], rtol=0, atol=1e-5)
    assert np.isfinite(streamed[1:]).all()


def test_evaluate_matches_reference_perplexity(tokens, model):
    r = E.evaluate(MODEL, 256, tokens=tokens, model=model, methods="ntk", window=False, max_windows=1)
    m = r.methods["ntk"]
    orig = inspect_gguf(MODEL).original
    settings, _ = E.runtime_settings_for(orig, 256, "ntk", None)
    seq = np.concatenate([[model.bos], tokens[:255]])
    ref = E.score_full_logits(MODEL, seq, settings, model=model, n_ubatch=model.n_batch)
    assert math.isclose(m.ppl_in, math.exp(np.mean(ref[1:L])), rel_tol=1e-6)
    assert math.isclose(m.ppl_ext, math.exp(np.mean(ref[L:])), rel_tol=1e-6)


# ---- the window baseline -----------------------------------------------------------------------


def test_sliding_windows_cover_once_with_half_context():
    for n, win in [(512, 128), (500, 128), (16384, 8192), (129, 128), (100, 128)]:
        seen = np.zeros(n, dtype=int)
        for s, e, f in E.sliding_windows(n, win):
            assert e - s <= win and s <= f <= e
            if s > 0:
                assert f - s >= win // 2  # every scored token sees >= L/2 tokens of context
            seen[f:e] += 1
        assert seen[0] == 0 and (seen[1:] == 1).all(), (n, win)


def test_window_baseline_scores_the_same_tokens(result):
    w, none = result.methods["window"], result.methods["none"]
    assert (w.count == none.count).all()
    assert w.params["n_ctx"] == L and w.params["stride"] == L // 2 and w.params["method"] == "none"
    # below L the window IS the unscaled model on the same tokens
    assert math.isclose(w.ppl_in, none.ppl_in, rel_tol=1e-4)
    # and it decodes more tokens (overlapping windows), each within the training length
    assert w.tokens_decoded > none.tokens_decoded


# ---- methods really applied --------------------------------------------------------------------


def test_methods_applied_at_run_time(result):
    m = result.methods
    assert m["none"].params["runtime"] == {"n_ctx": CTX}
    assert m["ntk"].params["freq_base"] > m["none"].params["freq_base"]
    assert m["linear"].params["freq_scale"] == pytest.approx(L / CTX)
    assert m["yarn"].params["scaling_type"] == "yarn" and m["yarn"].params["orig_ctx"] == L
    exts = {k: v.ppl_ext for k, v in m.items()}
    assert len({round(v, 3) for v in exts.values()}) == len(exts), exts  # all different
    assert not math.isclose(exts["ntk"], exts["none"], rel_tol=1e-3)


def test_method_specs_and_alphas():
    specs = E.parse_methods("none,ntk@2.5,yarn", E.parse_alphas("yarn=3"))
    assert [(s.label, s.method, s.alpha) for s in specs] == [
        ("none", "none", None), ("ntk@2.5", "ntk", 2.5), ("yarn", "yarn", 3.0)]
    assert E.parse_alphas("2") == 2.0
    with pytest.raises(UsageError):
        E.parse_methods("nope")
    with pytest.raises(UsageError):
        E.parse_methods("ntk@0.5")


def test_errors(tokens, model):
    with pytest.raises(UsageError, match="larger than the model's training context"):
        E.evaluate(MODEL, L, tokens=tokens, model=model)
    with pytest.raises(UsageError, match="tokens"):
        E.evaluate(MODEL, CTX, tokens=tokens[:100], model=model)
    with pytest.raises(RopepatchError, match="no such file"):
        E.evaluate("/nonexistent.gguf", CTX, text="x")


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


# ---- plot --------------------------------------------------------------------------------------


def test_plot_writes_png(result, tmp_path):
    require("matplotlib")
    from ropepatch.quality.plot import plot_result

    out = plot_result(result, str(tmp_path / "ppl.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    out2 = plot_result(result.to_json(), str(tmp_path / "ppl2.png"))
    assert open(out2, "rb").read(4) == b"\x89PNG"


def test_plot_without_matplotlib(monkeypatch, result, tmp_path):
    import builtins

    from ropepatch.quality import plot

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(RopepatchError, match="matplotlib"):
        plot.plot_result(result, str(tmp_path / "x.png"))


def test_patched_file_is_evaluated_from_its_originals(copy_fixture, tokens, result):
    """A file ropepatch already patched (here: yarn x4) scores each method exactly like the
    untouched file: the runtime settings pin every RoPE field from the ORIGINAL parameters."""
    from ropepatch.patch.gguf import patch_gguf

    path = copy_fixture("tiny-llama-f32.gguf")
    patch_gguf(path, CTX, "yarn", 4.0)
    with E.Model(path, n_threads=2, n_batch=128) as m:
        r = E.evaluate(path, CTX, tokens=tokens, model=m, methods="none,ntk", max_windows=2)
    for name in ("none", "ntk", "window"):
        assert r.methods[name].ppl_in == pytest.approx(result.methods[name].ppl_in, rel=1e-6), name
        assert r.methods[name].ppl_ext == pytest.approx(result.methods[name].ppl_ext, rel=1e-6), name


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
