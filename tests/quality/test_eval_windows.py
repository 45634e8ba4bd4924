"""``eval --windows K`` on the tiny llama fixture (training ctx 128) through the real llama.cpp:
the K windows scored are the ones claimed (each equals a one-window eval of that stretch of the
text), the intervals are there and contain the point estimates, a text too short for K windows
is one line, and the CLI carries it all to the table and the JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import FIXTURES, require

require("llama_cpp")

from ropepatch.errors import UsageError  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.quality.stats import mean_interval  # noqa: E402

MODEL = str(FIXTURES / "tiny-llama-f32.gguf")
L = 128
CTX = 256
K = 3


@pytest.fixture(scope="module")
def model():
    with E.Model(MODEL, n_threads=2, n_batch=128) as m:
        yield m


@pytest.fixture(scope="module")
def tokens(model):
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return model.tokenize(f.read()[:2000])  # byte-level: ~2000 tokens, 7 windows of 256


@pytest.fixture(scope="module")
def progress_log():
    return []


@pytest.fixture(scope="module")
def result(model, tokens, progress_log):
    return E.evaluate(MODEL, CTX, tokens=tokens, model=model, methods="ntk,yarn", max_windows=K,
                      progress=progress_log.append)


def test_the_windows_scored_are_the_ones_claimed(result, model, tokens):
    body = CTX - 1  # the fixture adds a BOS
    assert result.window_spans == tuple((w * body, (w + 1) * body) for w in range(K))
    assert result.timing.windows == K and result.tokens == K * body
    for w, (a, b) in enumerate(result.window_spans):
        alone = E.evaluate(MODEL, CTX, tokens=tokens[a:b], model=model, methods="ntk,yarn", max_windows=1)
        for name, m in result.methods.items():
            si, ni, se, ne = m.per_window[w]
            assert (ni, ne) == (L - 1, CTX - L)
            assert math.exp(si / ni) == pytest.approx(alone.methods[name].ppl_in, rel=1e-6), (name, w)
            assert math.exp(se / ne) == pytest.approx(alone.methods[name].ppl_ext, rel=1e-6), (name, w)
    # the pooled figures are the windows' mean NLL (equal-sized windows)
    for m in result.methods.values():
        assert math.log(m.ppl_ext) == pytest.approx(np.mean([se / ne for _, _, se, ne in m.per_window]))


def test_intervals_are_present_and_contain_the_estimates(result):
    assert result.sampling()[:2] == ("window", K)
    for name, m in result.methods.items():
        for region, ppl in (("in", m.ppl_in), ("ext", m.ppl_ext)):
            iv = m.interval(region, L)
            assert iv is not None and iv.n == K and iv.lo < ppl < iv.hi, (name, region)
            i = 0 if region == "in" else 2
            ref = mean_interval([w[i] / w[i + 1] for w in m.per_window])  # t with K - 1 = 2 df
            assert (math.log(iv.lo), math.log(iv.hi)) == pytest.approx((ref.lo, ref.hi), abs=1e-9)
    ratio, iv = result.vs_window("yarn", "ext")
    assert iv is not None and iv.lo <= ratio <= iv.hi
    _, iv_in = result.vs_window("ntk", "in")
    assert iv_in is not None and iv_in.n == K
    d = json.loads(json.dumps(result.to_json()))
    assert d["intervals"]["samples"] == K and d["verdict"] == E.format_table(result).splitlines()[-1]
    assert "paired over 3 windows" in d["verdict"]


def test_progress_names_the_window(result, progress_log):
    labels = {p.label for p in progress_log}
    assert {"ntk 1/3", "ntk 3/3", "window 2/3"} <= labels
    assert progress_log[-1].done == progress_log[-1].total == result.timing.tokens_decoded


def test_one_window_gets_block_intervals(model, tokens):
    r = E.evaluate(MODEL, 512, tokens=tokens, model=model, methods="ntk", max_windows=1)
    unit, n, text = r.sampling()
    assert unit == "block" and n == 4 and "rough guide" in text
    m = r.methods["ntk"]
    assert m.interval("ext", L).lo < m.ppl_ext < m.interval("ext", L).hi
    assert "blocks of one window, a rough guide" in E.format_table(r)


def test_more_windows_than_the_text_holds_is_one_line(model, tokens):
    fit = len(tokens) // (CTX - 1)
    with pytest.raises(UsageError) as e:
        E.evaluate(MODEL, CTX, tokens=tokens, model=model, methods="ntk", max_windows=fit + 1)
    msg = str(e.value)
    assert "\n" not in msg and f"--windows {fit + 1}:" in msg and f"pass --windows {fit} or fewer" in msg


def test_cli_windows(tmp_path, capsys):
    from ropepatch import cli

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)  # 900 bytes: 3 windows of 256
    base = ["eval", MODEL, "--ctx", str(CTX), "--text", str(text), "--methods", "ntk", "--threads", "2", "-q"]
    argv = base + ["--windows", "2"]
    assert cli.main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["windows"] == [[0, 255], [255, 510]] and d["intervals"]["unit"] == "window"
    assert d["methods"]["ntk"]["vs_window"]["ppl_ext"]["ci"] is not None
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Student t over 2 windows (1 df)" in out and out.strip().splitlines()[-1].startswith("verdict: ")
    assert cli.main(base + ["--windows", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "which hold 3 window(s)" in err and "pass --windows 3 or fewer" in err
