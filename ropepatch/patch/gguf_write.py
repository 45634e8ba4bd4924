"""Putting a new GGUF header on disk: the output check, the lock + recheck + one commit rule,
and the checks of a ``--no-record`` edit (same-size values, one page, no provenance)."""

from __future__ import annotations

import os

from ropepatch.errors import UsageError, WriteError
from ropepatch.formats.gguf.header import KV, GGUFHeader, serialize_header
from ropepatch.patch.gguf_layout import Change
from ropepatch.safeio.commit import PAGE, Commit, changed_run, commit_header, page_local_run
from ropepatch.safeio.files import locked


def check_out(path: str, out: str | None) -> str:
    """The file a patch or revert of ``path`` writes: ``out``, or ``path`` itself when None.
    Refuses an ``out`` that is ``path`` (under another name) or a directory."""
    if out is None:
        return path
    if os.path.abspath(out) == os.path.abspath(path) or (
        os.path.exists(out) and os.path.samefile(out, path)
    ):
        raise UsageError(
            f"{path}: -o/--output names the input file itself; drop -o to patch in place, or name "
            f"a different output file"
        )
    if os.path.isdir(out):
        raise UsageError(f"{out}: -o/--output is a directory; name the output file")
    return out


def _read_prefix(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _recheck(path: str, h: GGUFHeader) -> None:
    """Under the lock: make sure nobody changed the header since we read it."""
    if os.path.getsize(path) != h.file_size or _read_prefix(path, h.data_offset) != h.raw:
        raise WriteError(f"{path}: the file changed while ropepatch was preparing the patch; run again")


def commit(h: GGUFHeader, header: bytes, target: str, progress=None) -> Commit:
    """Under the file's lock, and only if nobody changed the header since ``h`` was read: write
    ``header`` over ``h``'s (into ``target``) by the one commit rule (:mod:`safeio.commit`):
    one pwrite inside one page, else an atomic rewrite."""
    with locked(h.path):
        _recheck(h.path, h)
        return commit_header(h.path, h.raw, header, h.data_offset, h.data_length, h.file_size,
                             dst=target, progress=progress)


def no_record_header(h: GGUFHeader, new_kvs: list[KV], changes: tuple[Change, ...], target: str) -> bytes:
    """The header of a ``--no-record`` edit of ``h`` to ``new_kvs``. Refuses (UsageError) an
    edit that adds or resizes a value, or, written in place, one whose changed bytes span more
    than one page (an interrupted write could leave a mix of old and new values)."""
    old = {kv.key: kv for kv in h.kvs}
    new = {kv.key: kv for kv in new_kvs}
    for c in changes:
        kv_old = old.get(c.key)
        kv_new = new.get(c.key) if c.new is not None else None
        if kv_old is None or kv_new is None or len(kv_old.raw) != len(kv_new.raw):
            raise UsageError(
                f"{h.path}: --no-record can only change existing values of the same size, but "
                f"{c.key!r} would be {'added' if kv_old is None else 'resized'}; drop --no-record "
                f"(the file is then rewritten once, with provenance)"
            )
    body = serialize_header(h.version, new_kvs, h.tensor_info_raw, len(h.tensors)) + h.padding
    assert len(body) == h.data_offset
    if changes and target == h.path and page_local_run(h.raw, body) is None:
        first, end = changed_run(h.raw, body)
        last = end - 1
        pages = last // PAGE - first // PAGE + 1
        raise UsageError(
            f"{h.path}: --no-record: the changed values span {pages} pages of the header "
            f"(bytes {first}-{last}), so an interrupted write could leave a mix of old and new "
            f"values; drop --no-record so ropepatch can rewrite the file (free disk space "
            f"first if it is full); nothing written"
        )
    return body
