"""What an HF patch or revert checks BEFORE it writes anything, so that it either finishes or
writes nothing: every file it replaces can be replaced, the filesystem has room for the WHOLE
operation, and every header it is about to write parses back. Every refusal is one line whose
remedy is one the command has (``hf`` has ``-o OUTDIR``; ``revert`` of an HF model has none).

    Remedy.PATCH / Remedy.REVERT / Remedy.OUT          # the remedies each command can offer
    check_writable(path, remedy, in_place=False, replace=False)
    check_room(directory, sizes, what, remedy)         # sizes: every file rewritten, all at once
    check_new_header(hdr, header)                      # parses back with the shard's tensors
    clear_leftovers(directory)                         # stale temps and link temps of a killed run
"""

from __future__ import annotations

import os
from typing import Iterable, NamedTuple

from ropepatch.errors import FormatError, WriteError
from ropepatch.formats.safetensors import SafetensorsHeader, parse_header
from ropepatch.safeio import files as fileio
from ropepatch.safeio.paths import shown


class Remedies(NamedTuple):
    """What to tell the user when a file cannot be replaced or the disk is too full."""

    read_only_dir: str
    read_only_file: str
    read_only_fs: str
    no_space: str


class Remedy:
    PATCH = Remedies("write a patched copy elsewhere with -o OUTDIR",
                     "make it writable (chmod u+w) or write a patched copy elsewhere with -o OUTDIR",
                     "write a patched copy elsewhere with -o OUTDIR",
                     "free some space, or write a patched copy elsewhere with -o OUTDIR")
    REVERT = Remedies("make the directory writable and run revert again",
                      "make it writable (chmod u+w) and run revert again",
                      "remount it read-write and run revert again",
                      "free some space and run revert again")
    OUT = Remedies("choose another -o directory", "choose another -o directory",
                   "choose another -o directory",
                   "free some space, or choose an -o directory on another filesystem")


def _read_only_fs(d: str) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_writable(path: str, remedy: Remedies, in_place: bool = False, replace: bool = False) -> None:
    """Refuse when ``path`` could not be written: an in-place write needs the file writable, a
    rewrite (temp file + rename) also its directory; ``replace`` (a symlink put back over it)
    needs the directory only, as does a symlink replaced by a regular file."""
    d = os.path.dirname(os.path.abspath(path))
    if _read_only_fs(d):
        raise WriteError(f"{shown(path)}: on a read-only file system; {remedy.read_only_fs}; "
                         f"nothing written")
    if not in_place and not os.access(d, os.W_OK):
        raise WriteError(f"{shown(path)}: directory {shown(d)} is read-only; {remedy.read_only_dir}; "
                         f"nothing written")
    if not replace and os.path.isfile(path) and not os.path.islink(path) and not os.access(path, os.W_OK):
        raise WriteError(f"{shown(path)}: file is read-only; {remedy.read_only_file}; nothing written")


def check_room(directory: str, sizes: Iterable[int], what: str, remedy: Remedies) -> None:
    """Refuse before writing when ``directory``'s filesystem cannot hold every file of ``sizes``
    at once (each rounded up to whole 4 KiB blocks): the old copies of replaced files stay
    allocated until the run ends (the run holds them open), so nothing is freed along the way."""
    need = sum(-(-s // 4096) * 4096 for s in sizes)
    fileio.check_space(directory, need, what, f"{remedy.no_space}; nothing written")


def check_new_header(hdr: SafetensorsHeader, header: bytes) -> None:
    """Refuse a header ropepatch is about to write that does not parse back as a safetensors
    header holding ``hdr``'s tensors (a damaged record or metadata must never reach the disk)."""
    where = shown(hdr.path)
    try:
        back = parse_header(hdr.path, header, 8 + len(header) + hdr.data_length, where)
    except FormatError as e:
        raise FormatError(f"{where}: the header ropepatch would write does not parse "
                          f"({str(e).split(': ', 1)[-1]}); nothing written") from None
    if back.tensors != hdr.tensors:
        raise FormatError(f"{where}: the header ropepatch would write does not keep the shard's "
                          f"tensors; nothing written")


def clear_leftovers(directory: str) -> None:
    """Remove what a killed ropepatch left in ``directory`` (orphaned temp files and temporary
    symlinks, :func:`ropepatch.safeio.files.remove_stale_temps`) before anything is sized."""
    fileio.remove_stale_temps(directory)
