"""THE one rule for committing a new model-file header, for every format.

If the new header has the old one's length and every byte that differs lies inside one 4 KiB
page of the file, it is written in place by a single ``pwrite`` of the run from the first
changed byte to the last, then ``fsync``. Linux checks for a fatal signal only between the
page-sized chunks of a write, so a kill -9 leaves that run all old or all new: the file holds
the old header or the new one, never a mix. Anything else (another length, a run across pages,
another destination, or a caller that forbids in-place writes, e.g. for a symlinked or
hard-linked file) is an atomic rewrite: temp file in the target's directory + new header +
kernel copy of the tensor bytes + fsync + rename (:func:`ropepatch.safeio.files.rewrite`).

A change of tensor DATA as well (a GGUF's ``rope_freqs.weight``: a few hundred bytes) goes by
the same rule, :func:`commit_model`: when the tensors keep their places and the changed data
bytes also lie inside one page, the header run is written first (it carries the undo record, so
whatever happens next can be reverted), then the data run by ONE ``pwrite``, each followed by
``fsync``; anything else (a tensor added or removed, a run across pages) is one atomic rewrite
carrying both. A kill between the two in-place writes leaves the new header with the old data
bytes: revertable, and finished by running the same command again.

Callers hold :func:`ropepatch.safeio.files.locked` on the file and have checked it did not
change since they read it; this module does neither.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ropepatch.safeio.files import SPACE_REMEDY, rewrite, write_spans_in_place

PAGE = 4096  # the unit of an untearable write


def changed_run(old: bytes, new: bytes, block: int = PAGE) -> tuple[int, int] | None:
    """``(first, end)``: the first index where two equal-length buffers differ and one past the
    last; None when they are equal. Compared block by block, so a 100 MB header costs
    milliseconds."""
    assert len(old) == len(new)
    n = len(old)
    first = None
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        if old[b0:b1] != new[b0:b1]:
            first = b0
            while old[first] == new[first]:
                first += 1
            break
    if first is None:
        return None
    end = n
    while True:
        b0 = max(first, end - block)
        if old[b0:end] != new[b0:end]:
            while old[end - 1] == new[end - 1]:
                end -= 1
            return first, end
        end = b0


def page_local_run(old: bytes, new: bytes, base: int = 0) -> tuple[int, bytes] | None:
    """The one in-place write that turns ``old`` into ``new`` (the file's bytes from offset
    ``base``): ``(offset in the file, bytes)`` from the first changed byte to the last, when the
    lengths are equal and that run lies inside one 4 KiB page of the file (``(0, b"")`` when
    nothing changes); else None."""
    if len(old) != len(new):
        return None
    run = changed_run(old, new)
    if run is None:
        return 0, b""
    first, end = run
    if (base + first) // PAGE != (base + end - 1) // PAGE:
        return None
    return base + first, new[first:end]


class Commit(NamedTuple):
    """What :func:`commit_header` did."""

    mode: str  # "in-place" | "rewrite"
    bytes_written: int  # in place: the run's length (0: nothing changed); rewrite: the new file's
    data_bytes: int = 0  # in place: the length of the one data pwrite (commit_model); 0: none


def commit_header(
    path: str,
    old: bytes,
    new: bytes,
    data_offset: int,
    data_length: int,
    file_size: int,
    *,
    dst: str | None = None,
    allow_in_place: bool = True,
    progress=None,
    space_remedy: str = SPACE_REMEDY,
) -> Commit:
    """Put the header ``new`` in front of ``path``'s tensor bytes, by the module's one rule.

    ``old``: the header bytes now at ``path[0:data_offset]``; ``new``: the complete new bytes
    to put before the data (for safetensors: the 8-byte length prefix included). The data are
    ``path[data_offset : data_offset + data_length]``; ``file_size`` is ``path``'s size as read
    (an in-place write refuses a file whose size changed).

    In place when ``dst`` is None or names ``path``, ``allow_in_place`` and
    :func:`page_local_run` finds one run: one pwrite (none when nothing changed) + fsync,
    through :func:`files.write_spans_in_place`. Otherwise :func:`files.rewrite` of ``path`` into
    ``dst`` (default ``path``; a symlink or hard link there is replaced by a new regular file),
    with ``progress(done, total)`` after each copied chunk (``space_remedy``: what the caller's
    command can do when the disk lacks room). Returns :class:`Commit`; raises WriteError (one
    line) on failure, the original file intact.
    """
    same = dst is None or os.path.abspath(dst) == os.path.abspath(path)
    run = page_local_run(old, new) if same and allow_in_place else None
    if run is not None:
        off, data = run
        if data:
            write_spans_in_place(path, [(off, data)], file_size)
        return Commit("in-place", len(data))
    rewrite(path, dst or path, new, data_offset, data_length, progress=progress,
            space_remedy=space_remedy)
    return Commit("rewrite", len(new) + data_length)


def _data_run(data_offset: int, span) -> tuple[int, bytes] | None:
    """The one in-place write of a data span ``(offset in the data, old, new)``: ``(absolute
    offset, bytes)`` of its changed run when that lies inside one page (``(0, b"")`` when
    nothing changes); else None."""
    if span is None:
        return 0, b""
    rel, old, new = span
    return page_local_run(old, new, data_offset + rel)


def commit_model(
    path: str,
    old: bytes,
    new: bytes,
    data_offset: int,
    data_length: int,
    file_size: int,
    *,
    keep: int,
    trailing: bytes = b"",
    span: tuple[int, bytes, bytes] | None = None,
    dst: str | None = None,
    allow_in_place: bool = True,
    progress=None,
    space_remedy: str = SPACE_REMEDY,
) -> Commit:
    """:func:`commit_header` for a change that may also touch tensor data: put ``new`` in
    front of the first ``keep`` bytes of ``path``'s data (``data_length`` of them at
    ``data_offset`` now), then ``trailing``; ``span`` = (offset in the data, current bytes, new
    bytes) replaces bytes in place. The module's rule: in place (header run, then one data
    pwrite) when the data keep their size and both runs are page-local, else one atomic
    rewrite. Returns :class:`Commit` (``data_bytes``: the data pwrite's length)."""
    same = dst is None or os.path.abspath(dst) == os.path.abspath(path)
    head = page_local_run(old, new) if same and allow_in_place and keep == data_length and not trailing else None
    data = _data_run(data_offset, span) if head is not None else None
    if head is not None and data is not None:
        for off, run in (head, data):  # the header (with the undo record) first
            if run:
                write_spans_in_place(path, [(off, run)], file_size)
        return Commit("in-place", len(head[1]) + len(data[1]), len(data[1]))
    spans = [] if span is None else [(len(new) + span[0], span[2])]
    rewrite(path, dst or path, new, data_offset, keep, trailing=trailing, spans=spans, progress=progress,
            space_remedy=space_remedy)
    return Commit("rewrite", len(new) + keep + len(trailing))
