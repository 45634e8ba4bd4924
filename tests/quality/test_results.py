"""The eval table reads as a table (headers never run together) and ends in a verdict against
the window baseline."""

from __future__ import annotations

from ropepatch.quality.results import Bucket, EvalResult, MethodResult, Timing, format_table, verdict


def _m(name, ppl_in, ppl_ext, edges=((0, 8192), (8192, 9557), (9557, 10923))):
    buckets = tuple(Bucket(a, b, 10.0, 1) for a, b in edges)
    return MethodResult(name, name, None, {}, buckets, ppl_in, ppl_ext, 1, 1, 1.0, 1.0, 100)


def _result(**methods):
    t = Timing(1.0, 1.0, 100, 1, 20000, 512, 2)
    return EvalResult("m.gguf", 8192, 10923, 10922, {n: _m(n, *v) for n, v in methods.items()}, t)


def test_verdict_when_a_method_beats_the_window():
    r = _result(none=(10.3, 76.5), yarn=(10.64, 9.69), window=(10.3, 9.99))
    assert verdict(r) == ("verdict: yarn beats the window baseline on ppl_ext: 9.69 vs 9.99 (-3.0%), "
                          "at ppl_in 10.64 (+3.3% vs the unscaled 10.3)")


def test_verdict_when_extension_does_not_pay():
    r = _result(yarn=(6.91, 4.36), window=(6.68, 4.33))
    v = verdict(r)
    assert v.startswith("verdict: no method beats the window baseline on ppl_ext (best yarn 4.36 vs 4.33, +0.7%")
    assert "extension does not pay on this text" in v


def test_verdict_without_window():
    assert "no window baseline" in verdict(_result(yarn=(6.91, 4.36)))


def test_headers_stay_apart_at_12k():
    head = format_table(_result(yarn=(6.91, 4.36), window=(6.68, 4.33))).splitlines()[0]
    assert "8k-9557  " in head and " 9557-10923" in head and "9557-10923  " in head


def test_plot_target_is_checked_before_any_scoring(tmp_path):
    import pytest

    from ropepatch.errors import RopepatchError
    from ropepatch.quality.plot import check_plot_target

    check_plot_target(str(tmp_path / "p.png"))
    for bad, why in [(tmp_path / "no" / "p.png", "does not exist"), (tmp_path, "is a directory; ropepatch only")]:
        with pytest.raises(RopepatchError, match=why):
            check_plot_target(str(bad))
