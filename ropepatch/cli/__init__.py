"""The ``ropepatch`` command line: a thin layer over the library.

Every command has ``-h`` with an example and ``--json``; library errors become one line on
stderr (``ropepatch: error: ...``) and exit status 2, with no traceback and nothing written.
A reader that closes stdout early (``| head -1``) ends the command quietly with exit status
141 (see ``streams``).

``parser`` builds the arguments, ``commands`` maps each command to its handler (in
``commands_*``: parse -> one library call -> render), ``render`` prints text or JSON.
"""

from __future__ import annotations

import sys

from ropepatch.cli.commands import COMMANDS
from ropepatch.cli.parser import build_parser
from ropepatch.cli.render import dumps
from ropepatch.cli.streams import EXIT_PIPE_CLOSED, flush_stdout, out, pipe_closed, say_error
from ropepatch.errors import RopepatchError

__all__ = ["COMMANDS", "EXIT_PIPE_CLOSED", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        try:
            return _run(argv)
        finally:  # also after argparse's -h / usage exits: their text is buffered too
            flush_stdout()
    except BrokenPipeError:
        return pipe_closed()
    except RopepatchError as e:  # stdout could not be written (flush_stdout)
        say_error(f"ropepatch: error: {e}")
        return e.exit_code


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][0](args)
    except RopepatchError as e:
        say_error(f"ropepatch: error: {e}")
        if getattr(args, "json", False) and not getattr(e, "reported", False):  # JSON on stdout too, once
            out(dumps({"error": {"message": str(e), "type": type(e).__name__, "exit_code": e.exit_code}}))
        return e.exit_code
    except KeyboardInterrupt:
        if sys.stderr is not None and sys.stderr.isatty():  # a progress bar may be mid-line
            sys.stderr.write("\n")
        say_error("ropepatch: interrupted; the original file is intact")
        return 130
