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


# ggml's GGML_MAX_N_THREADS: llama.cpp aborts (or crashes) on more threads than this
MAX_THREADS = 512
MAX_TRIALS = 100_000  # passkey keys per depth: beyond this, numpy cannot even size the run


def thread_count(s: str) -> int:
    """``--threads``: 1 .. MAX_THREADS (argparse type)."""
    v = positive_int(s)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads (llama.cpp's limit), found {v}")
    return v


def trial_count(s: str) -> int:
    """``passkey --trials``: 1 .. MAX_TRIALS (argparse type)."""
    v = positive_int(s)
    if v > MAX_TRIALS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_TRIALS} trials per depth, found {v}")
    return v


def seed(s: str) -> int:
    """A random seed >= 0 (argparse type)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {v}")
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
