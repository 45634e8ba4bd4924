"""Crash safety (issue 6): a short, deterministic slice of tools/crash_harness.py (kill -9 at every
write step, disk full, read-only file / directory / mount, two ropepatch runs at once) and
regression tests for what the harness found. The long run and its numbers: docs/reliability.md."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys

import pytest
from conftest import FIXTURES, GGUF_FIXTURES, ROOT, sha256

sys.path.insert(0, str(ROOT / "tools"))
import crash_harness as ch  # noqa: E402
import fuzz_headers  # noqa: E402

from ropepatch.patch import gguf as gp  # noqa: E402
from ropepatch.safeio import commit as safecommit  # noqa: E402
from ropepatch.safeio import files as fileio  # noqa: E402

FIXTURE = "tiny-llama-q8_0.gguf"
IN_PLACE = [sc for sc in ch.QUICK_SCENARIOS if "in place" in sc.name]


def test_crash_hook_is_off_unless_asked():
    assert fileio._CRASH_AFTER == int(os.environ.get("ROPEPATCH_CRASH_AFTER", "0") or "0") == 0


@pytest.mark.parametrize("scenario", ch.QUICK_SCENARIOS, ids=lambda sc: sc.name.split(" (")[0])
def test_kill_at_every_write_step(tmp_path, scenario):
    """SIGKILL right after each file-changing syscall: the file is the old bytes or the complete
    result (validated, reverted, loaded in llama-cpp-python), and re-running the command works
    and removes the temp file a killed rewrite leaves."""
    c, rows = ch.kill_matrix([FIXTURE], [scenario], str(tmp_path), jobs=2, log=None)
    assert c.problems == []
    assert c.corrupt == 0 and c.other_valid == 0 and c.retry_failed == 0
    assert c.kills == rows[0]["steps"] == c.original + c.patched
    assert c.retry_ok == c.original
    if scenario in IN_PLACE:  # one pwrite, then fsync: the pwrite is the commit point
        assert (c.kills, c.patched) == (2, 2)
    else:  # temp created, header, copy, truncate, chmod, fsync, rename, dir fsync
        assert c.kills >= 7 and c.patched == 2 and c.temps_left == c.original


@pytest.mark.parametrize("fixture", GGUF_FIXTURES)
def test_every_repatch_is_one_write_inside_one_page(copy_fixture, monkeypatch, fixture):
    """Regression: re-patches used to pwrite two runs (entry count at offset 16 + arch keys,
    then the tail, 6 KB apart); a kill between them left a file llama.cpp cannot load (or, same
    key count, a new context with the old YaRN factor)."""
    path = copy_fixture(fixture)
    writes = []
    real = safecommit.write_spans_in_place
    monkeypatch.setattr(safecommit, "write_spans_in_place",
                        lambda p, spans, size: (writes.append(spans), real(p, spans, size)))
    gp.patch_gguf(path, 1024, "yarn")
    for method, ctx in (("ntk", 2048), ("yarn", 4096), ("yarn", 8192), ("linear", 300), ("dynamic", 512),
                        ("none", 256), ("ntk", 4096)):
        assert gp.patch_gguf(path, ctx, method).mode == "in-place"
        (spans,) = writes[-1:]
        assert len(spans) == 1
        (off, data), = spans
        assert off // 4096 == (off + len(data) - 1) // 4096, (method, off, len(data))
        assert len(data) < 1024
    assert len(writes) == 7
    gp.revert_gguf(path)
    assert sha256(path) == sha256(FIXTURES / fixture)


def test_file_patched_in_the_old_layout_is_migrated_by_one_rewrite(tmp_path):
    """A file patched before touched keys moved to the tail: its next patch is an atomic rewrite
    (its in-place diff would be several runs), later ones are in place; revert stays exact."""
    src = (FIXTURES / FIXTURE).read_bytes()
    path = str(tmp_path / "legacy.gguf")
    with open(path, "wb") as f:
        f.write(fuzz_headers.legacy_patched(src, 1024, "yarn"))
    ino = os.stat(path).st_ino
    assert gp.inspect_gguf(path).provenance.record.at is None
    assert gp.patch_gguf(path, 2048, "ntk").mode == "rewrite"
    assert os.stat(path).st_ino != ino
    assert gp.inspect_gguf(path).provenance.record.at is not None
    assert gp.patch_gguf(path, 4096, "yarn").mode == "in-place"
    gp.revert_gguf(path)
    assert sha256(path) == sha256(FIXTURES / FIXTURE)


def test_orphaned_temp_files_are_removed_by_the_next_rewrite(copy_fixture, tmp_path):
    path = copy_fixture(FIXTURE)
    dead = tmp_path / ".ropepatch-dead1234.tmp"  # left by a killed run: nobody holds its lock
    dead.write_bytes(b"x" * 1000)
    live = tmp_path / ".ropepatch-live1234.tmp"  # a running rewrite holds an flock on its temp
    live.write_bytes(b"y")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = tmp_path / "ropepatch-notours.tmp"
    other.write_bytes(b"z")
    try:
        assert gp.patch_gguf(path, 1024, "ntk").mode == "rewrite"
        assert not dead.exists() and live.exists() and other.exists()
    finally:
        os.close(fd)
    assert fileio.remove_stale_temps(str(tmp_path)) == 1 and not live.exists()


def _assert_checks(checks):
    ran = [c for c in checks if c.ok is not None]
    if not ran:
        pytest.skip("; ".join(c.detail for c in checks))
    assert [c.name + ": " + c.detail for c in ran if not c.ok] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_disk_full(tmp_path):
    """Too little room: refused up front; disk filled mid-rewrite: 'disk full', original intact,
    no temp file; in-place re-patch on a 100% full disk works; revert there is refused."""
    _assert_checks(ch.disk_full_checks(FIXTURE, str(tmp_path), quick=True))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="chattr +i needs root")
def test_read_only_file_directory_and_mount(tmp_path):
    _assert_checks(ch.readonly_checks(FIXTURE, str(tmp_path)))


def test_two_ropepatch_runs_on_one_file(tmp_path):
    """While one run is frozen inside its write (holding the lock), a second patch or revert is
    refused with one clear line, readers see a complete file, and the first run completes."""
    _assert_checks(ch.concurrency_checks(FIXTURE, str(tmp_path), stress=3))


def test_links_are_never_written_through_at_any_kill(tmp_path):
    """kill -9 at every write step of a re-patch through a symlink to a patched (shared) blob and
    of the revert that puts a symlink back: the blob never changes, the link path is the link or
    a whole file, and running the command again finishes it, leaving no .ropepatch-* entry."""
    _assert_checks(ch.link_checks(FIXTURE, str(tmp_path), quick=True))
