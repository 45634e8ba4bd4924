"""Argument types shared by the parser and the command handlers."""

from __future__ import annotations

import argparse

from ropepatch.errors import RopepatchError

# --flash-attn: "auto" leaves llama.cpp's own choice (it picks on when the backend supports it).
FLASH_ATTN = {"auto": None, "on": True, "off": False}


def positive_int(s: str) -> int:
    """A token count > 0 (argparse type)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens, found {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {s}")
    return v


def number(s: str) -> float:
    """A float (argparse type)."""
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {s!r}") from None


def positions(text: str) -> list[int]:
    """``validate --positions``: ranges like ``8184-8199,16368-16383`` (argparse type)."""
    from ropepatch.check.validate import parse_positions

    try:
        return parse_positions(text)
    except RopepatchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
