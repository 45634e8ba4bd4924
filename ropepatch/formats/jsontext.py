"""JSON as hostile input: one decoder for every JSON text ropepatch reads (config.json, the
safetensors index, undo records), whose every failure is one :class:`FormatError` line.

Beyond ``json.loads``: nesting too deep (``RecursionError``), integers too long to convert
(Python's digit limit), invalid UTF-8, and strings holding lone surrogates (``"\\ud800"``, which
cannot be written back as UTF-8) are all refused with the file's name and what was found.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ropepatch.errors import FormatError

MAX_DEPTH = 512  # deeper documents are refused (real configs nest a few levels)


def _depth_ok(obj: Any) -> bool:
    """True when ``obj`` nests at most MAX_DEPTH containers and holds only encodable strings."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"a string with an unpaired surrogate ({ascii(o)[:40]})") from None
            continue
        if isinstance(o, (dict, list)):
            if d > MAX_DEPTH:
                raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
            items = o.items() if isinstance(o, dict) else enumerate(o)
            for k, v in items:
                if isinstance(k, str):
                    stack.append((k, d))
                stack.append((v, d + 1))
    return True


def parse_json(text: str | bytes, where: str, what: str = "JSON",
               object_pairs_hook: Callable | None = None) -> Any:
    """Decode ``text`` (bytes must be UTF-8) read from ``where`` (a file name, possibly with a
    key); raise a one-line :class:`FormatError` ``"{where}: not valid {what}: ..."`` on any
    failure."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=object_pairs_hook)
        _depth_ok(obj)
        return obj
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(f"{where}: not valid {what}: nesting too deep") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not valid {what}: not UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: not valid {what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # digit limit, surrogates, depth
        msg = str(exc).split("\n")[0]
        if "digits" in msg:
            msg = "an integer with too many digits"
        raise FormatError(f"{where}: not valid {what}: {msg}") from None
