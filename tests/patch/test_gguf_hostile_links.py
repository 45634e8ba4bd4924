"""GGUF under hostile conditions (issue 12): models behind symlinks (an HF-cache-like layout)
and hard links are never written through; a revert puts the link back. Every refusal is one
line, exit status 2, and nothing is written; library errors stay in ropepatch's family."""

from __future__ import annotations

import os
import shutil

import pytest
from _helpers_gguf_hostile import FIXTURE, PRISTINE, tree
from conftest import FIXTURES, one_line, sha256

from ropepatch.errors import RopepatchError, UsageError
from ropepatch.patch import gguf as gp

# ---- never write through a link ----------------------------------------------------------


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


def test_library_errors_stay_in_the_family(hub, tmp_path):
    link, _ = hub
    for fn in (lambda: gp.patch_gguf(link, 512, record=False), lambda: gp.revert_gguf(str(tmp_path)),
               lambda: gp.patch_gguf(link, 512, out=str(tmp_path))):
        with pytest.raises(RopepatchError):
            fn()
    with pytest.raises(UsageError):
        gp.inspect_gguf(str(tmp_path))
