"""``gguf --no-record`` writes in place with no fallback, so it is only all-or-nothing when every
changed byte lies in one 4 KiB page (docs/reliability.md). A header whose changed values span
more than one page is refused, with nothing written."""

from __future__ import annotations

import os
import re

import pytest
from conftest import build_gguf, sha256

from ropepatch.errors import UsageError
from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.patch import gguf as gp


def kvs(between: int):
    """context_length, then a ``between``-character string, then rope.freq_base: ntk changes the
    first and the last, so ``between`` sets how far apart the changed bytes are."""
    return [
        ("general.architecture", T.STRING, "llama"),
        ("general.name", T.STRING, "synthetic"),
        ("llama.context_length", T.UINT32, 128),
        ("general.description", T.STRING, "x" * between),
        ("llama.embedding_length", T.UINT32, 64),
        ("llama.attention.head_count", T.UINT32, 4),
        ("llama.rope.freq_base", T.FLOAT32, 10000.0),
        ("llama.rope.dimension_count", T.UINT32, 16),
    ]


def changed_range(path: str) -> tuple[int, int]:
    """First and last byte a --no-record ntk patch to 1024 changes (found by writing a copy)."""
    copy = path + ".copy"
    gp.patch_gguf(path, 1024, "ntk", record=False, out=copy)
    with open(path, "rb") as f, open(copy, "rb") as g:
        old, new = f.read(), g.read()
    os.unlink(copy)
    assert len(old) == len(new)
    diff = [i for i, (x, y) in enumerate(zip(old, new)) if x != y]
    return diff[0], diff[-1]


def _error(path: str, pages: int, first: int, last: int) -> str:
    return (
        f"{path}: --no-record: the changed values span {pages} pages of the header "
        f"(bytes {first}-{last}), so an interrupted write could leave a mix of old and new values; "
        f"drop --no-record so ropepatch can rewrite the file (free disk space first if it is full); "
        f"nothing written"
    )


def test_changed_values_on_two_pages_are_refused(tmp_path, cli):
    path = build_gguf(tmp_path / "two-pages.gguf", kvs(5000))
    first, last = changed_range(path)
    assert first // 4096 == 0 and last // 4096 == 1
    before = sha256(path)
    for dry_run in (False, True):  # a dry run tells the truth about the real run
        with pytest.raises(UsageError) as e:
            gp.patch_gguf(path, 1024, "ntk", record=False, dry_run=dry_run)
        assert str(e.value) == _error(path, 2, first, last)
    assert sha256(path) == before
    r = cli("gguf", path, "--ctx", "1024", "--method", "ntk", "--no-record")
    assert r.returncode == 2
    assert r.stderr == f"ropepatch: error: {_error(path, 2, first, last)}\n"
    assert sha256(path) == before
    # what the message says to do: without --no-record the file is rewritten (atomically)
    assert gp.patch_gguf(path, 1024, "ntk").mode == "rewrite"
    assert gp.inspect_gguf(path).current.n_ctx_train == 1024


def test_changed_values_across_a_page_boundary_are_refused(tmp_path):
    """Less than 4 KiB apart, but on both sides of offset 4096: two pages, refused too."""
    for n in range(3900, 4100, 8):
        path = build_gguf(tmp_path / f"edge-{n}.gguf", kvs(n))
        first, last = changed_range(path)
        if last - first < 4096 and first // 4096 != last // 4096:
            break
    else:  # pragma: no cover - the layout above always has such an n
        pytest.fail("no description length puts the changed bytes across offset 4096")
    before = sha256(path)
    with pytest.raises(UsageError, match=re.escape(_error(path, 2, first, last))):
        gp.patch_gguf(path, 1024, "ntk", record=False)
    assert sha256(path) == before


def test_changed_values_in_one_page_are_written_in_place(tmp_path, cli):
    path = build_gguf(tmp_path / "one-page.gguf", kvs(100))
    first, last = changed_range(path)
    assert first // 4096 == last // 4096
    res = gp.patch_gguf(path, 1024, "ntk", record=False)
    assert res.mode == "in-place"
    info = gp.inspect_gguf(path)
    assert info.current.n_ctx_train == 1024 and info.provenance is None
    r = cli("gguf", str(tmp_path / "one-page.gguf"), "--ctx", "2048", "--method", "ntk", "--no-record")
    assert r.returncode == 0, r.stderr
    assert gp.inspect_gguf(path).current.n_ctx_train == 2048


def test_no_record_to_a_copy_is_a_rewrite_and_not_limited(tmp_path):
    """-o writes a new file through the atomic rewrite: the one-page limit does not apply."""
    path = build_gguf(tmp_path / "two-pages.gguf", kvs(5000))
    before = sha256(path)
    out = str(tmp_path / "out.gguf")
    assert gp.patch_gguf(path, 1024, "ntk", record=False, out=out).mode == "rewrite"
    assert gp.inspect_gguf(out).current.n_ctx_train == 1024
    assert sha256(path) == before
