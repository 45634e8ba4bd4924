"""The one exception family ropepatch raises.

Every error a user can cause (bad file, bad argument, no space, read-only target)
is a :class:`RopepatchError` whose ``str()`` is a single line naming the file,
the key or argument, what was expected, what was found and what to do. The CLI
prints that line and exits non-zero; nothing is written when one is raised.
"""

from __future__ import annotations


class RopepatchError(Exception):
    """Base class: a one-line, user-facing error."""

    exit_code = 2


class FormatError(RopepatchError):
    """The file is not a well-formed model file of the kind expected."""


class UnsupportedModelError(RopepatchError):
    """A well-formed file ropepatch cannot patch (no RoPE, incompatible scaling, ...)."""


class UsageError(RopepatchError):
    """A bad argument (ctx not larger than the original, NaN alpha, -o equal to input, ...)."""


class WriteError(RopepatchError):
    """The result cannot be written (read-only, no disk space, file changed under us, ...)."""


class NotPatchedError(RopepatchError):
    """``revert`` on a file ropepatch did not patch (or patched with --no-record)."""
