"""The seed post's plot: perplexity (log scale) against position, one line per method, with a
vertical line at the training length. matplotlib is an optional extra (``ropepatch[plot]``)
and is imported only when a plot is drawn."""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from ropepatch.errors import RopepatchError, WriteError
from ropepatch.quality.buckets import rebucket
from ropepatch.quality.specs import WINDOW
from ropepatch.safeio.paths import output_target, shown

Series = Sequence[tuple[int, int, float]]  # (start, end, ppl) per bin


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RopepatchError(
            "--plot needs matplotlib, which is not installed: pip install 'ropepatch[plot]' "
            "(or pip install matplotlib)"
        ) from None
    return plt


def check_plot_target(out: str) -> None:
    """Before a long run: matplotlib imports and ``out`` can be written (its directory exists and
    is writable; an existing ``out`` is a regular file) -- one line otherwise, so an hour of
    scoring is never lost to a plot that cannot be drawn."""
    _pyplot()
    output_target(out, "--plot")
    d = os.path.dirname(os.path.abspath(out))
    if not os.access(d, os.W_OK):
        raise WriteError(f"{shown(out)}: cannot write the plot: the directory {shown(d)} is not writable")


def plot_series(series: Mapping[str, Series], out: str, *, n_ctx_train: int, title: str | None = None,
                ctx: int | None = None) -> str:
    """Draw ``{method: [(start, end, ppl), ...]}`` into the PNG ``out``; returns ``out``.

    Each bin is drawn at its midpoint; bins without a finite perplexity are skipped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    try:
        hi = 0
        for name, bins in series.items():
            xs = [(a + b) / 2 for a, b, p in bins if p is not None and math.isfinite(p) and p > 0]
            ys = [p for a, b, p in bins if p is not None and math.isfinite(p) and p > 0]
            if not xs:
                continue
            hi = max(hi, max(b for _, b, _ in bins))
            style = {"linestyle": "--", "color": "black"} if name == WINDOW else {}
            ax.plot(xs, ys, marker="." if len(xs) <= 16 else None, label=name, linewidth=1.6, **style)
        ax.axvline(n_ctx_train, color="grey", linestyle=":", linewidth=1.2)
        ax.text(n_ctx_train, 1.0, f" training length {n_ctx_train}", transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize=8, color="grey")
        ax.set_yscale("log")
        ax.set_xlim(0, ctx or hi or None)
        ax.set_xlabel("position in the window (tokens)")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(title or "Perplexity by position")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="upper left", fontsize=9)
        fig.tight_layout()
        try:
            fig.savefig(out, format="png")
        except OSError as e:
            raise WriteError(f"{out}: cannot write the plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def plot_result(result, out: str, *, bins: int | None = 64, title: str | None = None) -> str:
    """Plot an :class:`ropepatch.quality.results.EvalResult` (per-position data re-binned into ``bins``
    equal bins; ``bins=None`` uses the result's own buckets) or its ``to_json()`` dict (buckets)."""
    if isinstance(result, Mapping):
        series = {name: [(b["start"], b["end"], b["ppl"]) for b in m["buckets"]]
                  for name, m in result["methods"].items()}
        return plot_series(series, out, n_ctx_train=result["n_ctx_train"], ctx=result["ctx"],
                           title=title or f"{result['model']}: perplexity by position, ctx {result['ctx']}")
    ctx = result.ctx
    series = {}
    for name, m in result.methods.items():
        if bins and m.nll_sum is not None:
            edges = sorted({round(i * ctx / bins) for i in range(bins + 1)})
            bk = rebucket(m, edges)
        else:
            bk = m.buckets
        series[name] = [(b.start, b.end, b.ppl) for b in bk]
    return plot_series(series, out, n_ctx_train=result.n_ctx_train, ctx=ctx,
                       title=title or f"{result.model}: perplexity by position, ctx {ctx}")
