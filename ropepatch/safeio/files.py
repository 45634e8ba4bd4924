"""Safe file writing: atomic rewrites with kernel-side data copies, and in-place header writes.

Two ways to change a model file's header:

* :func:`write_spans_in_place` - the new header has exactly the old header's size: a ``pwrite``
  of each changed run of bytes plus one ``fsync``. Time and memory do not depend on the file size.
* :func:`rewrite` - the header changes size: a temp file in the same directory gets the new
  header, then the tensor bytes are copied by the kernel (a reflink / ``copy_file_range`` /
  ``sendfile``, never through Python memory), ``fsync``, and an atomic ``rename`` over the
  target. A failure at any point leaves the original file untouched and removes the temp file;
  a temp file orphaned by a kill -9 is removed by the next rewrite into that directory
  (:func:`remove_stale_temps`).

Which of the two a header change gets is decided in one place, :mod:`ropepatch.safeio.commit`.
Callers hold :func:`locked` on the target so two ropepatch processes never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
from typing import Iterator

from ropepatch.errors import WriteError

_CHUNK = 1 << 28  # bytes per copy_file_range call

# Test-only crash hook (tools/crash_harness.py, tests/patch/test_crash_safety.py). With
# ROPEPATCH_CRASH_AFTER=N in the environment, the process sends itself SIGKILL right after its
# Nth file-changing step below (temp file created, pwrite, copy chunk, truncate, chmod, fsync,
# rename), so a harness can stop a real run at every syscall boundary of a rewrite or an in-place
# write; ROPEPATCH_CRASH_SIGNAL=STOP freezes it there instead (SIGCONT resumes it), for tests
# that change the world mid-write (fill the disk, make the file immutable, start a second run).
# Unset (always, outside tests), each step costs one integer compare.
_CRASH_AFTER = int(os.environ.get("ROPEPATCH_CRASH_AFTER", "0") or "0")
_steps = 0


def crash_point() -> None:
    global _steps
    _steps += 1
    if _steps == _CRASH_AFTER:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("ROPEPATCH_CRASH_SIGNAL", "KILL")))


def _describe(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def locked(path: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``; refuse at once if another holder exists."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise WriteError(f"{path}: cannot open for locking: {_describe(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise WriteError(
                f"{path}: another ropepatch process is writing this file; wait for it to finish "
                f"and run again"
            ) from None
        yield
    finally:
        os.close(fd)


def check_can_replace(path: str) -> None:
    """Refuse early when ``path`` could not be replaced (read-only file or directory)."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.access(d, os.W_OK):
        raise WriteError(
            f"{path}: directory {d} is read-only; write a patched copy elsewhere with -o OUT"
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise WriteError(
            f"{path}: file is read-only; make it writable (chmod u+w) or write a copy with -o OUT"
        )


def check_space(directory: str, needed: int, what: str) -> None:
    """Refuse before writing when ``directory``'s filesystem lacks ``needed`` bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise WriteError(
            f"{what}: needs {needed / 2**20:.1f} MiB free in {directory} for the rewrite, found "
            f"{free / 2**20:.1f} MiB; free some space, write elsewhere with -o OUT, or use "
            f"--no-record to patch in place"
        )


def write_spans_in_place(path: str, spans, expect_size: int) -> None:
    """Overwrite ``spans`` = [(offset, bytes)] of ``path`` (a pwrite each, then one fsync)."""
    if not os.access(path, os.W_OK):
        raise WriteError(
            f"{path}: file is read-only; make it writable (chmod u+w) or write a copy with -o OUT"
        )
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise WriteError(f"{path}: cannot open for writing: {_describe(e)}") from None
    try:
        if os.fstat(fd).st_size != expect_size:
            raise WriteError(f"{path}: file changed size while being patched; nothing written")
        for offset, data in spans:
            n = os.pwrite(fd, data, offset)
            if n != len(data):  # pragma: no cover - regular files do not short-write
                raise WriteError(f"{path}: short write ({n} of {len(data)} bytes)")
            crash_point()
        os.fsync(fd)
        crash_point()
    except OSError as e:
        raise WriteError(f"{path}: in-place write failed: {_describe(e)}") from None
    finally:
        os.close(fd)


def _kernel_copy(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int, progress=None) -> None:
    """Copy ``length`` bytes between files inside the kernel (reflink when the fs allows)."""
    copy_range = getattr(os, "copy_file_range", None)
    done = 0
    while done < length:
        n = min(_CHUNK, length - done)
        if copy_range is not None:
            try:
                got = copy_range(src_fd, dst_fd, n, src_off + done, dst_off + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                copy_range = None
                continue
        else:
            os.lseek(dst_fd, dst_off + done, os.SEEK_SET)
            got = os.sendfile(dst_fd, src_fd, src_off + done, n)
        if got == 0:
            raise OSError(errno.EIO, "source file ended early")
        done += got
        crash_point()
        if progress is not None:
            progress(done, length)


def _fill_temp(fd: int, src_fd: int, header: bytes, data_offset: int, data_length: int,
               trailing: bytes, progress) -> None:
    """Write ``header`` + the kernel-copied data (+ ``trailing``) into the temp file ``fd``."""
    written = os.pwrite(fd, header, 0)
    if written != len(header):  # pragma: no cover
        raise OSError(errno.EIO, "short header write")
    crash_point()
    _kernel_copy(src_fd, fd, data_offset, len(header), data_length, progress)
    if trailing:
        os.pwrite(fd, trailing, len(header) + data_length)
        crash_point()
    os.ftruncate(fd, len(header) + data_length + len(trailing))
    crash_point()


def rewrite(
    src: str,
    dst: str,
    header: bytes,
    data_offset: int,
    data_length: int,
    *,
    trailing: bytes = b"",
    progress=None,
) -> None:
    """Write ``header`` + ``src[data_offset : data_offset + data_length]`` (+ ``trailing``) to
    ``dst`` atomically. ``src`` may equal ``dst``. The original ``dst`` survives any failure.
    ``progress(done, total)`` is called after each copied chunk."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    check_can_replace(dst)
    remove_stale_temps(dst_dir)
    check_space(dst_dir, len(header) + data_length + len(trailing), dst)
    try:
        src_fd = os.open(src, os.O_RDONLY)
    except OSError as e:
        raise WriteError(f"{src}: cannot open: {_describe(e)}") from None
    tmp = None
    try:
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=dst_dir)
        try:
            # held until the rename: tells remove_stale_temps this temp file is alive
            fcntl.flock(fd, fcntl.LOCK_EX)
            crash_point()
            _fill_temp(fd, src_fd, header, data_offset, data_length, trailing, progress)
            # keep the original's permission bits
            if os.path.exists(dst):
                os.fchmod(fd, stat.S_IMODE(os.stat(dst).st_mode))
                crash_point()
            os.fsync(fd)
            crash_point()
            os.replace(tmp, dst)
            tmp = None
            crash_point()
        finally:
            os.close(fd)
        fsync_dir(dst_dir)
        crash_point()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WriteError(f"{dst}: disk full during rewrite; original left intact") from None
        raise WriteError(f"{dst}: rewrite failed: {_describe(e)}; original left intact") from None
    finally:
        os.close(src_fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


_TMP_PREFIX, _TMP_SUFFIX = ".ropepatch-", ".tmp"


def orphans(directory: str, prefix: str, suffix: str, *, directories: bool = False) -> Iterator[str]:
    """Yield the path of each ``prefix*suffix`` entry of ``directory`` (regular files, or
    directories with ``directories``) that no live ropepatch owns, holding its flock while the
    caller acts on it. A live run holds an flock on its temp file or staging directory until it
    is done, and the kernel drops it when the process dies: an entry whose lock can be taken has
    no owner left. Entries that vanish, are links or are of the other kind are skipped."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if directories else os.O_NONBLOCK)
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        p = os.path.join(directory, name)
        try:
            fd = os.open(p, flags)
        except OSError:
            continue
        try:
            if not directories and not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # alive (locked), or not ours
        try:
            yield p
        finally:
            os.close(fd)


def remove_stale_temps(directory: str) -> int:
    """Delete the ``.ropepatch-*.tmp`` files a killed ropepatch left in ``directory``; return how
    many (see :func:`orphans`)."""
    removed = 0
    for p in orphans(directory, _TMP_PREFIX, _TMP_SUFFIX):
        try:
            os.unlink(p)
            removed += 1
        except OSError:
            pass  # not ours to remove
    return removed


def fsync_dir(d: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
