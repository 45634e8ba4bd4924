"""The eval table reads as a table (headers never run together) and ends in a verdict against
the window baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ropepatch.quality.results import Bucket, EvalResult, MethodResult, Timing, format_table, verdict


def _m(name, ppl_in, ppl_ext, edges=((0, 8192), (8192, 9557), (9557, 10923))):
    buckets = tuple(Bucket(a, b, 10.0, 1) for a, b in edges)
    return MethodResult(name, name, None, {}, buckets, ppl_in, ppl_ext, 1, 1, 1.0, 1.0, 100)


def _result(**methods):
    t = Timing(1.0, 1.0, 100, 1, 20000, 512, 2)
    return EvalResult("m.gguf", 8192, 10923, 10922, {n: _m(n, *v) for n, v in methods.items()}, t)


def test_verdict_when_a_method_beats_the_window():
    r = _result(none=(10.3, 76.5), yarn=(10.64, 9.69), window=(10.3, 9.99))
    assert verdict(r) == ("verdict: yarn beats the window baseline on ppl_ext: 9.69 vs 9.99, -3.0% "
                          "(no interval: use --windows 2 or more); at ppl_in 10.64, +3.3% vs the unscaled 10.3")


def test_verdict_when_extension_does_not_pay():
    r = _result(yarn=(6.91, 4.36), window=(6.68, 4.33))
    v = verdict(r)
    assert v.startswith("verdict: no method beats the window baseline on ppl_ext (best yarn: 4.36 vs 4.33, +0.7%")
    assert "extension does not pay on this text" in v


def _windowed(name, ext_nll, in_nll=2.0, L=8192, ctx=10923):
    """A method scored on len(ext_nll) windows: the given mean NLL past L in each window."""
    k = len(ext_nll)
    n_in, n_ext = L - 1, ctx - L
    per = tuple((in_nll * n_in, n_in, e * n_ext, n_ext) for e in ext_nll)
    count = np.full(ctx, k, dtype=np.int64)
    count[0] = 0
    ppl_ext = math.exp(sum(ext_nll) / k)
    return MethodResult(name, name, None, {}, (Bucket(0, ctx, 1.0, 1),), math.exp(in_nll), ppl_ext,
                        k * n_in, k * n_ext, 1.0, 1.0, 100, nll_sum=np.zeros(ctx), count=count, per_window=per)


def _windowed_result(**ext):
    t = Timing(1.0, 1.0, 100, 3, 40000, 512, 2)
    return EvalResult("m.gguf", 8192, 10923, 3 * 10922, {n: _windowed(n, v) for n, v in ext.items()}, t)


@pytest.mark.parametrize("yarn, says", [
    ([2.20, 2.31, 2.10], "verdict: yarn beats the window baseline on ppl_ext"),  # lower in every window
    ([2.40, 2.20, 2.05], "verdict: no method is distinguishable from the window baseline"),  # mixed
    ([2.30, 2.41, 2.20], "verdict: no method beats the window baseline on ppl_ext (best yarn"),  # higher
])
def test_verdict_uses_the_paired_interval(yarn, says):
    window = [2.25, 2.35, 2.15]  # the windows differ far more than the methods: pairing sees through it
    r = _windowed_result(yarn=yarn, window=window)
    v = verdict(r)
    assert v.startswith(says), v
    assert "paired over 3 windows" in v
    ratio, iv = r.vs_window("yarn", "ext")
    d = np.array(yarn) - np.array(window)
    assert math.log(ratio) == pytest.approx(d.mean())
    assert (math.log(iv.lo), math.log(iv.hi)) == pytest.approx(
        (d.mean() - 4.302653 * d.std(ddof=1) / math.sqrt(3), d.mean() + 4.302653 * d.std(ddof=1) / math.sqrt(3)))
    # each method's own interval is over the windows (2 df) and contains its point estimate
    iv_ext = r.methods["window"].interval("ext", 8192)
    assert iv_ext.n == 3 and iv_ext.lo < r.methods["window"].ppl_ext < iv_ext.hi
    table = format_table(r)
    assert "Student t over 3 windows (2 df)" in table and "ppl_ext vs window" in table
    d = r.to_json()
    assert d["intervals"] == {"confidence": 0.95, "unit": "window", "samples": 3,
                              "method": "Student t over 3 windows (2 df) of the per-window mean NLL"}
    assert d["verdict"] == v and d["methods"]["yarn"]["vs_window"]["ppl_ext"]["ci"] == [
        pytest.approx(iv.lo, rel=1e-5), pytest.approx(iv.hi, rel=1e-5)]
    assert len(d["methods"]["yarn"]["windows"]) == 3 and "vs_window" not in d["methods"]["window"]


def test_verdict_without_window():
    assert "no window baseline" in verdict(_result(yarn=(6.91, 4.36)))


def test_headers_stay_apart_at_12k():
    head = format_table(_result(yarn=(6.91, 4.36), window=(6.68, 4.33))).splitlines()[0]
    assert "8k-9557  " in head and " 9557-10923" in head and "9557-10923  " in head


def test_plot_target_is_checked_before_any_scoring(tmp_path):
    from ropepatch.errors import RopepatchError
    from ropepatch.quality.plot import check_plot_target

    check_plot_target(str(tmp_path / "p.png"))
    for bad, why in [(tmp_path / "no" / "p.png", "does not exist"), (tmp_path, "is a directory; ropepatch only")]:
        with pytest.raises(RopepatchError, match=why):
            check_plot_target(str(bad))
