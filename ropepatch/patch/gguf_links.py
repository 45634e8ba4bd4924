"""GGUF files behind links: a symlinked or hard-linked file is never written through.

A GGUF that is a symlink (a Hugging Face cache snapshot points into a shared ``blobs/`` file)
or has other hard links is never edited in place: a patch (first or re-patch) and a revert
replace the link with a new regular file, which leaves the shared file untouched. A patch
reports it and records a symlink's target text in the undo record (``link``), so ``revert``
puts the symlink back when its target still holds the original bytes (else it restores the
bytes as a regular file and says so). A hard link cannot be re-created by name: revert restores
a regular file with the original bytes. ``--no-record`` edits in place by definition, so it is
refused on a linked file. The same rules as the HF side (:mod:`ropepatch.patch.hf`).
"""

from __future__ import annotations

import os
import stat

from ropepatch.errors import UsageError
from ropepatch.safeio.paths import shown


def nlink(path: str) -> int:
    """The hard-link count of ``path`` itself (a symlink's own: 1); 1 when it cannot be read."""
    try:
        return os.lstat(path).st_nlink
    except (OSError, ValueError):
        return 1


def symlink_of(path: str) -> str | None:
    """The symlink target text of ``path``; None when it is not a symlink."""
    try:
        return os.readlink(path) if os.path.islink(path) else None
    except (OSError, ValueError):
        return None


def linked(path: str) -> bool:
    """True when ``path`` is a symlink or has other hard links (never written through)."""
    return symlink_of(path) is not None or nlink(path) > 1


def patch_note(path: str) -> str | None:
    """What a patch written to ``path`` itself does with its link; None when not linked."""
    target = symlink_of(path)
    if target is not None:
        return (f"{shown(path)}: was a link to {shown(target)} (a shared file, e.g. the Hugging "
                f"Face cache); replaced the link with a patched regular file, the link target is "
                f"untouched; revert puts the link back while its target holds the original bytes")
    if linked(path):
        return (f"{shown(path)}: had {nlink(path)} hard links; wrote a new file so the other links "
                f"keep the original; revert restores the original bytes as a regular file (it "
                f"cannot re-create the hard link)")
    return None


def refuse_no_record(path: str) -> None:
    """``--no-record`` writes in place: refused on a symlink or a hard-linked file."""
    if not linked(path):
        return
    target = symlink_of(path)
    what = (f"is a symlink to {shown(target)}" if target is not None
            else f"has {nlink(path)} hard links")
    raise UsageError(
        f"{shown(path)}: {what} (a shared file); --no-record edits the file in place and would "
        f"change that shared file; drop --no-record (ropepatch then replaces the link with a "
        f"patched regular file and records it, so revert restores it), or write a copy with "
        f"-o OUT; nothing written"
    )


def holds_original(path: str, target: str, header: bytes, size: int) -> bool:
    """Whether the symlink target ``target`` (relative to ``path``'s directory) is a regular
    file of ``size`` bytes that starts with ``header`` (the original header, sha256-checked)."""
    p = os.path.join(os.path.dirname(os.path.abspath(path)), target)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            got = b""
            while len(got) < len(header):
                chunk = os.pread(fd, len(header) - len(got), len(got))
                if not chunk:
                    break
                got += chunk
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False
    return got == header


def revert_notes(path: str, recorded: str | None, relink: bool) -> list[str]:
    """What a revert of ``path`` in place says about links."""
    if relink:
        return [f"{shown(path)}: restored the symlink to {shown(recorded or '')} (its target "
                f"holds the original bytes)"]
    notes = []
    if recorded is not None:
        notes.append(f"{shown(path)}: its former link target {shown(recorded)} no longer holds "
                     f"the original; restored the bytes as a regular file")
    current = symlink_of(path)
    if current is not None and current != recorded:
        notes.append(f"{shown(path)}: is a link to {shown(current)}; wrote the original as a "
                     f"regular file, the link target is untouched")
    elif current is None and linked(path):
        notes.append(f"{shown(path)}: had {nlink(path)} hard links; wrote the original as a new "
                     f"regular file, the other links are untouched")
    return notes
