"""Command-line UX (issue #13 item 4): progress off a terminal, Ctrl-C, one-line argument
errors, ``--json`` errors, revert wording, ``gguf -o`` overwrite, HF ``revert -o``,
``--from-hf`` checks and help text for every option."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
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


def test_interrupt_starts_on_a_new_line_after_a_bar(cli, monkeypatch):
    import ropepatch.cli as cli_mod

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_mod.COMMANDS, "plan", (boom, *cli_mod.COMMANDS["plan"][1:]))
    for tty, expected in ((True, "\nropepatch: interrupted"), (False, "ropepatch: interrupted")):
        err = _Stream(tty=tty)
        monkeypatch.setattr(sys, "stderr", err)
        assert cli_mod.main(["plan", "x", "--ctx", "4096"]) == 130
        assert err.getvalue().startswith(expected), err.getvalue()


@pytest.mark.parametrize("args,see", [
    (["gguf"], "ropepatch gguf -h"),
    (["plan", "x", "--ctx", "1e5"], "ropepatch plan -h"),
    (["passkey", "x", "--ctx", "512", "--bogus"], "ropepatch passkey -h"),
    (["nope"], "ropepatch -h"),
])
def test_argument_errors_are_one_line(cli, args, see):
    r = cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropepatch: error: "), r.stderr
    assert lines[0].endswith(f"; see '{see}'"), r.stderr


def test_json_errors_are_json_on_stdout(cli, tmp_path):
    r = cli("inspect", str(tmp_path / "missing.gguf"), "--json")
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("ropepatch: error: ")
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 2 and err["type"] == "UsageError" and "missing.gguf" in err["message"]
    r = cli("inspect", str(tmp_path / "missing.gguf"))
    assert r.stdout == ""


def _options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {o}", h) for o, h in _options(sub))
        else:
            yield "/".join(action.option_strings) or action.dest, action.help


def test_every_option_has_help():
    from ropepatch.cli import build_parser

    seen = list(_options(build_parser()))
    assert any(name == "passkey --seed" for name, _ in seen)
    missing = [name for name, h in seen if not h or not h.strip()]
    assert not missing, missing


def _hf_copy(tmp_path, name="tiny-llama"):
    import shutil

    from conftest import FIXTURES

    dst = tmp_path / name
    shutil.copytree(FIXTURES / "hf" / name, dst)
    return str(dst)


def test_revert_dry_run_says_would_restore(cli, copy_fixture, tmp_path):
    g = copy_fixture("tiny-llama-f32.gguf")
    assert cli("gguf", g, "--ctx", "1024").returncode == 0
    r = cli("revert", g, "--dry-run")
    assert r.returncode == 0 and "would restore" in r.stdout and "restored" not in r.stdout, r.stdout
    r = cli("revert", g)
    assert r.returncode == 0 and "restored" in r.stdout and "would restore" not in r.stdout
    hf = _hf_copy(tmp_path)
    assert cli("hf", hf, "--ctx", "8192").returncode == 0
    r = cli("revert", hf, "--dry-run")
    assert r.returncode == 0 and "would restore" in r.stdout and "restored " not in r.stdout, r.stdout
    r = cli("revert", hf)
    assert r.returncode == 0 and "restored the original" in r.stdout and "would restore" not in r.stdout


def test_gguf_output_onto_an_existing_file_needs_force(cli, copy_fixture, tmp_path):
    from conftest import sha256

    g = copy_fixture("tiny-llama-f32.gguf")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"keep me")
    r = cli("gguf", g, "--ctx", "1024", "-o", str(other))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "--force" in r.stderr, r.stderr
    assert other.read_bytes() == b"keep me"
    before = sha256(g)
    r = cli("gguf", g, "--ctx", "1024", "-o", str(other), "--force")
    assert r.returncode == 0, r.stderr
    assert other.read_bytes()[:4] == b"GGUF" and sha256(g) == before
    r = cli("gguf", g, "--ctx", "1024", "-o", str(tmp_path / "new.gguf"))
    assert r.returncode == 0, r.stderr


def test_from_hf_refuses_another_ctx_and_another_architecture(cli, copy_fixture, tmp_path):
    from conftest import sha256

    g = copy_fixture("tiny-llama-f32.gguf")
    before = sha256(g)
    llama, qwen = _hf_copy(tmp_path), _hf_copy(tmp_path, "tiny-qwen2")
    assert cli("hf", llama, "--ctx", "1024", "--method", "yarn").returncode == 0
    assert cli("hf", qwen, "--ctx", "1024", "--method", "yarn").returncode == 0
    r = cli("gguf", g, "--from-hf", f"{llama}/config.json", "--ctx", "2048")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--ctx 2048" in r.stderr and "1024" in r.stderr and sha256(g) == before
    r = cli("gguf", g, "--from-hf", f"{qwen}/config.json")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "'qwen2'" in r.stderr and "'llama'" in r.stderr and sha256(g) == before
    r = cli("gguf", g, "--from-hf", f"{llama}/config.json", "--ctx", "1024", "--dry-run")
    assert r.returncode == 0, r.stderr
    r = cli("gguf", g, "--from-hf", f"{llama}/config.json")
    assert r.returncode == 0, r.stderr


def test_hf_revert_output_writes_the_original_into_a_new_directory(cli, tmp_path):
    """revert -o for an HF model: the original model, byte for byte, in a new directory; the
    patched model is left as it is."""
    import hashlib

    from conftest import FIXTURES

    from ropepatch.cli import build_parser

    def shas(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir())}

    hf = _hf_copy(tmp_path)
    assert cli("hf", hf, "--ctx", "8192").returncode == 0
    patched = shas(hf)
    r = cli("revert", hf, "-o", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    assert shas(tmp_path / "restored") == shas(FIXTURES / "hf" / "tiny-llama") and shas(hf) == patched
    r = cli("revert", hf, "-o", str(tmp_path / "restored"))  # an existing directory ropepatch did not stage
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    helps = dict(_options(build_parser()))
    assert "new directory for an HF model" in helps["revert -o/--output"]