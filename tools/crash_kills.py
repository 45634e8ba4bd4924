"""The GGUF kill matrix (tools/crash_harness.py): kill -9 at every write step and at random
times, classify the target file after each kill, re-run the command; and the same random-time
kills on a big synthetic file, where they land inside the copy and the fsync."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from crash_common import ROOT, kill_after, kill_every_step_then_random, run, run_setup, run_timed, sha256, temps
from crash_scenarios import BIG_SCENARIOS, FIXTURES, Scenario, fmt_file
from crash_validate import validate

FIELDS = ("kills", "original", "patched", "other_valid", "corrupt", "temps_left", "retry_ok", "retry_failed", "partial")


@dataclass
class Counts:
    kills: int = 0
    original: int = 0
    patched: int = 0
    other_valid: int = 0
    corrupt: int = 0
    temps_left: int = 0  # kills after which a .ropepatch-*.tmp remained
    retry_ok: int = 0  # kills that left the original, after which re-running the command worked
    retry_failed: int = 0
    partial: int = 0  # partial_ok scenarios: new header, old factors; reverts and re-runs to the result
    problems: list = field(default_factory=list)

    def add(self, o: Counts) -> None:
        for k in FIELDS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.problems += o.problems

    def row(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}


@dataclass
class Prepared:
    scenario: Scenario
    fixture: str
    pre: str  # path of the pre-state file
    pre_sha: str
    post_sha: str
    post: str
    steps: int = 0
    seconds: float = 0.0


def prepare(sc: Scenario, fixture: str, work: str) -> Prepared:
    d = tempfile.mkdtemp(prefix="prep-", dir=work)
    f = os.path.join(d, "model.gguf")
    shutil.copyfile(FIXTURES / fixture, f)
    run_setup(sc, f, fixture, fmt_file)
    pre = os.path.join(d, "pre.gguf")
    shutil.copyfile(f, pre)
    o = os.path.join(d, "out.gguf")
    secs = run_timed(sc, f, o, fixture, fmt_file)
    post = o if sc.output else f
    return Prepared(sc, fixture, pre, sha256(pre), sha256(post), post, seconds=secs)


def _classify(prep: Prepared, d: str, f: str, o: str, c: Counts, label: str, use_llama: bool) -> None:
    sc = prep.scenario
    pristine = str(FIXTURES / prep.fixture)
    where = f"{prep.fixture} / {sc.name} / {label}"
    problem = None
    if sc.output:  # the input must be untouched; the output absent or complete
        if sha256(f) != prep.pre_sha:
            state, problem = "corrupt", "the input file changed"
        elif not os.path.exists(o):
            state = "original"
        else:
            problem = validate(o, sc.expect, pristine, use_llama)
            state = "corrupt" if problem else ("patched" if sha256(o) == prep.post_sha else "other_valid")
    else:
        s = sha256(f)
        if s == prep.pre_sha:
            state = "original"
        else:
            problem = validate(f, sc.expect, pristine, use_llama)
            state = "corrupt" if problem else ("patched" if s == prep.post_sha else "other_valid")
            if problem and sc.partial_ok and _partial_then_done(prep, f, pristine):
                state, problem = "partial", None
    setattr(c, state, getattr(c, state) + 1)
    if state in ("corrupt", "other_valid"):
        c.problems.append(f"{where}: {state}: {problem or 'valid, but not the uninterrupted result'}")
    if temps(d):
        c.temps_left += 1
    if state != "original":
        return
    # what a user does after a crash: run the same command again; it must give the complete
    # result and remove any temp file the kill left behind
    rc, _, err = run(fmt_file(sc.args, f, o))
    final = o if sc.output else f
    if rc == 0 and sha256(final) == prep.post_sha and not temps(d):
        c.retry_ok += 1
    else:
        c.retry_failed += 1
        c.problems.append(f"{where}: retry rc={rc} {err.strip()[:200]} temps={temps(d)}")


def _partial_then_done(prep: Prepared, f: str, pristine: str) -> bool:
    """A kill between the header write and the factor-data pwrite: the file must revert to the
    pristine bytes, and running the command again must give the uninterrupted result."""
    with tempfile.TemporaryDirectory() as d:
        back = os.path.join(d, "back.gguf")
        rc, _, _ = run(["revert", f, "-o", back])
        if rc != 0 or sha256(back) != sha256(pristine):
            return False
    rc, _, _ = run(fmt_file(prep.scenario.args, f, ""))
    return rc == 0 and sha256(f) == prep.post_sha


def kill_at_step(prep: Prepared, n: int, work: str, use_llama: bool) -> tuple[Counts, bool]:
    """Run the command with ROPEPATCH_CRASH_AFTER=n; (counts, whether the kill happened)."""
    c = Counts()
    d = tempfile.mkdtemp(prefix="kill-", dir=work)
    f, o = os.path.join(d, "model.gguf"), os.path.join(d, "out.gguf")
    shutil.copyfile(prep.pre, f)
    rc, _, err = run(fmt_file(prep.scenario.args, f, o), crash_after=n)
    if rc != -signal.SIGKILL:
        if rc != 0:
            c.problems.append(f"{prep.fixture} / {prep.scenario.name} / step {n}: exit {rc}: {err.strip()[:200]}")
        shutil.rmtree(d)
        return c, False
    c.kills = 1
    _classify(prep, d, f, o, c, f"kill after step {n}", use_llama)
    shutil.rmtree(d)
    return c, True


def kill_at_time(prep: Prepared, delay: float, work: str, use_llama: bool) -> Counts:
    c = Counts()
    d = tempfile.mkdtemp(prefix="killt-", dir=work)
    f, o = os.path.join(d, "model.gguf"), os.path.join(d, "out.gguf")
    shutil.copyfile(prep.pre, f)
    if kill_after(fmt_file(prep.scenario.args, f, o), delay) == -signal.SIGKILL:
        c.kills = 1
        _classify(prep, d, f, o, c, f"kill at {delay * 1000:.0f} ms", use_llama)
    shutil.rmtree(d)
    return c


def kill_matrix(fixtures, scenarios, work: str, random_kills: int = 0, jobs: int = 2, seed: int = 0,
                use_llama: bool = True, log=print) -> tuple[Counts, list[dict]]:
    total, rows = Counts(), []
    rng = random.Random(seed)
    log = log or (lambda *a: None)
    with ThreadPoolExecutor(jobs) as ex:
        for fixture in fixtures:
            for sc in scenarios:
                if sc.llama_only and "llama" not in fixture:
                    continue
                prep = prepare(sc, fixture, work)
                c = Counts()
                # every step boundary: run batches of `jobs` kill points until the child completes
                prep.steps = kill_every_step_then_random(
                    ex, jobs, c, partial(kill_at_step, prep, work=work, use_llama=use_llama),
                    partial(kill_at_time, prep, work=work, use_llama=use_llama), rng, prep.seconds, random_kills)
                rows.append({"fixture": fixture, "scenario": sc.name, "steps": prep.steps, **c.row()})
                log(f"  {fixture:22} {sc.name:50} steps {prep.steps:2}  kills {c.kills:3}  original {c.original:3}  "
                    f"patched {c.patched:3}  partial {c.partial}  corrupt {c.corrupt}  temps-left {c.temps_left}  "
                    f"retry-ok {c.retry_ok}")
                for p in c.problems:
                    log(f"    ! {p}")
                total.add(c)
    return total, rows


# ---- a big file: random-time kills land inside the copy and the fsync ---------------------


def make_big_gguf(path: str, mb: int) -> str:
    """A synthetic GGUF of about ``mb`` MiB of real (non-sparse) tensor bytes, with a tiny
    fixture's metadata (not loadable as a model: validated by header, plan and revert only)."""
    import struct

    sys.path.insert(0, str(ROOT / "tools"))
    from fuzz_headers import small_gguf

    from ropepatch.formats.gguf.header import parse_header, serialize_header

    meta = small_gguf()
    h = parse_header(meta, "meta", len(meta))
    n = mb * (1 << 20) // 4
    name = b"blob.weight"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, n, 0, 0)
    head = serialize_header(3, h.kvs, info, 1)
    head += bytes(-len(head) % 32)
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.write(head)
        for i in range(mb):
            f.write(chunk[i % 251:] + chunk[: i % 251])
    return path


def big_file_kills(mb: int, work: str, kills: int, seed: int = 0, log=print) -> tuple[Counts, list[dict]]:
    """Kills at random times during first patch / in-place re-patch / revert of a ``mb`` MiB
    file; the rewrite's copy and fsync take most of the run, so most kills land inside them."""
    pristine = make_big_gguf(os.path.join(work, f"big-{mb}MiB.gguf"), mb)
    rng = random.Random(seed)
    total, rows = Counts(), []
    log = log or (lambda *a: None)
    for sc in BIG_SCENARIOS:
        prep = prepare(sc, pristine, work)
        c = Counts()
        for _ in range(kills):
            c.add(kill_at_time(prep, rng.uniform(0.0, 1.05) * prep.seconds, work, use_llama=False))
        rows.append({"fixture": f"synthetic {mb} MiB", "scenario": sc.name, "run_s": round(prep.seconds, 2),
                     **c.row()})
        log(f"  synthetic {mb} MiB   {sc.name:50} run {prep.seconds:.2f} s  kills {c.kills:3}  "
            f"original {c.original:3}  patched {c.patched:3}  corrupt {c.corrupt}  temps-left {c.temps_left}  "
            f"retry-ok {c.retry_ok}")
        for p in c.problems:
            log(f"    ! {p}")
        total.add(c)
        shutil.rmtree(os.path.dirname(prep.pre), ignore_errors=True)
    return total, rows
