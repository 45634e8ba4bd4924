"""The ``ropepatch`` command line: a thin layer over the library.

Every command has ``-h`` with an example and ``--json``; library errors become one line on
stderr (``ropepatch: error: ...``) and exit status 2, with no traceback and nothing written.

``parser`` builds the arguments, ``commands`` maps each command to its handler (in
``commands_*``: parse -> one library call -> render), ``render`` prints text or JSON.
"""

from __future__ import annotations

import sys

from ropepatch.cli.commands import COMMANDS
from ropepatch.cli.parser import build_parser
from ropepatch.errors import RopepatchError

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][0](args)
    except RopepatchError as e:
        print(f"ropepatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ropepatch: interrupted; the original file is intact", file=sys.stderr)
        return 130
