"""Progress for a stderr that is not a terminal: whole lines, at most one per interval, a start
line, one whole-run estimate once it can be measured, and a last line when done."""

from __future__ import annotations

import io

from ropepatch.quality.progress import ESTIMATE_AFTER_S, Progress, progress_lines


def _feed(points, every_s=30.0):
    out = io.StringIO()
    cb = progress_lines(out, every_s=every_s)
    for done, el in points:
        tps = done / el
        cb(Progress("yarn", done, 1000, tps, (1000 - done) / tps, el))
    return out.getvalue().splitlines()


def test_lines_every_interval_with_rate_eta_and_an_estimate():
    lines = _feed([(10, 1), (40, ESTIMATE_AFTER_S + 1), (100, 20), (300, 31), (400, 45), (1000, 3700)])
    assert lines[0].startswith("estimate: 1000 tokens to decode, about 2 min 30 s in all at 7 tok/s")
    assert lines[1] == "progress: yarn: 300/1000 tokens (30.0%), 9.7 tok/s, elapsed 31 s, ETA 1 min 12 s"
    assert lines[2].startswith("progress: yarn: 1000/1000 tokens (100.0%)") and lines[2].endswith("ETA done")
    assert len(lines) == 3 and not any("\r" in ln for ln in lines)


def test_a_short_run_prints_nothing():
    assert _feed([(500, 1), (1000, 2)]) == []
