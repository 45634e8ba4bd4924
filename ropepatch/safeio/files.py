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
from ropepatch.safeio.paths import os_error, shown

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
    return (e.strerror or str(e)).replace("\n", " ")


# what to do when a rewrite lacks room, unless the caller names the remedies its command has
SPACE_REMEDY = "free some space and run again"
_READ_ONLY_FILE = "make it writable (chmod u+w) or write a copy with -o OUT"


@contextlib.contextmanager
def locked(path: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``; refuse at once if another holder exists.
    Opened non-blocking and never for writing, so a FIFO swapped in cannot hang the lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(path, e, "open the file for locking") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise WriteError(
                f"{shown(path)}: another ropepatch process is writing this file; wait for it to "
                f"finish and run again"
            ) from None
        except OSError as e:
            raise os_error(path, e, "lock the file") from None
        yield
    finally:
        os.close(fd)


def check_can_replace(path: str, remedy: str = "write a patched copy elsewhere with -o OUT") -> None:
    """Refuse early when ``path`` could not be replaced: its directory is missing or read-only,
    or it is a read-only file (a symlink is replaced, never written through, so only its
    directory counts). ``remedy``: what to do about a read-only directory."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise WriteError(f"{shown(path)}: directory {shown(d)} does not exist; create it first")
    if not os.access(d, os.W_OK):
        raise WriteError(f"{shown(path)}: directory {shown(d)} is read-only; {remedy}")
    if os.path.isfile(path) and not os.path.islink(path) and not os.access(path, os.W_OK):
        raise WriteError(f"{shown(path)}: file is read-only; {_READ_ONLY_FILE}")


def check_space(directory: str, needed: int, what: str, remedy: str = SPACE_REMEDY) -> None:
    """Refuse before writing when ``directory``'s filesystem lacks ``needed`` bytes; ``remedy``
    names what the caller's command can do about it."""
    try:
        st = os.statvfs(directory)
    except OSError as e:
        raise os_error(directory, e, "check the free space") from None
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise WriteError(
            f"{shown(what)}: needs {needed / 2**20:.1f} MiB free in {shown(directory)} for the "
            f"rewrite, found {free / 2**20:.1f} MiB; {remedy}"
        )


def write_spans_in_place(path: str, spans, expect_size: int) -> None:
    """Overwrite ``spans`` = [(offset, bytes)] of ``path`` (a pwrite each, then one fsync).
    Never through a link: a symlink is not followed (O_NOFOLLOW), a file with other hard links
    or that is not a regular file is refused (callers rewrite those)."""
    if not os.access(path, os.W_OK):
        raise WriteError(f"{shown(path)}: file is read-only; {_READ_ONLY_FILE}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(path, e, "open the file for writing") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise WriteError(f"{shown(path)}: not a regular file with one link; nothing written")
        if st.st_size != expect_size:
            raise WriteError(f"{shown(path)}: file changed size while being patched; nothing written")
        for offset, data in spans:
            n = os.pwrite(fd, data, offset)
            if n != len(data):  # pragma: no cover - regular files do not short-write
                raise WriteError(f"{shown(path)}: short write ({n} of {len(data)} bytes)")
            crash_point()
        os.fsync(fd)
        crash_point()
    except OSError as e:
        raise WriteError(f"{shown(path)}: in-place write failed: {_describe(e)}") from None
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
               trailing: bytes, progress, spans=()) -> None:
    """Write ``header`` + the kernel-copied data (+ ``trailing``) into the temp file ``fd``,
    then ``spans`` = [(offset in the new file, bytes)] over it."""
    written = os.pwrite(fd, header, 0)
    if written != len(header):  # pragma: no cover
        raise OSError(errno.EIO, "short header write")
    crash_point()
    _kernel_copy(src_fd, fd, data_offset, len(header), data_length, progress)
    if trailing:
        os.pwrite(fd, trailing, len(header) + data_length)
        crash_point()
    for offset, data in spans:
        os.pwrite(fd, data, offset)
        crash_point()
    os.ftruncate(fd, len(header) + data_length + len(trailing))
    crash_point()


def _umask() -> int:
    """The process umask, read without changing it (/proc), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _keep_metadata(fd: int, dst: str) -> None:
    """Give the temp file ``fd`` the owner, group and mode of the file it replaces (a link's
    target's), or, for a new file, the mode a new file gets here (0666 less the umask)."""
    try:
        st = os.stat(dst)
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):  # best effort on filesystems without modes (vfat)
            os.fchmod(fd, 0o666 & ~_umask())
        return
    mine = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (mine.st_uid, mine.st_gid):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:  # not root: keep the group where we may, the owner is us
            with contextlib.suppress(OSError):
                os.fchown(fd, -1, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which may clear set-id bits


def rewrite(
    src: str,
    dst: str,
    header: bytes,
    data_offset: int,
    data_length: int,
    *,
    trailing: bytes = b"",
    spans=(),
    progress=None,
    space_remedy: str = SPACE_REMEDY,
) -> None:
    """Write ``header`` + ``src[data_offset : data_offset + data_length]`` (+ ``trailing``) to
    ``dst`` atomically, ``spans`` = [(offset in the new file, bytes)] written over that.
    ``src`` may equal ``dst``. The original ``dst`` survives any failure;
    a symlink or hard link at ``dst`` is replaced by a new regular file, never written through.
    The new file keeps the replaced file's owner, group and mode; a new file gets 0666 less the
    umask. ``progress(done, total)`` is called after each copied chunk; ``space_remedy`` ends
    the too-little-space error."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    check_can_replace(dst)
    remove_stale_temps(dst_dir)
    check_space(dst_dir, len(header) + data_length + len(trailing), dst, space_remedy)
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(src, e, "open the file") from None
    tmp = None
    try:
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=dst_dir)
        try:
            # held until the rename: tells remove_stale_temps this temp file is alive
            fcntl.flock(fd, fcntl.LOCK_EX)
            crash_point()
            _fill_temp(fd, src_fd, header, data_offset, data_length, trailing, progress, spans)
            _keep_metadata(fd, dst)
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
            raise WriteError(f"{shown(dst)}: disk full during rewrite; original left intact") from None
        raise WriteError(f"{shown(dst)}: rewrite failed: {_describe(e)}; original left intact") from None
    finally:
        os.close(src_fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def replace_with_symlink(path: str, target: str) -> None:
    """Atomically make ``path`` a symlink to ``target``: a temp link in ``path``'s directory
    renamed over it (a kill leaves ``path`` as it was, or the link)."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}.link")
    try:
        os.symlink(target, tmp)
        crash_point()
        os.replace(tmp, path)
        tmp = None
        crash_point()
        fsync_dir(d)
    except OSError as e:
        raise os_error(path, e, "restore the symlink", "original left intact") from None
    finally:
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
    """Delete the ``.ropepatch-*.tmp`` files a killed ropepatch left in ``directory`` (see
    :func:`orphans`) and the ``.ropepatch-PID-*.link`` symlinks of a process that is gone (a
    kill between making a temp link and renaming it over its target); return how many."""
    removed = 0
    for p in orphans(directory, _TMP_PREFIX, _TMP_SUFFIX):
        try:
            os.unlink(p)
            removed += 1
        except OSError:
            pass  # not ours to remove
    for p in _dead_links(directory):
        with contextlib.suppress(OSError):
            os.unlink(p)
            removed += 1
    return removed


def _dead_links(directory: str) -> Iterator[str]:
    """The ``.ropepatch-PID-*.link`` symlinks in ``directory`` whose process PID is gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(_TMP_PREFIX) and name.endswith(".link")):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        p = os.path.join(directory, name)
        if not pid.isdigit() or int(pid) == os.getpid() or not os.path.islink(p):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            yield p
        except OSError:
            continue  # alive, someone else's


def fsync_dir(d: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
