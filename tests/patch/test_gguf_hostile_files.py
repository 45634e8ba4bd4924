"""GGUF under hostile conditions (issue 12): special files as inputs and -o targets, OS errors,
leftovers and file metadata. Every refusal is one line, exit status 2, and nothing is written."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from _helpers_gguf_hostile import FIXTURE, PRISTINE
from conftest import ROOT, one_line, sha256

from ropepatch.patch import gguf as gp
from ropepatch.safeio import files as fileio

# ---- only regular files ------------------------------------------------------------------


def real_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m ropepatch ARGS`` in a new process, killed after 20 s (a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "ropepatch", *args], capture_output=True, text=True,
                          timeout=20, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def test_fifo_input_is_refused_without_hanging(tmp_path):
    """A real process: opening a FIFO for reading blocks until a writer comes, forever."""
    fifo = str(tmp_path / "m.gguf")
    os.mkfifo(fifo)
    for args in (["inspect", fifo], ["gguf", fifo, "--ctx", "512"], ["revert", fifo]):
        try:
            r = real_cli(*args)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ropepatch {' '.join(args)} hung on a FIFO")
        one_line(r, "expected a regular .gguf file, found a FIFO")


@pytest.fixture
def specials(tmp_path):
    """A socket, a directory and a character device (a /dev/null twin made here when root,
    else /dev/null itself, only ever read or refused)."""
    d = tmp_path / "special"
    d.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    (d / "dir").mkdir()
    os.mkfifo(d / "fifo")
    dev = "/dev/null"
    if os.geteuid() == 0:
        os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        dev = str(d / "null")
    yield {"socket": str(d / "sock"), "directory": str(d / "dir"), "character device": dev,
           "FIFO": str(d / "fifo")}
    sock.close()


@pytest.mark.parametrize("kind", ["socket", "directory", "character device"])
@pytest.mark.parametrize("command", [["inspect"], ["gguf", "--ctx", "512"], ["revert"], ["plan", "--ctx", "512"]])
def test_special_input_is_one_line(specials, cli, kind, command):
    path = specials[kind]
    one_line(cli(command[0], path, *command[1:]), f"expected a regular .gguf file, found a {kind}"
             if kind != "directory" else "found a directory")


@pytest.mark.parametrize("kind", ["socket", "directory", "character device", "FIFO"])
@pytest.mark.parametrize("command", ["gguf", "revert"])
def test_special_output_is_refused_before_opening(specials, copy_fixture, cli, kind, command):
    p = copy_fixture(FIXTURE)
    if command == "revert":
        gp.patch_gguf(p, 512)
    target = specials[kind]
    before = os.lstat(target)
    snap = sha256(p)
    args = ["gguf", p, "--ctx", "1024"] if command == "gguf" else ["revert", p]
    one_line(cli(*args, "-o", target), "the output exists and is")
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert sha256(p) == snap


def test_output_directory_missing_or_not_a_directory(copy_fixture, tmp_path, cli):
    p = copy_fixture(FIXTURE)
    one_line(cli("gguf", p, "--ctx", "512", "-o", str(tmp_path / "nodir" / "x.gguf")), "does not exist")
    one_line(cli("gguf", p, "--ctx", "512", "-o", p + "/x.gguf"), "is not a directory")
    gp.patch_gguf(p, 512)
    one_line(cli("revert", p, "-o", str(tmp_path / "nodir" / "x.gguf")), "does not exist")
    assert sorted(os.listdir(tmp_path)) == [FIXTURE]


def test_missing_input_with_an_existing_output(copy_fixture, tmp_path, cli):
    out = copy_fixture(FIXTURE, "out.gguf")
    for args in (["gguf", str(tmp_path / "gone.gguf"), "--ctx", "512"], ["revert", str(tmp_path / "gone.gguf")]):
        one_line(cli(*args, "-o", out), "gone.gguf: no such file or directory")
    assert sha256(out) == PRISTINE


# ---- every OS error is one line ----------------------------------------------------------


def test_os_errors_are_one_line_with_escaped_names(copy_fixture, tmp_path, cli):
    p = copy_fixture(FIXTURE)
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    cases = {
        str(tmp_path / "loop1"): "too many levels of symbolic links",
        p + "/x.gguf": "a component of the path is not a directory",
        str(tmp_path / ("a" * 300 + ".gguf")): "file name too long",
        str(tmp_path / "no\nsuch.gguf"): "no\\nsuch.gguf: no such file or directory",
    }
    for path, text in cases.items():
        for args in (["inspect", path], ["gguf", path, "--ctx", "512"], ["revert", path]):
            one_line(cli(*args), text)
    outputs = {  # the same as -o targets
        str(tmp_path / "loop1"): "too many levels of symbolic links",
        p + "/x.gguf": "is not a directory",
        str(tmp_path / ("a" * 300 + ".gguf")): "file name too long",
        str(tmp_path / "new\ndir" / "x.gguf"): "new\\ndir does not exist",
    }
    for path, text in outputs.items():
        one_line(cli("gguf", p, "--ctx", "512", "-o", path), text)
    bad = tmp_path / "bad\nname.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    one_line(cli("inspect", str(bad)), "bad\\nname.gguf: truncated or corrupt GGUF header")
    assert sha256(p) == PRISTINE


def test_sysfs_file_is_one_line(cli):
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not os.path.isfile(path):
        pytest.skip("no sysfs file to read here")
    one_line(cli("inspect", path), path)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user (root only)")
def test_permission_denied_is_one_line(copy_fixture, tmp_path):
    p = copy_fixture(FIXTURE)
    os.chmod(tmp_path, 0o755)
    os.chmod(p, 0o600)
    try:
        r = real_cli("inspect", p, user=65534, group=65534, extra_groups=[])
    except PermissionError:
        pytest.skip("the interpreter is not reachable by another user here")
    if "ModuleNotFoundError" in r.stderr or "Permission denied" in r.stderr and "ropepatch:" not in r.stderr:
        pytest.skip("ropepatch is not importable by another user here")
    one_line(r, "permission denied")


# ---- leftovers and metadata --------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("run", ["first patch", "in-place re-patch", "revert", "no-record", "no-op"])
def test_every_run_removes_stale_temps(copy_fixture, tmp_path, run):
    p = copy_fixture(FIXTURE)
    if run in ("in-place re-patch", "revert", "no-op"):
        gp.patch_gguf(p, 512)
    (tmp_path / ".ropepatch-deadbeef.tmp").write_bytes(b"x" * 100)  # a killed rewrite's temp
    os.symlink("../blobs/X", tmp_path / f".ropepatch-{_dead_pid()}-0a1b2c3d.link")  # a killed relink's
    fn = {"first patch": lambda: gp.patch_gguf(p, 512), "in-place re-patch": lambda: gp.patch_gguf(p, 2048),
          "revert": lambda: gp.revert_gguf(p), "no-record": lambda: gp.patch_gguf(p, 512, record=False),
          "no-op": lambda: gp.patch_gguf(p, 512)}[run]
    dry = gp.revert_gguf(p, dry_run=True) if run == "revert" else gp.patch_gguf(p, 512, dry_run=True)
    assert dry.mode in ("dry-run", "no-op") and len(os.listdir(tmp_path)) == 3  # a dry run changes nothing
    fn()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".ropepatch")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_patches_keep_owner_group_and_mode(copy_fixture):
    p = copy_fixture(FIXTURE)
    os.chown(p, 1234, 5678)
    os.chmod(p, 0o640)

    def meta():
        st = os.stat(p)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    for step in (lambda: gp.patch_gguf(p, 512), lambda: gp.patch_gguf(p, 2048), lambda: gp.revert_gguf(p)):
        step()
        assert meta() == (1234, 5678, 0o640)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_outputs_honour_the_umask(copy_fixture, tmp_path, umask):
    p = copy_fixture(FIXTURE)
    old = os.umask(umask)
    try:
        gp.patch_gguf(p, 512, out=str(tmp_path / "o.gguf"))
        fileio.rewrite(p, str(tmp_path / "r.bin"), b"", 0, 100)  # every format's -o writer
    finally:
        os.umask(old)
    for n in ("o.gguf", "r.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / n).st_mode) == 0o666 & ~umask
