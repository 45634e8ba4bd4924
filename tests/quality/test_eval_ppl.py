"""Perplexity by position, the window baseline and the plot, on the tiny fixtures (training ctx
128, byte-level vocabulary, random weights) at ctx 512.

The perplexities of a random-weight model mean nothing; these tests check the machinery:
the JSON shape, that buckets cover every scored position once, that streaming scoring equals
one full-logits decode, that the window baseline scores the same tokens, and that each method
really reaches llama.cpp."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _helpers_eval import CTX, MODEL, L
from _helpers_eval import model as model  # the shared fixtures, by name
from _helpers_eval import text as text
from _helpers_eval import tokens as tokens
from conftest import require

require("llama_cpp")

from ropepatch.errors import RopepatchError, UsageError  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402


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
