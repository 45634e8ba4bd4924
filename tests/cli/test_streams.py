"""stdout and stderr as things that fail (issue 12): a reader that closes the pipe early
(``ropepatch plan m.gguf --ctx 4096 | head -1``) ends the command quietly with exit status
141 (128 + SIGPIPE, what a shell reports for ``cat`` or ``yes`` in the same place): no
traceback, no ``Exception ignored ... BrokenPipeError`` at interpreter exit, and the work done
before printing (a patch) is complete. Any other write error on stdout is one line, exit 2.

These need real processes and real pipes: a pipe whose read end is closed BEFORE the command
starts, so every write gets EPIPE (deterministic, unlike ``| head``). They run in parallel."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT, sha256

from ropepatch.cli import EXIT_PIPE_CLOSED

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def start(args, stdout, stderr=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "ropepatch", *args], stdout=stdout, stderr=stderr,
                            cwd=ROOT, env=ENV)


def closed_pipe() -> int:
    """The write end of a pipe nobody reads (the read end is already closed)."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_closed_stdout_exits_quietly_with_141(tmp_path):
    model = tmp_path / "m.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", model)
    patched = tmp_path / "p.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", patched)
    m, p = str(model), str(patched)
    cases = [
        ["plan", m, "--ctx", "4096"],  # text
        ["plan", m, "--ctx", "4096", "--json"],  # JSON
        ["inspect", m],
        ["inspect", str(FIXTURES / "hf" / "tiny-llama"), "--json"],
        ["plan", "--base", "10000", "--rope-dim", "64", "--orig-ctx", "4096", "--ctx", "8192"],
        ["gguf", p, "--ctx", "2048"],  # a write: done before the report is lost (16x: no far-ctx warning)
    ]
    procs = []
    for c in cases:
        w = closed_pipe()
        procs.append(start(c, stdout=w))
        os.close(w)
    for c, proc in zip(cases, procs):
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err.decode()) == (EXIT_PIPE_CLOSED, ""), c
    from ropepatch.patch.gguf import inspect_gguf

    assert inspect_gguf(p).current.n_ctx_train == 2048 and sha256(m) == sha256(FIXTURES / "tiny-llama-f32.gguf")


def test_help_into_a_closed_pipe_keeps_argparse_status():
    """``-h`` and usage errors are argparse's: it swallows a failed write of its own text, so
    ``-h`` exits 0, quietly."""
    w = closed_pipe()
    proc = start(["-h"], stdout=w)
    os.close(w)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")


def test_closed_stdout_and_stderr_on_an_error_keep_its_status(tmp_path):
    """Both streams closed and the command fails: nothing printed anywhere, and the status is
    still the error's (2), never a traceback."""
    w1, w2 = closed_pipe(), closed_pipe()
    proc = start(["inspect", str(tmp_path / "missing.gguf")], stdout=w1, stderr=w2)
    os.close(w1)
    os.close(w2)
    assert proc.wait(timeout=60) == 2


def test_head_dash_1_real_shell(tmp_path):
    """The issue's command, in a real shell pipeline: stderr empty, status 0 or 141 (0 when the
    whole output fit in the pipe before head exited)."""
    model = tmp_path / "m.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", model)
    cmd = f'"{sys.executable}" -m ropepatch plan "{model}" --ctx 4096 --method all | head -1; exit ${{PIPESTATUS[0]}}'
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode in (0, EXIT_PIPE_CLOSED) and r.stderr == "", r.stderr
    assert r.stdout.startswith("original: ")


@pytest.mark.skipif(os.geteuid() != 0, reason="a full device of our own (mknod) needs root")
def test_stdout_on_a_full_device_is_one_line(tmp_path):
    """stdout that cannot be written (ENOSPC: our own node of the /dev/full device, made under
    tmp) is one error line and exit 2, not 'Exception ignored' and 120."""
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    model = tmp_path / "m.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", model)
    with open(full, "w") as out:
        r = subprocess.run([sys.executable, "-m", "ropepatch", "inspect", str(model), "--json"], stdout=out,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "ropepatch: error: standard output: cannot write the output: no space left on device"]


def test_every_error_and_warning_is_one_line(cli, monkeypatch, capsys):
    """The CLI's last guarantee: whatever a message holds (a file name with a newline, a tab,
    undecodable bytes as surrogates), the error or warning it prints is ONE escaped line."""
    from ropepatch.cli import commands
    from ropepatch.cli.render import warn
    from ropepatch.errors import FormatError

    def fails(args):
        raise FormatError("/tmp/a\nb\r.gguf: bad\tthing \udcff")

    monkeypatch.setitem(commands.COMMANDS, "inspect", (fails, *commands.COMMANDS["inspect"][1:]))
    r = cli("inspect", "x")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["ropepatch: error: /tmp/a\\nb\\r.gguf: bad\\tthing \\udcff"]
    warn(["replaced the symlink x -> ../blobs/a\nb"])
    assert capsys.readouterr().err.splitlines() == ["ropepatch: warning: replaced the symlink x -> ../blobs/a\\nb"]
