"""The quality bench's store: the machine's cache plus a committed archive, so measurements
outlive the machine that made them.

A session's machine is fresh: its cache (~/.cache/ropepatch/quality/<model>/v2/) starts empty,
and hours of CPU would be lost with it. Every entry the bench finishes is therefore written
twice: to the cache (as it is) and to ``docs/results-data/<model>/v2/`` in the repository
(committed; perplexity entries with their per-position NLL sums as float32 instead of float64,
half the size: each is a sum of a few NLLs of about 0.1-15, float32 keeps 7 digits, far below
what the intervals resolve). A read takes the cache's entry, else the archive's; the report
lists entries from both (the cache's wins for a name in both). ``--no-archive`` keeps a run
(e.g. a quick check of the tool on a fixture) out of the repository.

The archive takes complete perplexity entries of methods and tune winners, tune entries and
passkey entries; tune candidates that were stopped early (only ppl_in measured) stay in the
cache only: the tune entry's table holds their figures.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ropepatch.quality import evaluate as E  # noqa: E402

ARCHIVE = ROOT / "docs" / "results-data"


# ---- entries: a MethodResult as JSON (the cache's and the archive's format) ----------------------


def pack(a: np.ndarray, dtype, level: int = -1) -> str:
    """An array as text: its bytes as ``dtype``, zlib-compressed (``level``), base64."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(a, dtype=dtype).tobytes(), level)).decode("ascii")


def unpack(s: str, dtype) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=dtype).copy()


def _fl(x) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def method_to_cache(r: E.MethodResult) -> dict:
    """Everything a :class:`MethodResult` holds (intervals and the paired test need it all)."""
    return {"name": r.name, "method": r.method, "alpha": r.alpha, "params": dict(r.params),
            "buckets": [[b.start, b.end, _fl(b.ppl), b.n] for b in r.buckets],
            "ppl_in": _fl(r.ppl_in), "ppl_ext": _fl(r.ppl_ext), "n_in": r.n_in, "n_ext": r.n_ext,
            "seconds": r.seconds, "decode_seconds": r.decode_seconds, "tokens_decoded": r.tokens_decoded,
            "nll_sum": pack(r.nll_sum, np.float64), "count": pack(r.count, np.int64),
            "per_window": [list(w) for w in r.per_window]}


def method_from_cache(d: dict, name: str | None = None) -> E.MethodResult:
    return E.MethodResult(
        name=name or d["name"], method=d["method"], alpha=d["alpha"], params=d["params"],
        buckets=tuple(E.Bucket(a, b, _nan(p), n) for a, b, p, n in d["buckets"]),
        ppl_in=_nan(d["ppl_in"]), ppl_ext=_nan(d["ppl_ext"]), n_in=d["n_in"], n_ext=d["n_ext"],
        seconds=d["seconds"], decode_seconds=d["decode_seconds"], tokens_decoded=d["tokens_decoded"],
        nll_sum=unpack(d["nll_sum"], np.float64), count=unpack(d["count"], np.int64),
        per_window=tuple((float(a), int(b), float(c), int(e)) for a, b, c, e in d["per_window"]))


# ---- the archive ----------------------------------------------------------------------------


def compact(d: dict) -> dict:
    """``d`` as archived: a perplexity entry's ``method.nll_sum`` (float64) as ``nll_sum32``."""
    m = d.get("method")
    if not isinstance(m, dict) or "nll_sum" not in m:
        return d
    m = dict(m)
    m["nll_sum32"] = pack(unpack(m.pop("nll_sum"), np.float64), np.float32, 9)
    return {**d, "method": m}


def expand(d: dict | None) -> dict | None:
    """An archived entry as the cache holds it (``nll_sum32`` back to a float64 ``nll_sum``)."""
    m = d.get("method") if isinstance(d, dict) else None
    if not isinstance(m, dict) or "nll_sum32" not in m:
        return d
    m = dict(m)
    m["nll_sum"] = pack(unpack(m.pop("nll_sum32"), np.float32).astype(np.float64), np.float64, 9)
    return {**d, "method": m}


def load_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


class Store:
    """Entries by file name: ``cache`` (the machine's folder), then ``archive`` (None: none)."""

    def __init__(self, cache: Path, archive: Path | None):
        self.cache, self.archive = cache, archive

    def load(self, name: str) -> dict | None:
        d = load_json(self.cache / name)
        if d is None and self.archive is not None:
            d = expand(load_json(self.archive / name))
        return d

    def get(self, name: str, key: dict) -> dict | None:
        """The entry ``name`` when its key is ``key`` (the cache's, else the archive's)."""
        d = load_json(self.cache / name)
        if (d is None or d.get("key") != key) and self.archive is not None:
            d = expand(load_json(self.archive / name))
        return d if d is not None and d.get("key") == key else None

    def put(self, name: str, d: dict, archive: bool = True) -> None:
        _write(self.cache / name, json.dumps(d, indent=1))
        if archive and self.archive is not None:
            _write(self.archive / name, json.dumps(compact(d), separators=(",", ":")))

    def paths(self, pattern: str) -> list[Path]:
        """Every entry matching ``pattern``, one per name (the cache's where both have it)."""
        found = {p.name: p for p in self.archive.glob(pattern)} if self.archive is not None else {}
        found.update({p.name: p for p in self.cache.glob(pattern)})
        return [found[n] for n in sorted(found)]

    def archive_all(self) -> int:
        """Copy the cache's archivable entries (not stopped tune candidates) into the archive."""
        n = 0
        for p in sorted(self.cache.glob("*.json")):
            d = load_json(p)
            if d is None or ("complete" in d and not d["complete"]):
                continue
            self.put(p.name, d)
            n += 1
        return n

    def read(self, p: Path) -> dict | None:
        """An entry :meth:`paths` listed, as the cache holds it."""
        return expand(load_json(p))
