"""Paths as input: what a path names is checked BEFORE anything opens it in a way that could
block, write or read without limit, and every OS error becomes one line.

- :func:`shown` escapes a path for a one-line message (newlines, control characters and
  undecodable bytes come out as escapes, never raw);
- :func:`os_error` turns an ``OSError`` on a path into a one-line :class:`RopepatchError` naming
  the file, what went wrong and what to do (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, EACCES,
  EPERM, ENODEV, ENXIO, EROFS, ENOSPC, EISDIR ...);
- :func:`regular_input` / :func:`model_dir` check that an input is a regular file / a directory
  (a FIFO, socket, device or directory where a file is expected is refused without opening it);
- :func:`read_bounded` reads a whole regular file of at most ``limit`` bytes (size cap stated in
  the error), opened non-blocking so a FIFO swapped in after the check cannot hang the read;
- :func:`output_target` checks an ``-o`` path: its directory exists and is a directory, and an
  existing entry there is a regular file (or a link to one), never a FIFO, device or directory.
"""

from __future__ import annotations

import errno
import os
import stat

from ropepatch.errors import RopepatchError, UsageError, WriteError

_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENODEV: "no such device (a special file that cannot be read?)",
    errno.ENXIO: "no such device or address (a FIFO or socket with no peer?)",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a directory",
    errno.EIO: "input/output error",
    errno.EBUSY: "device or resource busy",
    errno.ETXTBSY: "text file busy",
    errno.EMFILE: "too many open files",
}
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def shown(path) -> str:
    """``path`` for a one-line message: printable text as is; newlines, other control characters,
    undecodable bytes and lone surrogates as backslash escapes."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def os_error(path, exc: OSError, doing: str = "", remedy: str = "") -> RopepatchError:
    """A one-line error for ``exc`` raised while ``doing`` something with ``path``; write errors
    (EROFS, ENOSPC, EDQUOT, EACCES on a write) are :class:`WriteError`, the rest
    :class:`UsageError`."""
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).replace("\n", " ")
    head = f"{shown(path)}: " + (f"cannot {doing}: " if doing else "") + reason
    cls = WriteError if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT) else UsageError
    return cls(head + (f"; {remedy}" if remedy else ""))


def regular_input(path, what: str = "file") -> os.stat_result:
    """``os.stat`` of an input that must be a regular file (links followed); one line otherwise."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(path, exc, f"read the {what}") from None
    except ValueError:  # embedded NUL
        raise UsageError(f"{shown(path)}: not a valid path (it contains a NUL byte)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown(path)}: expected a regular {what}, found {kind_of(st.st_mode)}")
    return st


def read_bounded(path, limit: int, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes; one line otherwise."""
    regular_input(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise os_error(path, exc, f"read the {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped after the check
            raise UsageError(f"{shown(path)}: expected a regular {what}, found {kind_of(st.st_mode)}")
        if st.st_size > limit:
            raise UsageError(f"{shown(path)}: {st.st_size} bytes is too large for a {what} "
                             f"(at most {limit} bytes are read)")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while we read
                raise UsageError(f"{shown(path)}: more than {limit} bytes; too large for a {what}")
        return b"".join(chunks)
    except OSError as exc:
        raise os_error(path, exc, f"read the {what}") from None
    finally:
        os.close(fd)


def model_dir(path) -> os.stat_result:
    """``os.stat`` of an input that must be a directory; one line otherwise."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(path, exc, "read the model directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{shown(path)}: expected a model directory, found {kind_of(st.st_mode)}")
    return st


def output_target(path, option: str = "-o") -> None:
    """Refuse an output path (``option`` names it in the message) whose directory is missing or
    not a directory, or that names an existing FIFO, socket, device or directory (a link is
    judged by what it points to)."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    try:
        pst = os.stat(parent)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UsageError(f"{shown(path)}: the output directory {shown(parent)} does not exist; "
                             f"create it first") from None
        raise os_error(parent, exc, "use the output directory") from None
    if not stat.S_ISDIR(pst.st_mode):
        raise UsageError(f"{shown(path)}: {shown(parent)} is not a directory")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(path, exc, "use the output path") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown(path)}: the output exists and is {kind_of(st.st_mode)}; "
                         f"ropepatch only writes regular files: choose another {option} path")
