"""What the fuzzers (tools/fuzz_headers.py and its GGUF / safetensors modules, tools/fuzz_hf.py for
Hugging Face directories) share: the paths, the edge values, the outcome counts, ``guarded`` (one
target call under a time limit and tracemalloc, classified), the in-process command line, and
``no_fsync``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ropepatch.errors import RopepatchError  # noqa: E402

FIXTURES = ROOT / "fixtures"
MiB = 1 << 20

U32_EDGES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 31, 32, 0x7F, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
U64_EDGES = U32_EDGES + [1 << 32, (1 << 32) + 1, 1 << 40, 1 << 60, 1 << 62,
                         (1 << 63) - 1, 1 << 63, (1 << 64) - 2, (1 << 64) - 1]


class Timeout(BaseException):
    """Raised by SIGALRM inside a case (a BaseException, so no ``except Exception`` eats it)."""


def alarm(signum, frame):
    raise Timeout()


# ---- outcomes -----------------------------------------------------------------------------


@dataclass
class Stats:
    cases: int = 0
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)  # ok / error / finding kinds
    findings: dict = field(default_factory=dict)  # signature -> (kind, detail, input sha, target)
    disagreements: Counter = field(default_factory=Counter)
    max_peak: int = 0
    max_seconds: float = 0.0
    slowest: str = ""

    def finding(self, kind: str, target: str, detail: str, data: bytes, save: str | None, ext: str) -> None:
        sig = f"{kind}:{_signature(detail) if kind == 'crash' else target}"
        self.outcomes[kind] += 1
        if sig in self.findings:
            return
        sha = hashlib.sha256(data).hexdigest()[:16]
        self.findings[sig] = (kind, target, detail, sha, len(data))
        if save:
            os.makedirs(save, exist_ok=True)
            with open(os.path.join(save, f"{kind}-{sha}{ext}"), "wb") as f:
                f.write(data)
            with open(os.path.join(save, f"{kind}-{sha}.txt"), "w") as f:
                f.write(f"{target}\n{detail}\n")


def _signature(detail: str) -> str:
    """Exception type + innermost ropepatch frame: one signature per distinct bug."""
    lines = [ln for ln in detail.splitlines() if ln.strip()]
    frames = [ln.strip() for ln in lines if ln.strip().startswith("File ") and "/ropepatch/" in ln]
    last = lines[-1] if lines else ""
    return (frames[-1] if frames else "") + " | " + last.split(":")[0]


def guarded(stats: Stats, target: str, fn, data: bytes, budget: int, timeout: float, save, ext) -> object:
    """Run ``fn`` under a time limit and tracemalloc; classify; return its result or None."""
    stats.calls += 1
    tracemalloc.clear_traces()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    result, kind, detail = None, "ok", ""
    try:
        result = fn()
    except RopepatchError as e:
        msg = str(e)
        kind = "error" if msg and "\n" not in msg and "Traceback" not in msg else "multiline"
        detail = msg
    except Timeout:
        kind, detail = "hang", f"over {timeout} s"
    except MemoryError:
        kind, detail = "alloc", traceback.format_exc()
    except SystemExit as e:  # argparse rejecting a value: its own clean usage error
        kind, detail = ("error" if e.code == 2 else "crash"), f"SystemExit({e.code})"
    except Exception:  # noqa: BLE001 - any other exception is the finding
        kind, detail = "crash", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    stats.max_peak = max(stats.max_peak, peak)
    if secs > stats.max_seconds:
        stats.max_seconds, stats.slowest = secs, f"{target} on a {len(data)}-byte input"
    if kind in ("ok", "error") and peak > budget:
        kind, detail = "alloc", f"tracemalloc peak {peak} bytes > budget {budget}"
    if kind in ("ok", "error"):
        stats.outcomes[kind] += 1
    else:
        stats.finding(kind, target, detail, data, save, ext)
    return result if kind == "ok" else None


def fresh_case(work: str, sub: str, name: str, data: bytes) -> tuple[str, str]:
    """An empty ``work/sub`` holding only ``name`` with ``data``: (its folder, its path)."""
    d = os.path.join(work, sub)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return d, path


def alloc_budget(data: bytes) -> int:
    """The tracemalloc peak a target may reach on ``data``: 1 MiB + 4x the input size."""
    return MiB + 4 * len(data)


# ---- the command line, in process ---------------------------------------------------------


def cli(argv: list[str]):
    """A call of the real command line (in process): exit 0, or 2 with exactly one error line."""
    from ropepatch import cli as ropepatch_cli

    def run():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = ropepatch_cli.main(argv)
        errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("ropepatch: error")]
        if rc not in (0, 2) or (rc == 2 and len(errors) != 1) or "Traceback" in err.getvalue():
            raise AssertionError(f"exit status {rc}, stderr {err.getvalue()[:300]!r}")
        if "--json" in argv and rc == 0:
            json.loads(out.getvalue())
        return rc

    return run


# ---- no fsync while fuzzing ---------------------------------------------------------------


@contextlib.contextmanager
def no_fsync():
    """``os.fsync`` as a no-op while fuzzing: the fuzzer judges results, not durability (the
    crash harnesses kill real runs for that), and the HF targets' real patches and reverts would
    otherwise spend most of their time waiting for the disk."""
    saved = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = saved


def without_fsync(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with no_fsync():
            return fn(*args, **kwargs)

    return run
