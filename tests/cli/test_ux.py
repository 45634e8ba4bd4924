"""Command-line UX (issue #13 item 4): progress off a terminal, Ctrl-C, one-line argument
errors, ``--json`` errors, revert wording, ``gguf -o`` overwrite, HF ``revert -o``,
``--from-hf`` checks and help text for every option."""

from __future__ import annotations

import argparse
import io
import json
import sys
from types import SimpleNamespace

import pytest

from ropepatch.quality.progress import Progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _args(**kw):
    return SimpleNamespace(**{"json": False, "quiet": False, **kw})


def _feed(cb, total=1000, seconds=(1.0, 6.0, 40.0, 80.0)):
    for i, t in enumerate(seconds):
        cb(Progress("yarn", (i + 1) * total // (len(seconds) + 1), total, 10.0, 50.0, t))
    cb(Progress("yarn", total, total, 10.0, 0.0, seconds[-1] + 1))


def test_progress_lines_when_stderr_is_not_a_terminal(monkeypatch):
    from ropepatch.cli.progress import quality_progress

    for json_flag in (False, True):
        err = _Stream(tty=False)
        monkeypatch.setattr(sys, "stderr", err)
        cb = quality_progress(_args(json=json_flag))
        _feed(cb)
        text = err.getvalue()
        assert "\r" not in text
        assert text.startswith("estimate: ")
        assert "progress: yarn:" in text and "tok/s" in text and "ETA" in text


def test_progress_bar_on_a_terminal_and_none_with_quiet(monkeypatch):
    from ropepatch.cli.progress import quality_progress

    err = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", err)
    _feed(quality_progress(_args()))
    assert "\r" in err.getvalue()
    assert quality_progress(_args(quiet=True)) is None
    quiet = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", quiet)
    assert quality_progress(_args(quiet=True)) is None


def test_short_run_off_a_terminal_is_silent(monkeypatch):
    from ropepatch.cli.progress import quality_progress

    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    _feed(quality_progress(_args()), seconds=(0.5, 1.0))
    assert err.getvalue() == ""
