"""Standard output and error as things that can fail: a reader that goes away early
(``ropepatch plan m.gguf --ctx 4096 | head -1``) or a stream that cannot be written
(``> /dev/full``).

- A closed pipe is not an error the user needs to read about: the command stops printing and
  exits with :data:`EXIT_PIPE_CLOSED` (141 = 128 + SIGPIPE, the status a shell reports for
  ``cat``, ``grep`` or ``yes`` killed by a closed pipe), with nothing on stderr and no
  ``Exception ignored ... BrokenPipeError`` when the interpreter shuts down. The work a command
  did before printing (a patch, a revert) is complete either way: output comes last.
- Any other write error on stdout (ENOSPC, EIO, ...) is one ``ropepatch: error:`` line, exit 2.
"""

from __future__ import annotations

import io
import os
import sys

from ropepatch.errors import WriteError
from ropepatch.safeio.paths import os_error, shown

EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE (13)


def out(text: str) -> None:
    """Print ``text`` and a newline on stdout; a write error other than a closed pipe is one line."""
    try:
        print(text)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_error(exc) from None


def flush_stdout() -> None:
    """Flush stdout now (it is block-buffered on a pipe or file, so most write errors show here)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_error(exc) from None


def stdout_error(exc: OSError) -> WriteError:
    """A write error on stdout as one line; stdout is then silenced so the interpreter's own
    flush at exit cannot print a second report."""
    silence(sys.stdout)
    err = os_error("standard output", exc, "write the output")
    return WriteError(str(err))


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters (and lone surrogates) as escapes: a
    message that names a file called ``"a\\nb"`` stays ONE line however it was built."""
    return shown(text)


def say_error(line: str) -> None:
    """Print one line on stderr (escaped by :func:`one_line`); a closed stderr is silenced, never
    a traceback."""
    try:
        print(one_line(line), file=sys.stderr)
        sys.stderr.flush()
    except OSError:
        silence(sys.stderr)


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so what is still buffered for it (and
    the flush at interpreter exit) goes nowhere instead of raising again. A stream with no real
    descriptor (a test's capture) is left alone."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def pipe_closed() -> int:
    """After a ``BrokenPipeError``: silence stdout and stderr, return :data:`EXIT_PIPE_CLOSED`."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            silence(stream)
    return EXIT_PIPE_CLOSED
