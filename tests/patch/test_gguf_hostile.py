"""GGUF under hostile conditions (issue 12): forged or damaged undo records, models behind
symlinks and hard links, special files as inputs and -o targets, OS errors, leftovers and file
metadata. Every refusal is one line, exit status 2, and nothing is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT, one_line, sha256

from ropepatch.errors import FormatError, RopepatchError, UsageError
from ropepatch.formats.gguf.header import KV, read_header, serialize_header
from ropepatch.patch import gguf as gp
from ropepatch.safeio import files as fileio

FIXTURE = "tiny-llama-f32.gguf"
PRISTINE = sha256(FIXTURES / FIXTURE)
CTX = "llama.context_length"


def tree(d) -> dict:
    """Name -> (kind, sha256 or link text) of every entry under ``d`` (nothing written?)."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            out[os.path.relpath(p, d)] = (stat.S_IFMT(st.st_mode), os.readlink(p) if stat.S_ISLNK(st.st_mode)
                                          else sha256(p) if stat.S_ISREG(st.st_mode) else st.st_ino)
    return out


# ---- 1. records are input -------------------------------------------------------------------


def forge(path: str, change) -> None:
    """Edit the undo record of the patched ``path`` with ``change(dict)`` and recompute its
    header_sha256 the way a careful attacker would (the original header with the forged raw
    values, as ropepatch rebuilds it), keeping the record entry's length."""
    h, h0 = read_header(path), read_header(str(FIXTURES / FIXTURE))
    text = h.get("ropepatch.original")
    d = json.loads(text)
    change(d)
    kvs = []
    for kv in h0.kvs:
        e = d["keys"].get(kv.key)
        if e is not None:
            kb = kv.key.encode()
            kv = KV(kv.key, kv.type, None, struct.pack("<Q", len(kb)) + kb + struct.pack("<I", e["type"])
                    + bytes.fromhex(e["raw"]))
        kvs.append(kv)
    body = serialize_header(h0.version, kvs, h0.tensor_info_raw, len(h0.tensors))
    d["header_sha256"] = hashlib.sha256(body + bytes(max(0, d["data_offset"] - len(body)))).hexdigest()
    new = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert len(new) <= len(text)
    data = bytearray(open(path, "rb").read())
    i = data.index(text.encode())
    data[i : i + len(text)] = new.ljust(len(text)).encode()
    open(path, "wb").write(data)


def _string(s: bytes) -> str:
    return (struct.pack("<Q", len(s)) + s).hex()


def _set(key: str, type_: int | None = None, raw: str | None = None, append: str = ""):
    """A record change: the recorded original of ``key`` gets ``type_``/``raw`` (+ ``append``)."""

    def change(d):
        e = d["keys"].get(key) or {"type": type_, "raw": raw}
        d["keys"][key] = {"type": e["type"] if type_ is None else type_,
                          "raw": (e["raw"] if raw is None else raw) + append}
    return change


F32 = lambda x: struct.pack("<f", x).hex()  # noqa: E731
FORGED = {
    # the case: 4 junk bytes after a valid value (the rebuilt header would misparse)
    "junk-after-value": (_set(CTX, append="deadbeef"), "is damaged"),
    "value-cut-short": (_set(CTX, raw="8000"), "is damaged"),
    "array-with-junk": (_set(CTX, 9, struct.pack("<IQI", 4, 1, 128).hex() + "00"), "is damaged"),
    # well-formed values ropepatch itself rejects for the key
    "ctx-as-string": (_set(CTX, 8, _string(b"abc")), "expected an integer"),
    "ctx-zero": (_set(CTX, raw="00000000"), "expected a positive training context"),
    "ctx-as-float": (_set(CTX, 6, F32(128.0)), "expected an integer"),
    "ctx-as-bool": (_set(CTX, 7, "01"), "expected an integer"),
    "base-nan": (_set("llama.rope.freq_base", 6, F32(float("nan"))), "expected a finite base > 1"),
    # fields bounded by the file
    "foreign-key": (_set("general.alignment", 4, "40000000"), "which no patch"),
    "padding-past-alignment": (lambda d: d.update(padding="11" * 64), "not less than the alignment"),
    "position-out-of-range": (lambda d: d["at"].update({CTX: 10**9}), "key positions are damaged"),
    "link-not-a-string": (lambda d: d.update(link=7), "symlink target is not a path"),
    "link-with-nul": (lambda d: d.update(link="a\0b"), "symlink target is not a path"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_record_is_refused_before_anything_is_written(copy_fixture, cli, case):
    change, text = FORGED[case]
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    forge(p, change)
    snap = tree(os.path.dirname(p))
    one_line(cli("revert", p), text)
    one_line(cli("revert", p, "--dry-run"), text)
    one_line(cli("gguf", p, "--ctx", "1024"), text)
    one_line(cli("revert", p, "-o", p + ".out"), text)
    assert tree(os.path.dirname(p)) == snap


def test_record_with_junk_names_the_remedy(copy_fixture):
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    forge(p, FORGED["junk-after-value"][0])
    with pytest.raises(FormatError, match="re-download or re-convert the original model"):
        gp.inspect_gguf(p)


def test_file_changed_by_another_tool_after_patching_is_refused(copy_fixture, cli):
    p = copy_fixture(FIXTURE)
    gp.patch_gguf(p, 512)
    h = read_header(p)
    kv = h.entry("general.name")
    data = bytearray(open(p, "rb").read())
    i = data.index(kv.raw) + len(kv.raw) - 1
    data[i] ^= 0x01  # another tool edits a value ropepatch never touches (same size)
    open(p, "wb").write(data)
    snap = sha256(p)
    one_line(cli("revert", p), "changed outside ropepatch")
    assert sha256(p) == snap


# ---- 2. never write through a link ----------------------------------------------------------


@pytest.fixture
def hub(tmp_path):
    """An HF-cache-like layout: blobs/X (the fixture) and snap/m.gguf -> ../blobs/X."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "snap").mkdir()
    blob = tmp_path / "blobs" / "X"
    shutil.copyfile(FIXTURES / FIXTURE, blob)
    link = tmp_path / "snap" / "m.gguf"
    os.symlink("../blobs/X", link)
    return str(link), str(blob)


def test_symlink_first_patch_replaces_the_link_and_revert_puts_it_back(hub, cli):
    link, blob = hub
    r = cli("gguf", link, "--ctx", "512")
    assert r.returncode == 0 and "was a link to ../blobs/X" in r.stderr
    assert not os.path.islink(link) and sha256(blob) == PRISTINE
    assert gp.inspect_gguf(link).provenance.record.link == "../blobs/X"
    assert gp.patch_gguf(link, 1024, "yarn").mode == "in-place"  # now a regular file of its own
    assert sha256(blob) == PRISTINE
    r = cli("revert", link)
    assert r.returncode == 0 and "restored the symlink to ../blobs/X" in r.stderr
    assert os.readlink(link) == "../blobs/X" and sha256(link) == PRISTINE
    assert [n for n in os.listdir(os.path.dirname(link)) if n.startswith(".ropepatch")] == []


def test_symlink_to_a_patched_blob_is_never_repatched_through(hub, cli):
    link, blob = hub
    gp.patch_gguf(blob, 512)  # the shared file is patched already (e.g. downloaded that way)
    shared = sha256(blob)
    res = gp.patch_gguf(link, 2048)  # used to be one in-place pwrite into the blob
    assert res.mode == "rewrite" and any("was a link" in w for w in res.warnings)
    assert sha256(blob) == shared and not os.path.islink(link)
    r = cli("revert", link)  # the link target holds a patched file, not the original
    assert r.returncode == 0 and "no longer holds the original" in r.stderr
    assert not os.path.islink(link) and sha256(link) == PRISTINE and sha256(blob) == shared


@pytest.mark.parametrize("patched", [False, True])
def test_no_record_on_a_symlink_is_refused(hub, cli, patched):
    link, blob = hub
    if patched:
        os.unlink(link)
        shutil.copyfile(blob, blob + ".p")
        gp.patch_gguf(blob + ".p", 512)
        os.symlink("../blobs/X.p", link)
        blob += ".p"
    before = tree(os.path.dirname(os.path.dirname(link)))
    one_line(cli("gguf", link, "--ctx", "4096", "--no-record"), "drop --no-record")
    assert tree(os.path.dirname(os.path.dirname(link))) == before
    r = cli("gguf", link, "--ctx", "256", "--no-record", "-o", link + ".copy")  # a copy is fine
    assert (r.returncode == 0) != patched, r.stderr


def test_hard_linked_file_is_never_written_through(tmp_path, cli):
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    shutil.copyfile(FIXTURES / FIXTURE, a)
    os.link(a, b)
    one_line(cli("gguf", b, "--ctx", "512", "--no-record"), "has 2 hard links", "drop --no-record")
    r = cli("gguf", b, "--ctx", "512")
    assert r.returncode == 0 and "had 2 hard links" in r.stderr
    assert sha256(a) == PRISTINE and os.stat(b).st_nlink == 1
    os.unlink(a)
    shutil.copyfile(b, a)
    os.unlink(b)
    os.link(a, b)  # a patched file, hard-linked: a re-patch used to pwrite into both names
    patched = sha256(a)
    assert gp.patch_gguf(b, 2048).mode == "rewrite"
    assert sha256(a) == patched and os.stat(a).st_nlink == 1
    os.link(b, a + ".2")
    r = cli("revert", b)
    assert r.returncode == 0 and "hard links" in r.stderr and sha256(b) == PRISTINE
    assert sha256(a + ".2") != PRISTINE


def test_dry_run_and_copies_of_a_linked_file(hub, tmp_path, cli):
    link, blob = hub
    assert gp.patch_gguf(link, 512, dry_run=True).mode == "dry-run"
    assert os.path.islink(link)
    gp.patch_gguf(link, 512)
    out = str(tmp_path / "copy.gguf")
    gp.patch_gguf(link, 1024, out=out)  # a copy records no link to put back
    assert gp.inspect_gguf(out).provenance.record.link is None
    gp.revert_gguf(out)
    assert not os.path.islink(out) and sha256(out) == PRISTINE
    assert cli("revert", link, "-o", str(tmp_path / "r.gguf")).returncode == 0
    assert not os.path.islink(tmp_path / "r.gguf") and sha256(tmp_path / "r.gguf") == PRISTINE
    assert not os.path.islink(link) and sha256(blob) == PRISTINE


# ---- 3. only regular files ------------------------------------------------------------------


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


# ---- 4. every OS error is one line ----------------------------------------------------------


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


# ---- 5. leftovers and metadata --------------------------------------------------------------


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


def test_library_errors_stay_in_the_family(hub, tmp_path):
    link, _ = hub
    for fn in (lambda: gp.patch_gguf(link, 512, record=False), lambda: gp.revert_gguf(str(tmp_path)),
               lambda: gp.patch_gguf(link, 512, out=str(tmp_path))):
        with pytest.raises(RopepatchError):
            fn()
    with pytest.raises(UsageError):
        gp.inspect_gguf(str(tmp_path))
