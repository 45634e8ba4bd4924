"""Hostile paths (issue 12): every command that takes a path, given every kind of path that is
not what it expects, ends in ONE line ``ropepatch: error: ...`` and exit status 2: no
traceback, no hang, nothing written, and every existing entry left as it was (a regular file
keeps its bytes, a FIFO stays a FIFO, a socket a socket, a device node a device node).

The matrix: path classes (missing, FIFO, directory, regular file where a directory is expected,
/dev/null and /dev/zero, a socket, a device node, a symlink loop, a link to a FIFO, a dangling
link, a path through a regular file, a 300-character name, a name with a newline, an unreadable
file) x the commands' inputs (inspect, plan, gguf,
hf, revert, validate, eval/tune/passkey and their --text, gguf --from-hf) and outputs (gguf -o,
revert -o, hf -o, eval --plot). It runs in process (the ``cli`` fixture) under a SIGALRM
guard, so a blocking open is a failed test, never a hung suite; a few FIFO cases also run
through the real entry point, in parallel, with a timeout."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT

IS_ROOT = os.geteuid() == 0
# a sysfs attribute: a "regular file" whose size lies and that cannot be mapped (ENODEV); read only
SYSFS = next((p for p in ("/sys/devices/system/cpu/online", "/sys/kernel/mm/transparent_hugepage/enabled",
                          "/sys/power/state") if os.path.isfile(p)), None)
HANG_AFTER_S = 10


class Hang(Exception):
    pass


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """One directory holding good inputs and every hostile entry (created once: the matrix is
    large and every case is checked to leave the whole directory as it found it)."""
    root = tmp_path_factory.mktemp("hostile")
    a = {"root": str(root)}
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", root / "good.gguf")
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", root / "patched.gguf")
    shutil.copytree(FIXTURES / "hf" / "tiny-llama", root / "hf")
    from ropepatch.patch.gguf import patch_gguf

    patch_gguf(str(root / "patched.gguf"), 4096, "yarn")
    (root / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    # neutral names (e1, e2, ...), so a message is judged by what it says, not by the name it echoes
    (root / "e1").write_text("not a model\n")
    os.mkfifo(root / "e2")
    os.mkfifo(root / "e\n3")
    os.mkdir(root / "e4")
    os.mkdir(root / "e5")
    (root / "e5" / "x").write_text("x")
    os.symlink(root / "e6", root / "e6")
    os.symlink(root / "e2", root / "e9")  # a link to the FIFO: judged by what it points to
    os.symlink(root / "e0", root / "e10")  # a dangling link
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "e7"))
    if IS_ROOT:  # a device node of our own (same device as /dev/null): never a system file
        os.mknod(root / "e8", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", root / "locked.gguf")
    os.chmod(root / "locked.gguf", 0)
    shutil.copytree(FIXTURES / "hf" / "tiny-llama", root / "lockedhf")
    os.chmod(root / "lockedhf", 0)
    for k, name in (("good", "good.gguf"), ("patched", "patched.gguf"), ("hf", "hf"), ("text", "t.txt")):
        a[k] = str(root / name)
    yield a
    sock.close()
    os.chmod(root / "lockedhf", 0o755)


def _input(a, cls: str, want_dir: bool = False) -> str:
    r = a["root"]
    paths = {
        "missing": f"{r}/e0",
        "fifo": f"{r}/e2",
        "directory": f"{r}/e4",
        "regular-file": f"{r}/e1",
        "/dev/null": "/dev/null",
        "/dev/zero": "/dev/zero",
        "sysfs": SYSFS,
        "socket": f"{r}/e7",
        "symlink-loop": f"{r}/e6",
        "symlink-to-fifo": f"{r}/e9",
        "dangling-symlink": f"{r}/e10",
        "through-a-file": f"{r}/e1/x",
        "name-too-long": f"{r}/" + "a" * 300,
        "newline": f"{r}/new\nline",
        "unreadable": f"{r}/lockedhf" if want_dir else f"{r}/locked.gguf",
    }
    return paths[cls]


def _output(a, cls: str) -> str:
    r = a["root"]
    paths = {
        "fifo": f"{r}/e2",
        "socket": f"{r}/e7",
        "device": f"{r}/e8",
        "directory": f"{r}/e5",
        "regular-file": f"{r}/e1",
        "missing-dir": f"{r}/e0/out",
        "through-a-file": f"{r}/e1/out",
        "symlink-loop": f"{r}/e6",
        "symlink-to-fifo": f"{r}/e9",
        "name-too-long": f"{r}/" + "b" * 300,
        "newline": f"{r}/e\n3",  # a FIFO whose name holds a newline
    }
    return paths[cls]


# what the one line must say (loosely: the layers word it their way), per class
SAYS = {
    "missing": r"no such file|does not exist|not found",
    "fifo": r"FIFO|named pipe",
    "directory": r"directory|config\.json|not empty",
    "regular-file": r"Hugging Face model directory|not a directory|not empty",
    "/dev/null": r"character device",
    "/dev/zero": r"character device",
    "device": r"device",
    "socket": r"socket|no such device",
    "symlink-loop": r"symbolic links|loop",
    "symlink-to-fifo": r"FIFO|named pipe",
    "dangling-symlink": r"no such file|does not exist|not found",
    "through-a-file": r"not a directory",
    "name-too-long": r"too long",
    "newline": r"/new\\nline|/e\\n3",
    "missing-dir": r"does not exist",
    "unreadable": r"permission|denied|read",
}

FILE_CLASSES = ["missing", "fifo", "directory", "/dev/null", "/dev/zero", "sysfs", "socket", "symlink-loop",
                "symlink-to-fifo", "dangling-symlink", "through-a-file", "name-too-long", "newline", "unreadable"]
DIR_CLASSES = ["missing", "fifo", "regular-file", "/dev/null", "/dev/zero", "sysfs", "socket", "symlink-loop",
               "symlink-to-fifo", "dangling-symlink", "through-a-file", "name-too-long", "newline", "unreadable"]
OUT_CLASSES = ["fifo", "socket", "device", "directory", "missing-dir", "through-a-file", "symlink-loop",
               "symlink-to-fifo", "name-too-long", "newline"]

# command -> argv with X where the hostile path goes (G: a good GGUF, P: a patched one, H: a
# good HF model directory, T: a good text file)
INPUTS = {
    "inspect": ["inspect", "X"],
    "inspect --json": ["inspect", "X", "--json"],
    "plan": ["plan", "X", "--ctx", "4096"],
    "gguf": ["gguf", "X", "--ctx", "4096"],
    "gguf --dry-run": ["gguf", "X", "--ctx", "4096", "--dry-run"],
    "revert": ["revert", "X"],
    "validate": ["validate", "X"],
    "eval": ["eval", "X", "--ctx", "256", "--text", "T"],
    "tune": ["tune", "X", "--ctx", "256", "--text", "T"],
    "passkey": ["passkey", "X", "--ctx", "512"],
    "eval --text": ["eval", "G", "--ctx", "256", "--text", "X"],
    "tune --text": ["tune", "G", "--ctx", "256", "--text", "X"],
    "gguf --from-hf": ["gguf", "G", "--from-hf", "X"],
}
DIR_INPUTS = {"hf": ["hf", "X", "--ctx", "4096"], "hf --dry-run": ["hf", "X", "--ctx", "4096", "--dry-run"]}
OUTPUTS = {
    "gguf -o": ["gguf", "G", "--ctx", "4096", "-o", "X"],
    "revert -o": ["revert", "P", "-o", "X"],
    "hf -o": ["hf", "H", "--ctx", "4096", "-o", "X"],
    "eval --plot": ["eval", "G", "--ctx", "256", "--text", "T", "--plot", "X"],
}

# a sysfs file is a regular file: validate/eval/tune/passkey hand it to the runtime worker, where
# validate reports check a as failed (exit 1) -- covered by the worker's own tests, slow here
WORKER = {"validate", "eval", "tune", "passkey"}
CASES = (
    [pytest.param("in", c, k, id=f"{c}|{k}") for c in INPUTS for k in FILE_CLASSES
     if not (k == "sysfs" and c in WORKER)]
    + [pytest.param("dir", c, k, id=f"{c}|{k}") for c in DIR_INPUTS for k in DIR_CLASSES]
    # hf -o makes a NEW directory (and its parents: a missing parent is no error there)
    + [pytest.param("out", c, k, id=f"{c}|{k}") for c in OUTPUTS for k in OUT_CLASSES
       if not (c == "hf -o" and k == "missing-dir")]
    + [pytest.param("out", "hf -o", "regular-file", id="hf -o|regular-file")]
)


def snapshot(root: str) -> dict:
    """Every entry under ``root``: its kind, and a regular file's sha256 and mode."""
    snap = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o444:
                with open(p, "rb") as f:
                    entry += (hashlib.sha256(f.read()).hexdigest(),)
            snap[os.path.relpath(p, root)] = entry
    return snap


def guarded(cli, args):
    """``cli(*args)`` with a SIGALRM after HANG_AFTER_S: a blocking open fails the test."""

    def on_alarm(signum, frame):
        raise Hang(f"no result after {HANG_AFTER_S} s: {args}")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_AFTER_S)
    try:
        return cli(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def argv(a, template, hostile: str) -> list[str]:
    sub = {"X": hostile, "G": a["good"], "P": a["patched"], "H": a["hf"], "T": a["text"]}
    return [sub.get(t, t) for t in template]


def assert_one_line(r, says: str | None = None, json_out: bool = False):
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropepatch: error: "), r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    if json_out and r.stdout:  # --json may also give the error as one JSON object on stdout
        import json

        assert set(json.loads(r.stdout)) == {"error"}, r.stdout
    else:
        assert r.stdout == ""
    if says:
        import re

        assert re.search(says, lines[0], re.IGNORECASE), lines[0]


@pytest.mark.parametrize("kind,command,cls", CASES)
def test_hostile_path(arena, cli, kind, command, cls):
    if cls == "unreadable" and IS_ROOT:
        pytest.skip("running as root: file permissions are not enforced, so chmod 000 is readable")
    if cls == "device" and not IS_ROOT:
        pytest.skip("creating a device node needs root")
    if cls == "sysfs" and SYSFS is None:
        pytest.skip("no sysfs attribute file here")
    template = {"in": INPUTS, "dir": DIR_INPUTS, "out": OUTPUTS}[kind][command]
    hostile = _output(arena, cls) if kind == "out" else _input(arena, cls, want_dir=kind == "dir")
    before = snapshot(arena["root"])
    r = guarded(cli, argv(arena, template, hostile))
    assert_one_line(r, SAYS.get(cls), json_out="--json" in template)
    assert snapshot(arena["root"]) == before


@pytest.mark.parametrize("command", [
    ["gguf", "M", "--ctx", "4096", "-o", "O"],
    ["revert", "M", "-o", "O"],
    ["hf", "MD", "--ctx", "4096", "-o", "OD"],
    ["inspect", "M"],
])
def test_missing_input_with_an_existing_output(arena, cli, command):
    """The input is missing and the -o target exists: one line about the input; the target
    (a patched GGUF, or an empty directory for hf -o) is left exactly as it was."""
    r = arena["root"]
    os.makedirs(f"{r}/emptydir", exist_ok=True)
    sub = {"M": f"{r}/missing.gguf", "O": arena["patched"], "MD": f"{r}/missing-model", "OD": f"{r}/emptydir"}
    before = snapshot(r)
    res = guarded(cli, [sub.get(t, t) for t in command])
    assert_one_line(res, SAYS["missing"])
    assert snapshot(r) == before


def test_fifos_through_the_real_entry_point(arena):
    """``python -m ropepatch`` given a FIFO as model, text, config and -o target: each exits with
    one line and exit 2 well within the timeout (no open blocks); run in parallel."""
    fifo = f"{arena['root']}/e2"
    cases = [
        ["inspect", fifo],
        ["gguf", arena["good"], "--from-hf", fifo],
        ["eval", arena["good"], "--ctx", "256", "--text", fifo],
        ["gguf", arena["good"], "--ctx", "4096", "-o", fifo],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "ropepatch", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for c in cases]
    try:
        for c, p in zip(cases, procs):
            out, err = p.communicate(timeout=60)
            lines = err.splitlines()
            assert p.returncode == 2 and len(lines) == 1 and "FIFO" in lines[0], (c, err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_newline_in_a_good_name_is_not_an_error(arena, cli, tmp_path):
    """A newline is a legal character in a file name: a model named so still works (only error
    lines escape it)."""
    p = tmp_path / "new\nline.gguf"
    shutil.copyfile(arena["good"], p)
    r = cli("gguf", str(p), "--ctx", "4096", "--dry-run")
    assert r.returncode == 0, r.stderr
