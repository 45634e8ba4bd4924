"""Progress on stderr: bars on an interactive stderr, whole lines on any other."""

from __future__ import annotations

import os
import sys
import time


def show_progress(args) -> bool:
    """Progress bars go to an interactive stderr only, and only for files worth waiting on."""
    try:
        big = os.path.getsize(args.path) > 256 * 2**20
    except OSError:
        big = False
    return big and sys.stderr.isatty() and not args.json


def byte_progress(enabled: bool):
    """A ``progress(done, total)`` callback drawing a bytes bar with rate and ETA, or None."""
    if not enabled:
        return None
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        el = max(time.monotonic() - start, 1e-9)
        rate = done / el
        eta = (total - done) / rate if rate > 0 else 0
        width = 30
        fill = int(width * done / total) if total else width
        sys.stderr.write(
            f"\r  [{'#' * fill}{'.' * (width - fill)}] {done / 2**30:6.2f}/{total / 2**30:.2f} GiB "
            f"{rate / 2**20:7.1f} MiB/s ETA {eta:4.0f}s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def quality_progress(args):
    """The eval/tune/passkey progress report on stderr (stdout stays clean for ``--json``): the
    self-overwriting bar on an interactive stderr, whole lines every 30 s with tok/s and ETA on
    any other (nohup, a log file, CI; silent for short runs); nothing with ``-q``."""
    if args.quiet:
        return None
    from ropepatch.quality.progress import progress_bar, progress_lines

    if sys.stderr.isatty() and not args.json:
        return progress_bar(sys.stderr)
    return progress_lines(sys.stderr)
