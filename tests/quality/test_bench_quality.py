"""tools/bench_quality.py end to end on the tiny llama fixture (real llama.cpp, seconds): the
cache round-trips a MethodResult exactly, the report has every section with intervals, the
paired verdicts and the goal lines, and a second run measures nothing (resumable)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import bench_archive as ba  # noqa: E402
import bench_quality as bq  # noqa: E402

from ropepatch.quality import evaluate as E  # noqa: E402

TINY = str(ROOT / "fixtures" / "tiny-llama-f32.gguf")


def _run(tmp_path, *args: str) -> None:
    base = ["--model", TINY, "--goal-ctx", "256,512", "--cache", str(tmp_path / "cache"),
            "--archive", str(tmp_path / "archive"),
            "--out", str(tmp_path / "out"), "--threads", "1", "--budget", "0.01", "--trials", "2"]
    assert bq.main(base + list(args)) == 0


def test_cache_roundtrip_keeps_intervals():
    rng = np.random.default_rng(0)
    nll = rng.uniform(1, 3, 300)
    count = np.ones(300, dtype=np.int64)
    count[0] = 0
    nll[0] = 0.0
    r = E.MethodResult("yarn", "yarn", 2.0, {"alpha": 2.0}, (E.Bucket(0, 300, 7.0, 299),), 7.0, 8.0, 127, 172,
                       1.5, 1.0, 299, nll, count, ((1.0, 127, 2.0, 172),))
    back = ba.method_from_cache(ba.method_to_cache(r))
    assert np.array_equal(back.nll_sum, r.nll_sum) and np.array_equal(back.count, r.count)
    assert back.per_window == r.per_window and back.buckets == r.buckets
    assert back.interval("ext", 128) == r.interval("ext", 128)
    assert not math.isnan(back.interval("ext", 128).lo)


def test_bench_report_and_resume(tmp_path, capsys):
    _run(tmp_path, "--ctx", "256", "--methods", "window,yarn,ntk-parts,tuned", "--no-passkey")
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "window,yarn", "--depths", "0.1,0.3,0.5,0.7,0.9")
    md = (tmp_path / "out" / "results.md").read_text()
    for section in ("## Goal", "## Summary", "## Passkey retrieval, ctx 512", "## Not measured yet",
                    "Tuning `factors`", "Winner: factors[", "results-2026-11.md", "rough guide", "Measured on:"):
        assert section in md, section
    assert "- (a) 256, both texts: **" in md and "- (b) 512, at least one text: **" in md
    assert "- (c) passkey at 512, depths 0.1, 0.3, 0.5, 0.7, 0.9: **" in md
    assert "(c) passkey at 512, depths 0.1, 0.3, 0.5, 0.7, 0.9: **not measured" not in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| tuned factors |"))
    assert row.count("[") >= 3 and any(v in row for v in ("| beats |", "| tie |", "| does not pay |"))
    assert "| yarn | " in md and "/2 [" in md  # passkey cells: correct/trials [Wilson]
    assert (tmp_path / "out" / "results-topics-256.png").is_file()
    capsys.readouterr()
    _run(tmp_path, "--ctx", "256", "--methods", "window,yarn,ntk-parts,tuned", "--no-passkey")
    log = capsys.readouterr().out
    assert "eval " not in log and "tune " not in log  # everything came from the cache
    assert (tmp_path / "out" / "results.md").read_text().split("Report written")[0] == md.split("Report written")[0]


def test_passkey_run_in_parts_is_merged(tmp_path):
    """A long passkey run split by depth (``--depths 0.5`` now, the rest later) is one row: the
    depths not yet measured say so, the status is `partial` until every depth is in, and the
    goal line and "Not measured yet" name what is left."""
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "yarn", "--passkey-only", "--depths", "0.5")
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "yarn", "--report-only")
    md = (tmp_path / "out" / "results.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| yarn | "))
    assert row.count("not measured") == 4 and "/2 [" in row
    assert "| partial (1 of 5 depths) |" in row or "| fails |" in row
    assert "yarn: measured at depth 0.5: " in md
    assert "- passkey ctx 512, yarn: depths 0.1, 0.3, 0.7, 0.9 (2 trials)" in md
    assert "(c) passkey at 512, depths 0.1, 0.3, 0.5, 0.7, 0.9: **not measured** -- no method was run at every " \
           "goal depth. yarn: measured at depth 0.5" in md
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "yarn", "--passkey-only",
         "--depths", "0.1,0.3,0.7,0.9")
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "yarn", "--report-only")
    md = (tmp_path / "out" / "results.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| yarn | "))
    assert "not measured" not in row and row.count("/2 [") == 5 and "partial" not in row
    assert "(c) passkey at 512, depths 0.1, 0.3, 0.5, 0.7, 0.9: **not measured" not in md
    assert "- passkey ctx 512, yarn" not in md


def test_a_fresh_machine_reports_from_the_archive(tmp_path):
    """Every finished entry is also written to the archive (committed in the repository): with
    the machine's cache gone, --report-only writes the same report from it, and nothing is
    measured again (the per-position sums travel as float32)."""
    import shutil

    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "window,yarn,tuned", "--depths", "0.5")
    before = (tmp_path / "out" / "results.md").read_text()
    archived = sorted(p.name for p in (tmp_path / "archive").rglob("*.json"))
    assert any(n.startswith("ppl-") for n in archived) and any(n.startswith("tune-") for n in archived)
    assert any(n.startswith("passkey-") for n in archived)
    cache = sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))
    assert set(archived) <= set(cache)  # stopped tune candidates stay in the cache only
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "out" / "results.md").unlink()
    _run(tmp_path, "--report-only", "--ctx", "512", "--texts", "topics", "--depths", "0.5")
    assert (tmp_path / "out" / "results.md").read_text() == before
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.json"))


def test_archive_keeps_float32_sums_and_archive_cache_copies_entries(tmp_path):

    nll = np.random.default_rng(1).uniform(0.1, 15, 1000)
    d = {"key": {"k": 1}, "complete": True, "method": {"nll_sum": ba.pack(nll, np.float64), "name": "yarn"}}
    small = ba.compact(d)
    assert "nll_sum" not in small["method"] and len(small["method"]["nll_sum32"]) < len(d["method"]["nll_sum"])
    back = ba.unpack(ba.expand(small)["method"]["nll_sum"], np.float64)
    assert np.array_equal(back, nll.astype(np.float32).astype(np.float64))
    store = ba.Store(tmp_path / "cache", tmp_path / "archive")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ppl-a.json").write_text(json.dumps(d))
    (tmp_path / "cache" / "ppl-b.json").write_text(json.dumps({**d, "complete": False}))
    assert store.archive_all() == 1 and [p.name for p in (tmp_path / "archive").iterdir()] == ["ppl-a.json"]
    assert store.get("ppl-b.json", {"k": 1})["complete"] is False and store.get("ppl-a.json", {"k": 2}) is None
    (tmp_path / "cache" / "ppl-a.json").unlink()
    assert store.get("ppl-a.json", {"k": 1})["method"]["nll_sum"] == ba.expand(small)["method"]["nll_sum"]


def test_a_method_at_another_factor_is_its_own_row(tmp_path):
    """``--methods yarn@3`` at ctx 512 on the 128-token fixture (s = 4 would be ctx/L): scored
    with alpha 3, cached under its own label, a row of its own in the perplexity table and the
    passkey table, the report rebuilt from the cache alone (``--report-only``) included."""
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "window,yarn,yarn@3", "--depths", "0.5")
    y3 = next((tmp_path / "cache").rglob("ppl-topics-512-w1-yarn_a3.json"))
    # a tune candidate's entry (stopped, with an attn_factor: "_a" in its name) is not a row
    (y3.parent / "ppl-topics-512-w1-factors_1_1_2__a1.1.json").write_text(y3.read_text())
    _run(tmp_path, "--ctx", "512", "--texts", "topics", "--methods", "window", "--report-only", "--depths", "0.5")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "factors_1_1_2" not in md
    ppl = [ln for ln in md.split("## Passkey retrieval")[0].splitlines() if ln.startswith("| yarn@3 | ")]
    assert len(ppl) == 1 and ppl[0].count("[") >= 3
    assert sum(ln.startswith("| yarn@3 | ") and "/2 [" in ln for ln in md.splitlines()) == 1
    entry = json.loads(next((tmp_path / "cache").rglob("ppl-topics-512-w1-yarn_a3.json")).read_text())
    assert entry["key"]["label"] == "yarn@3" and entry["method"]["alpha"] == 3.0


def test_method_at_factor_is_checked_like_the_cli(capsys):
    import pytest

    for bad, said in (("window@3", "unknown method 'window@3'"), ("yarn@x", "expected METHOD@ALPHA with a number"),
                      ("yarn@0.5", "expected a finite number >= 1")):
        with pytest.raises(SystemExit):
            bq.parse_args(["--methods", bad])
        assert said in capsys.readouterr().err
