"""The text a measurement scores: read from a file, tokenized once with the model's own
tokenizer, cut into non-overlapping ``ctx``-token windows."""

from __future__ import annotations

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.runtime.session import Model
from ropepatch.safeio.paths import read_bounded

TEXT_MAX_BYTES = 1 << 30  # a --text file is read whole: 1 GiB is far beyond any context


def load_text(path: str) -> str:
    """A text file as str (UTF-8, undecodable bytes replaced); a FIFO, device or directory, an
    OS error or a file over TEXT_MAX_BYTES is one line (never a hang or an unbounded read)."""
    return read_bounded(path, TEXT_MAX_BYTES, "text file").decode("utf-8", errors="replace")


def make_windows(text_tokens: np.ndarray, ctx: int, bos: int | None, max_windows: int | None = None
                 ) -> list[np.ndarray]:
    """Non-overlapping ``ctx``-token windows of the text (each starting with ``bos`` when given):
    window ``w`` holds text tokens ``[w * body, (w + 1) * body)``, ``body`` = ctx - 1 with a BOS,
    else ctx (:func:`window_spans`). ``max_windows``: how many (None = as many as fit); more than
    the text holds is refused in one line (never silently fewer)."""
    body = ctx - 1 if bos is not None else ctx
    n_fit = len(text_tokens) // body
    if n_fit < 1:
        raise UsageError(
            f"the text has {len(text_tokens)} tokens; scoring a window of {ctx} needs at least "
            f"{body}: pass a longer --text or a smaller --ctx"
        )
    if max_windows is not None and int(max_windows) > n_fit:
        raise UsageError(
            f"--windows {int(max_windows)}: the text has {len(text_tokens)} tokens, which hold {n_fit} "
            f"window(s) of {ctx} ({body} text tokens each); pass --windows {n_fit} or fewer, a longer "
            f"--text or a smaller --ctx"
        )
    k = n_fit if max_windows is None else max(1, int(max_windows))
    out = []
    for w in range(k):
        chunk = text_tokens[w * body:(w + 1) * body]
        out.append(np.concatenate([[bos], chunk]).astype(np.int32) if bos is not None else chunk.astype(np.int32))
    return out


def text_windows(model: Model, ctx: int, text: str | bytes | None, tokens: np.ndarray | None,
                 max_windows: int | None, who: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(tokens, windows)``: the text's tokens (``tokens`` when given, else ``text`` tokenized
    by ``model``) and their windows, each starting with the model's BOS when it adds one.
    ``who`` names the caller in the error when neither is given."""
    if tokens is None:
        if text is None:
            raise UsageError(f"{who}: give a text or its tokens")
        tokens = model.tokenize(text)
    windows = make_windows(np.asarray(tokens, dtype=np.int32), ctx,
                           model.bos if model.add_bos else None, max_windows)
    return tokens, windows


def window_spans(windows: list[np.ndarray], bos: int | None) -> tuple[tuple[int, int], ...]:
    """The text tokens ``[start, end)`` that each window of :func:`make_windows` holds."""
    body = len(windows[0]) - (1 if bos is not None else 0) if windows else 0
    return tuple((w * body, (w + 1) * body) for w in range(len(windows)))
