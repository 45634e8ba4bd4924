"""Opening a GGUF file for reading: regular files only, never an open that could block, and
every OS error as one line. (``ropepatch.safeio.paths`` does the same for the patch layer,
which checks an input with ``regular_input`` before this opens it; this layer may not import
``safeio``, so it keeps its own last line of defence.)"""

from __future__ import annotations

import os
import stat

from ropepatch.errors import FormatError

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str, name: str) -> int:
    """A read-only descriptor of the regular file ``path``. Opened non-blocking (a FIFO or
    device cannot hang the open) and refused unless it is a regular file; OS errors are one
    line. Callers in the patch layer have already refused non-regular files before opening."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as e:
        reason = (e.strerror or str(e)).replace("\n", " ").lower()
        raise FormatError(f"{name}: cannot read the GGUF file: {reason}") from None
    except ValueError:  # an embedded NUL
        raise FormatError(f"{name}: not a valid path (it contains a NUL byte)") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        found = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FormatError(f"{name}: expected a regular .gguf file, found {found}")
    return fd
