"""Putting a new GGUF header on disk: the input and output checks, the lock + recheck + one
commit rule (never through a link; stale temp files in the target's directory removed), and
the checks of a ``--no-record`` edit (same-size values, one page, no provenance)."""

from __future__ import annotations

import os
import stat

from ropepatch.errors import UsageError, WriteError
from ropepatch.formats.gguf.header import KV, GGUFHeader, serialize_header
from ropepatch.patch.gguf_layout import Change
from ropepatch.patch.gguf_links import linked
from ropepatch.safeio.commit import PAGE, Commit, changed_run, commit_header, commit_model, page_local_run
from ropepatch.safeio.files import SPACE_REMEDY, check_can_replace, locked, remove_stale_temps, replace_with_symlink
from ropepatch.safeio.paths import kind_of, os_error, output_target, shown


def gguf_input(path: str) -> None:
    """Refuse, before anything opens it, an input that is not a regular file (a FIFO, socket,
    device or directory) or cannot be reached; one line."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_error(path, e) from None
    except ValueError:  # an embedded NUL
        raise UsageError(f"{shown(path)}: not a valid path (it contains a NUL byte)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown(path)}: expected a regular .gguf file, found {kind_of(st.st_mode)}")


def check_out(path: str, out: str | None) -> str:
    """The file a patch or revert of ``path`` writes: ``out``, or ``path`` itself when None.
    Checks the input first; refuses an ``out`` that is ``path`` (under another name or through
    a link), a FIFO, socket, device or directory, or in a directory that does not exist."""
    gguf_input(path)
    if out is None:
        return path
    output_target(out)
    try:
        same = os.path.abspath(out) == os.path.abspath(path) or (
            os.path.exists(out) and os.path.samefile(out, path))
    except OSError as e:
        raise os_error(out, e, "use the output path") from None
    if same:
        raise UsageError(
            f"{shown(path)}: -o/--output names the input file itself; drop -o to patch in place, "
            f"or name a different output file"
        )
    return out


def _read_prefix(path: str, n: int) -> tuple[int, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return -1, b""
        return st.st_size, os.pread(fd, n, 0)
    finally:
        os.close(fd)


def _recheck(path: str, h: GGUFHeader) -> None:
    """Under the lock: make sure nobody changed the header since we read it."""
    try:
        size, prefix = _read_prefix(path, h.data_offset)
    except OSError as e:
        raise os_error(path, e, "read the file again") from None
    if size != h.file_size or prefix != h.raw:
        raise WriteError(f"{shown(path)}: the file changed while ropepatch was preparing the patch; "
                         f"run again")


def commit(h: GGUFHeader, header: bytes, target: str, progress=None,
           space_remedy: str = SPACE_REMEDY) -> Commit:
    """Under the file's lock, and only if nobody changed the header since ``h`` was read: write
    ``header`` over ``h``'s (into ``target``) by the one commit rule (:mod:`safeio.commit`):
    one pwrite inside one page, else an atomic rewrite. A symlinked or hard-linked file is
    always rewritten (the link replaced by a regular file), never written through. Stale
    ropepatch temp files in the target's directory are removed first."""
    if target != h.path:
        check_can_replace(target, "choose another -o directory")
    with locked(h.path):
        _recheck(h.path, h)
        remove_stale_temps(os.path.dirname(os.path.abspath(target)))
        in_place_ok = not linked(h.path)
        return commit_header(h.path, h.raw, header, h.data_offset, h.data_length, h.file_size,
                             dst=target, allow_in_place=in_place_ok, progress=progress,
                             space_remedy=space_remedy)


def commit_with_data(h: GGUFHeader, header: bytes, tensors, target: str, progress=None,
                     space_remedy: str = SPACE_REMEDY) -> Commit:
    """:func:`commit` of a change that also touches tensor data (``tensors``: a
    :class:`gguf_tensors.TensorLayout`), by :func:`safeio.commit.commit_model`: the header
    (with the undo record) first, then the data in one pwrite; else one atomic rewrite."""
    if target != h.path:
        check_can_replace(target, "choose another -o directory")
    with locked(h.path):
        _recheck(h.path, h)
        remove_stale_temps(os.path.dirname(os.path.abspath(target)))
        return commit_model(h.path, h.raw, header, h.data_offset, h.data_length, h.file_size,
                            keep=tensors.keep, trailing=tensors.trailing, span=tensors.span, dst=target,
                            allow_in_place=not linked(h.path), progress=progress, space_remedy=space_remedy)


def relink(h: GGUFHeader, target: str) -> None:
    """Under the file's lock, and only if nobody changed it since ``h`` was read: make
    ``h.path`` the symlink to ``target`` again (revert of a file that was a symlink)."""
    with locked(h.path):
        _recheck(h.path, h)
        remove_stale_temps(os.path.dirname(os.path.abspath(h.path)))
        replace_with_symlink(h.path, target)


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
                f"{shown(h.path)}: --no-record can only change existing values of the same size, but "
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
            f"{shown(h.path)}: --no-record: the changed values span {pages} pages of the header "
            f"(bytes {first}-{last}), so an interrupted write could leave a mix of old and new "
            f"values; drop --no-record so ropepatch can rewrite the file (free disk space "
            f"first if it is full); nothing written"
        )
    return body
