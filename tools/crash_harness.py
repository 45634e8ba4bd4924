#!/usr/bin/env python3
"""Crash-safety harness: kill -9 a real ``python -m ropepatch`` at every syscall boundary of a
write, fill the disk under it, make its file or directory read-only, run two at once - and check
that the model file is always either byte-for-byte what it was before the command, or a complete,
valid result.

How a run is stopped. ropepatch/safeio/files.py has a test-only hook: ``ROPEPATCH_CRASH_AFTER=N``
makes the child SIGKILL itself right after its Nth file-changing step (temp file created, pwrite,
kernel copy chunk, truncate, chmod, fsync, rename, directory fsync); ``ROPEPATCH_CRASH_SIGNAL=STOP``
freezes it there instead so the harness can change the world (fill the disk, chattr +i, start a
second ropepatch) and then SIGCONT it. For each scenario the harness runs N = 1, 2, ... until the
child completes, so every boundary of that command is hit; it adds kills at random times from
the parent (``--random``).

What is checked after every kill, for the command's target file:

* ``original``: its sha256 equals the state before the command;
* ``patched``: its sha256 equals the result of the same command run without interruption; each
  distinct result is validated once: ``read_header`` works, the RoPE values equal the plan
  (``make_plan`` on the recorded original), ``revert -o`` gives the pristine fixture's sha256,
  and llama-cpp-python loads it and reports the planned context length and base;
* anything else is validated the same way and counted as ``corrupt`` if it fails (``other
  valid`` if it passes, which would still be a finding);
* then the command is run again in the same directory (what a user does after a crash): it must
  succeed and produce the uninterrupted result, and no ``.ropepatch-*.tmp`` may remain (a kill
  leaves the temp file of a rewrite behind; the next rewrite in that directory removes it).

Usage::

    python tools/crash_harness.py                  # the long run: all fixtures, all scenarios
    python tools/crash_harness.py --quick          # one fixture, a few scenarios (what CI runs)
    python tools/crash_harness.py --factors        # the per-pair factor scenarios, all fixtures,
                                                   # plus the LongRoPE ones on tiny-llama-longrope-f32
    python tools/crash_harness.py --random 40 --json out.json
    python tools/crash_harness.py --random 25 --stress 40 --big 128 --seed 1   # docs/reliability.md

Needs root for the disk-full (tmpfs mount) and read-only (chattr +i, ro bind mount) checks; each
of those is reported as skipped, with the reason, where the machine does not allow it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GGUF_FIXTURES = ["tiny-llama-q8_0.gguf", "tiny-llama-f32.gguf", "tiny-qwen2-q8_0.gguf", "tiny-qwen2-f32.gguf"]
sys.path.insert(0, str(ROOT))

LOCK_MSG = "another ropepatch process is writing this file"
CHANGED_MSG = "the file changed while ropepatch was preparing the patch"


# ---- running the real CLI -----------------------------------------------------------------


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH_CRASH")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def cli(args: list[str], crash_after: int = 0, sig: str = "KILL", cwd=None) -> subprocess.Popen:
    extra = {"ROPEPATCH_CRASH_AFTER": str(crash_after), "ROPEPATCH_CRASH_SIGNAL": sig} if crash_after else {}
    return subprocess.Popen(
        [sys.executable, "-m", "ropepatch", *args], cwd=cwd or ROOT, env=_env(extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run(args: list[str], crash_after: int = 0, timeout: float = 60) -> tuple[int, str, str]:
    p = cli(args, crash_after)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def wait_stopped(p: subprocess.Popen, timeout: float = 30) -> bool:
    """Wait until the child froze itself (ROPEPATCH_CRASH_SIGNAL=STOP); False if it exited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if p.poll() is not None:
            return False
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.005)
    raise TimeoutError("child did not stop")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temps(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".ropepatch-") and n.endswith(".tmp"))


def one_line_error(rc: int, err: str, pattern: str) -> bool:
    lines = err.strip().splitlines()
    return rc == 2 and len(lines) == 1 and lines[0].startswith("ropepatch: error: ") and pattern in lines[0]


# ---- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """``setup`` commands make the state before the command under test (``args``); ``{f}`` is
    the model file, ``{o}`` an output path next to it. ``expect`` describes the complete result:
    ("patch", ctx, method, record) or ("pristine",)."""

    name: str
    setup: tuple[tuple[str, ...], ...]
    args: tuple[str, ...]
    expect: tuple
    output: bool = False  # the command writes {o}; {f} must stay as it was
    llama_only: bool = False  # writes rope_freqs.weight: only llama-family fixtures take it
    # two in-place writes (the header, then one pwrite of the factor data): a kill between them
    # leaves the new header with the old factors, which must revert to the original and be
    # finished by running the command again (counted as "partial")
    partial_ok: bool = False


def _p(ctx, method="ntk", *more):
    return ("gguf", "{f}", "--ctx", str(ctx), "--method", method, *more)


SCENARIOS = [
    Scenario("first patch (rewrite)", (), _p(1024, "yarn"), ("patch", 1024, "yarn", True)),
    Scenario("first patch to a copy (-o)", (), _p(2048, "ntk", "-o", "{o}"), ("patch", 2048, "ntk", True), output=True),
    Scenario("re-patch yarn->ntk (in place, key count changes)", (_p(1024, "yarn"),), _p(2048, "ntk"), ("patch", 2048, "ntk", True)),
    Scenario("re-patch ntk->yarn (in place, key count changes)", (_p(1024, "ntk"),), _p(4096, "yarn"), ("patch", 4096, "yarn", True)),
    Scenario("re-patch yarn->yarn (in place, new ctx)", (_p(1024, "yarn"),), _p(4096, "yarn"), ("patch", 4096, "yarn", True)),
    Scenario("re-patch ntk->linear (in place)", (_p(2048, "ntk"),), _p(1024, "linear"), ("patch", 1024, "linear", True)),
    Scenario("revert (rewrite)", (_p(1024, "yarn"),), ("revert", "{f}"), ("pristine",)),
    Scenario("--no-record (in place)", (), _p(1024, "ntk", "--no-record"), ("patch", 1024, "ntk", False)),
]
QUICK_SCENARIOS = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[3], SCENARIOS[6]]
# per-pair factors (issue 14): the add-tensor rewrite, the in-place data pwrite, the tensor's removal
FACTOR_SCENARIOS = [
    Scenario("ntk-parts first patch (adds rope_freqs, rewrite)", (), _p(1024, "ntk-parts"),
             ("patch", 1024, "ntk-parts", True), llama_only=True),
    Scenario("re-patch ntk-parts alpha (header + one data pwrite)", (_p(1024, "ntk-parts"),),
             _p(1024, "ntk-parts", "--alpha", "12"), ("patch", 1024, "ntk-parts", True, 12.0), llama_only=True,
             partial_ok=True),
    Scenario("re-patch ntk-parts->yarn (removes rope_freqs, rewrite)", (_p(1024, "ntk-parts"),), _p(1024, "yarn"),
             ("patch", 1024, "yarn", True), llama_only=True),
    Scenario("revert ntk-parts (removes rope_freqs)", (_p(1024, "ntk-parts"),), ("revert", "{f}"), ("pristine",),
             llama_only=True),
    Scenario("factors first patch to a copy (-o)", (), _p(2048, "factors", "--factors", "1,2,4", "-o", "{o}"),
             ("patch", 2048, "factors", True, None, (("points", (1.0, 2.0, 4.0)),)), output=True, llama_only=True),
    Scenario("re-patch yarn->ntk-parts (adds rope_freqs, rewrite)", (_p(1024, "yarn"),), _p(2048, "ntk-parts"),
             ("patch", 2048, "ntk-parts", True), llama_only=True),
    Scenario("re-patch ntk-parts->factors (header + one data pwrite)", (_p(1024, "ntk-parts"),),
             _p(1024, "factors", "--factors", "1,3"), ("patch", 1024, "factors", True, None, (("points", (1.0, 3.0)),)),
             llama_only=True, partial_ok=True),
    # the attn_factor key is added lazily: the first re-patch that sets it grows the header
    Scenario("re-patch ntk->factors --attn-factor (adds rope_freqs and the attn_factor key)", (_p(1024, "ntk"),),
             _p(1024, "factors", "--factors", "1,2", "--attn-factor", "1.25"),
             ("patch", 1024, "factors", True, None, (("points", (1.0, 2.0)), ("attn_factor", 1.25))),
             llama_only=True),
    Scenario("re-patch factors->factors, new attn_factor (header + one data pwrite)",
             (_p(1024, "factors", "--factors", "1,2", "--attn-factor", "1.1"),),
             _p(1024, "factors", "--factors", "1,3", "--attn-factor", "1.2"),
             ("patch", 1024, "factors", True, None, (("points", (1.0, 3.0)), ("attn_factor", 1.2))),
             llama_only=True, partial_ok=True),
]
SCENARIOS += FACTOR_SCENARIOS
# LongRoPE (tiny-llama-longrope-f32 only): the factor methods change rope_factors_long.weight in place
LONGROPE_FIXTURE = "tiny-llama-longrope-f32.gguf"
LONGROPE_SCENARIOS = [
    Scenario("LongRoPE ntk-parts first patch (long factors changed, rewrite)", (), _p(512, "ntk-parts"),
             ("patch", 512, "ntk-parts", True), llama_only=True),
    Scenario("LongRoPE re-patch ntk-parts->factors (header + one data pwrite)", (_p(512, "ntk-parts"),),
             _p(512, "factors", "--factors", "1,3"), ("patch", 512, "factors", True, None, (("points", (1.0, 3.0)),)),
             llama_only=True, partial_ok=True),
    Scenario("LongRoPE revert (long factors restored)", (_p(512, "ntk-parts"),), ("revert", "{f}"), ("pristine",),
             llama_only=True),
]


def _fmt(args, f, o):
    return [a.format(f=f, o=o) for a in args]


# ---- validation ---------------------------------------------------------------------------

_llama_lock = threading.Lock()
_valid_cache: dict[tuple, str | None] = {}


def _f32(x: float) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<f", x))[0]


def validate(path: str, expect: tuple, pristine: str, use_llama: bool = True) -> str | None:
    """None when ``path`` is a complete, valid result of ``expect``; else what is wrong."""
    key = (sha256(path), expect, pristine, use_llama)
    if key in _valid_cache:
        return _valid_cache[key]
    with tempfile.TemporaryDirectory() as d:  # a copy: the file itself may be locked right now
        copy = os.path.join(d, "model.gguf")
        shutil.copyfile(path, copy)
        problem = _validate(copy, expect, pristine, use_llama)
    _valid_cache[key] = problem = problem and problem.replace(copy, path)
    return problem


def _validate(path: str, expect: tuple, pristine: str, use_llama: bool) -> str | None:
    from ropepatch.patch import gguf as gp
    from ropepatch.errors import RopepatchError
    from ropepatch.formats.gguf.header import read_header
    from ropepatch.rope.methods import make_plan

    try:
        read_header(path)
        info = gp.inspect_gguf(path)
    except RopepatchError as e:
        return f"unreadable: {e}"
    if expect[0] == "pristine":
        if sha256(path) != sha256(pristine):
            return "not the pristine bytes"
        target_ctx, target = info.current.n_ctx_train, info.current
    else:
        _, ctx, method, record, *rest = expect  # rest: (alpha, options as (name, value) pairs)
        orig = gp.inspect_gguf(pristine).original
        plan = make_plan(orig, ctx, method, *rest[:1], options=dict(rest[1]) if len(rest) > 1 else None)
        t, c = plan.target, info.current
        if t.freq_factors != c.freq_factors:
            return f"rope_freqs {c.freq_factors} != plan {t.freq_factors}"
        want = (t.n_ctx_train, _f32(t.freq_base), t.scaling_type, _f32(t.scaling_factor) if t.scaling_factor else 0.0,
                t.orig_ctx, _f32(t.attn_factor))
        got = (c.n_ctx_train, _f32(c.freq_base), c.scaling_type, _f32(c.scaling_factor) if c.scaling_factor else 0.0,
               c.orig_ctx, _f32(c.attn_factor))
        if want != got:
            return f"values {got} != plan {want}"
        if record:
            if info.provenance is None or info.provenance.method != method or info.provenance.ctx != ctx:
                return f"provenance {info.provenance} does not name {method} {ctx}"
            with tempfile.TemporaryDirectory() as d:
                back = os.path.join(d, "back.gguf")
                try:
                    gp.revert_gguf(path, out=back)
                except RopepatchError as e:
                    return f"revert fails: {e}"
                if sha256(back) != sha256(pristine):
                    return "revert does not give the original sha256"
        elif info.provenance is not None:
            return "unexpected provenance"
        target_ctx, target = ctx, t
    if use_llama:
        problem = _llama_check(path, target_ctx, target)
        if problem:
            return problem
    return None


def _llama_check(path: str, ctx: int, target) -> str | None:
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - the test extra installs it
        return None
    with _llama_lock:
        try:
            llm = llama_cpp.Llama(model_path=path, n_ctx=64, verbose=False)
        except Exception as e:  # noqa: BLE001 - any load failure is the finding
            return f"llama-cpp-python cannot load it: {e}"
        try:
            n_train = llama_cpp.llama_model_n_ctx_train(llm.model)
            meta = dict(llm.metadata)
        finally:
            llm.close()
    if n_train != ctx:
        return f"llama.cpp reads n_ctx_train {n_train}, expected {ctx}"
    arch = target.arch
    base = float(meta.get(f"{arch}.rope.freq_base", "10000"))
    if abs(base - _f32(target.freq_base)) > 1e-3 * base:
        return f"llama.cpp reads freq_base {base}, expected {_f32(target.freq_base)}"
    stype = meta.get(f"{arch}.rope.scaling.type", "none")
    if target.scaling_type.value not in ("none",) and stype != target.scaling_type.value:
        return f"llama.cpp reads scaling type {stype}, expected {target.scaling_type.value}"
    return None


# ---- the kill matrix ----------------------------------------------------------------------


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

    def add(self, o: "Counts") -> None:
        for k in ("kills", "original", "patched", "other_valid", "corrupt", "temps_left", "retry_ok", "retry_failed",
                  "partial"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.problems += o.problems

    def row(self) -> dict:
        d = {k: getattr(self, k) for k in ("kills", "original", "patched", "other_valid", "corrupt", "temps_left", "retry_ok", "retry_failed",
                  "partial")}
        return d


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


def run_setup(sc, target: str, label: str, fmt=None) -> None:
    """Run ``sc.setup`` on ``target`` (a file or model directory); each must succeed.
    ``fmt(args, target, out)`` fills the placeholders (default: this harness's ``{f}``/``{o}``)."""
    for cmd in sc.setup:
        rc, _, err = run((fmt or _fmt)(cmd, target, ""))
        assert rc == 0, f"{label} / {sc.name}: setup {cmd}: {err}"


def run_timed(sc, target: str, out: str, label: str, fmt=None) -> float:
    """Run the scenario's command uninterrupted on ``target``; return its wall seconds."""
    t0 = time.monotonic()
    rc, _, err = run((fmt or _fmt)(sc.args, target, out))
    secs = time.monotonic() - t0
    assert rc == 0, f"{label} / {sc.name}: {err}"
    return secs


def prepare(sc: Scenario, fixture: str, work: str) -> Prepared:
    d = tempfile.mkdtemp(prefix="prep-", dir=work)
    f = os.path.join(d, "model.gguf")
    shutil.copyfile(FIXTURES / fixture, f)
    run_setup(sc, f, fixture)
    pre = os.path.join(d, "pre.gguf")
    shutil.copyfile(f, pre)
    o = os.path.join(d, "out.gguf")
    secs = run_timed(sc, f, o, fixture)
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
    rc, _, err = run(_fmt(sc.args, f, o))
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
    rc, _, _ = run(_fmt(prep.scenario.args, f, ""))
    return rc == 0 and sha256(f) == prep.post_sha


def kill_at_step(prep: Prepared, n: int, work: str, use_llama: bool) -> tuple[Counts, bool]:
    """Run the command with ROPEPATCH_CRASH_AFTER=n; (counts, whether the kill happened)."""
    c = Counts()
    d = tempfile.mkdtemp(prefix="kill-", dir=work)
    f, o = os.path.join(d, "model.gguf"), os.path.join(d, "out.gguf")
    shutil.copyfile(prep.pre, f)
    rc, _, err = run(_fmt(prep.scenario.args, f, o), crash_after=n)
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
    p = cli(_fmt(prep.scenario.args, f, o))
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(signal.SIGKILL)
    p.communicate()
    if p.returncode == -signal.SIGKILL:
        c.kills = 1
        _classify(prep, d, f, o, c, f"kill at {delay * 1000:.0f} ms", use_llama)
    shutil.rmtree(d)
    return c


def kill_matrix(fixtures, scenarios, work: str, random_kills: int = 0, jobs: int = 2, seed: int = 0,
                use_llama: bool = True, log=print) -> tuple[Counts, list[dict]]:
    total, rows = Counts(), []
    rng = random.Random(seed)
    with ThreadPoolExecutor(jobs) as ex:
        for fixture in fixtures:
            for sc in scenarios:
                if sc.llama_only and "llama" not in fixture:
                    continue
                prep = prepare(sc, fixture, work)
                c = Counts()
                # every step boundary: run batches of `jobs` kill points until the child completes
                n, done = 1, False
                while not done:
                    batch = list(ex.map(lambda k: kill_at_step(prep, k, work, use_llama), range(n, n + jobs)))
                    for cc, killed in batch:
                        c.add(cc)
                        done = done or not killed
                    n += jobs
                prep.steps = c.kills
                delays = [rng.uniform(0.3, 1.1) * prep.seconds for _ in range(random_kills)]
                for cc in ex.map(lambda t: kill_at_time(prep, t, work, use_llama), delays):
                    c.add(cc)
                rows.append({"fixture": fixture, "scenario": sc.name, "steps": prep.steps, **c.row()})
                log = log or (lambda *a: None)
                log(f"  {fixture:22} {sc.name:50} steps {prep.steps:2}  kills {c.kills:3}  original {c.original:3}  "
                    f"patched {c.patched:3}  partial {c.partial}  corrupt {c.corrupt}  temps-left {c.temps_left}  "
                    f"retry-ok {c.retry_ok}")
                for p in c.problems:
                    log(f"    ! {p}")
                total.add(c)
    return total, rows


# ---- a big file: random-time kills land inside the copy and the fsync ---------------------

BIG_SCENARIOS = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[6]]  # first patch, in-place re-patch, revert


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
        rows.append({"fixture": f"synthetic {mb} MiB", "scenario": sc.name, "run_s": round(prep.seconds, 2), **c.row()})
        log(f"  synthetic {mb} MiB   {sc.name:50} run {prep.seconds:.2f} s  kills {c.kills:3}  original {c.original:3}  "
            f"patched {c.patched:3}  corrupt {c.corrupt}  temps-left {c.temps_left}  retry-ok {c.retry_ok}")
        for p in c.problems:
            log(f"    ! {p}")
        total.add(c)
        shutil.rmtree(os.path.dirname(prep.pre), ignore_errors=True)
    return total, rows


# ---- disk full, read-only, concurrency ----------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str = ""


@contextlib.contextmanager
def tmpfs(size_bytes: int, work: str):
    d = tempfile.mkdtemp(prefix="tmpfs-", dir=work)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", d], capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        yield None, r.stderr.strip() or "mount failed"
        return
    try:
        yield d, ""
    finally:
        subprocess.run(["umount", d], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _fill(d: str) -> str:
    """Fill the filesystem of ``d`` to the last byte; return the filler's path."""
    p = os.path.join(d, "filler")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            buf = b"\0" * size
            while True:
                try:
                    if os.write(fd, buf) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return p


def _chattr(flag: str, path: str) -> bool:
    return subprocess.run(["chattr", flag, path], capture_output=True).returncode == 0


def count_steps(args: list[str], pre: str, work: str) -> int:
    """How many crash-hook steps a command takes (runs it with N = 1, 2, ... until it completes)."""
    n = 1
    while True:
        d = tempfile.mkdtemp(prefix="count-", dir=work)
        f, o = os.path.join(d, "model.gguf"), os.path.join(d, "out.gguf")
        shutil.copyfile(pre, f)
        rc, _, _ = run(_fmt(args, f, o), crash_after=n)
        shutil.rmtree(d)
        if rc != -signal.SIGKILL:
            return n - 1
        n += 1


def disk_full_checks(fixture: str, work: str, quick: bool = False) -> list[Check]:
    out: list[Check] = []
    pristine = str(FIXTURES / fixture)
    size = os.path.getsize(pristine)
    first = list(_p(1024, "yarn"))
    # 1. not enough room for the rewrite: refused before writing
    with tmpfs(size + size // 2 + 65536, work) as (d, why):
        if d is None:
            return [Check("disk full: tmpfs", None, f"skipped: cannot mount tmpfs ({why})")]
        f = os.path.join(d, "model.gguf")
        shutil.copyfile(pristine, f)
        before = sha256(f)
        rc, _, err = run(_fmt(first, f, ""))
        ok = one_line_error(rc, err, "needs") and sha256(f) == before and not temps(d)
        out.append(Check("disk full: too little room for a rewrite -> refused up front, original intact", ok, err.strip()))
    # 2. the disk fills up DURING the rewrite, after each step that precedes the rename
    ref_dir = tempfile.mkdtemp(prefix="ref-", dir=work)
    ref = os.path.join(ref_dir, "model.gguf")
    shutil.copyfile(pristine, ref)
    n_steps = count_steps(first, ref, work)
    rc, _, _ = run(_fmt(first, ref, ""))
    post_sha = sha256(ref)
    steps = [1, 2] if quick else list(range(1, n_steps + 1))
    results = []
    for k in steps:
        with tmpfs(4 * size + (1 << 20), work) as (d, why):
            f = os.path.join(d, "model.gguf")
            shutil.copyfile(pristine, f)
            before = sha256(f)
            p = cli(_fmt(first, f, ""), crash_after=k, sig="STOP")
            if not wait_stopped(p):
                p.communicate()
                continue
            filler = _fill(d)
            p.send_signal(signal.SIGCONT)
            _, err = p.communicate(timeout=60)
            s = sha256(f)
            if p.returncode == 2 and "disk full" in err and s == before and not temps(d):
                results.append((k, "refused: disk full, original intact"))
            elif p.returncode == 0 and s == post_sha:
                results.append((k, "completed (nothing left to allocate)"))
            else:
                results.append((k, f"BAD rc={p.returncode} err={err.strip()[:150]} intact={s == before} temps={temps(d)}"))
            os.unlink(filler)
    bad = [r for r in results if r[1].startswith("BAD")]
    summary = "; ".join(f"step {k}: {r}" for k, r in results)
    out.append(Check(f"disk full: disk filled after each of steps {steps[0]}..{steps[-1]} of a rewrite", not bad and bool(results), summary))
    # 3. an in-place re-patch needs no free space at all
    with tmpfs(2 * size + (1 << 20), work) as (d, why):
        f = os.path.join(d, "model.gguf")
        shutil.copyfile(pristine, f)
        rc1, _, e1 = run(_fmt(first, f, ""))
        filler = _fill(d)
        rc, o, err = run(_fmt(_p(4096, "ntk"), f, ""))
        problem = validate(f, ("patch", 4096, "ntk", True), pristine, use_llama=False)
        out.append(Check("disk full: in-place re-patch on a 100% full disk succeeds", rc1 == 0 and rc == 0 and problem is None and "in place" in o, (err or o).strip().splitlines()[-1]))
        # 4. revert (a rewrite) on the full disk: refused, file intact
        before = sha256(f)
        rc, _, err = run(["revert", f])
        out.append(Check("disk full: revert on a full disk -> refused, file intact", one_line_error(rc, err, "needs") and sha256(f) == before and not temps(d), err.strip()))
        os.unlink(filler)
    shutil.rmtree(ref_dir)
    return out


def readonly_checks(fixture: str, work: str) -> list[Check]:
    out: list[Check] = []
    pristine = str(FIXTURES / fixture)
    d = tempfile.mkdtemp(prefix="ro-", dir=work)
    f = os.path.join(d, "model.gguf")
    patched = os.path.join(d, "patched.gguf")
    shutil.copyfile(pristine, f)
    shutil.copyfile(pristine, patched)
    assert run(_fmt(_p(1024, "yarn"), patched, ""))[0] == 0
    if not _chattr("+i", f):
        shutil.rmtree(d)
        return [Check("read-only: chattr +i", None, "skipped: chattr +i not permitted here")]
    _chattr("+i", patched)
    try:
        for what, args, path in (
            ("first patch of an immutable file", _p(1024, "yarn"), f),
            ("in-place re-patch of an immutable file", _p(4096, "ntk"), patched),
            ("revert of an immutable file", ("revert", "{f}"), patched),
        ):
            before = sha256(path)
            rc, _, err = run(_fmt(args, path, ""))
            out.append(Check(f"read-only: {what} -> refused", one_line_error(rc, err, "read-only") and sha256(path) == before and not temps(d), err.strip()))
    finally:
        _chattr("-i", f)
        _chattr("-i", patched)
    # immutable directory: a rewrite cannot create its temp file / rename; in place needs no dir write
    _chattr("+i", d)
    try:
        before = sha256(f)
        rc, _, err = run(_fmt(_p(1024, "yarn"), f, ""))
        out.append(Check("read-only: first patch in an immutable directory -> refused", one_line_error(rc, err, "read-only") and sha256(f) == before, err.strip()))
        rc, o, err = run(_fmt(_p(4096, "ntk"), patched, ""))
        problem = validate(patched, ("patch", 4096, "ntk", True), pristine, use_llama=False) if rc == 0 else err
        out.append(Check("read-only: in-place re-patch in an immutable directory -> allowed (no directory write needed)", rc == 0 and problem is None, (o or err).strip().splitlines()[-1]))
        before = sha256(patched)
        rc, _, err = run(["revert", patched])
        out.append(Check("read-only: revert in an immutable directory -> refused", one_line_error(rc, err, "read-only") and sha256(patched) == before, err.strip()))
    finally:
        _chattr("-i", d)
    # the target becomes immutable, or its directory does, in the middle of a rewrite
    n_steps = count_steps(list(_p(1024, "yarn")), pristine, work)
    for what, victim in (("file", "f"), ("directory", "d")):
        shutil.copyfile(pristine, f)
        before = sha256(f)
        p = cli(_fmt(_p(1024, "yarn"), f, ""), crash_after=n_steps - 3, sig="STOP")  # after the temp's fsync
        wait_stopped(p)
        _chattr("+i", f if victim == "f" else d)
        p.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=60)
        left = temps(d)
        _chattr("-i", f if victim == "f" else d)
        ok = one_line_error(p.returncode, err, "original left intact") and sha256(f) == before
        detail = err.strip() + (f"; temp left: {left}" if left else "")
        if left:  # the directory was immutable, so the temp could not be removed; the next rewrite does it
            rc, _, e2 = run(_fmt(_p(1024, "yarn"), f, ""))
            ok = ok and rc == 0 and not temps(d)
            detail += f"; next rewrite rc={rc}, temps after: {temps(d)}"
        out.append(Check(f"read-only: {what} made immutable just before the rename -> refused, original intact", ok, detail))
    shutil.rmtree(d)
    # a read-only mount (bind mount remounted ro)
    src = tempfile.mkdtemp(prefix="rosrc-", dir=work)
    mnt = tempfile.mkdtemp(prefix="romnt-", dir=work)
    shutil.copyfile(pristine, os.path.join(src, "model.gguf"))
    shutil.copyfile(pristine, os.path.join(src, "patched.gguf"))
    assert run(_fmt(_p(1024, "yarn"), os.path.join(src, "patched.gguf"), ""))[0] == 0
    r = subprocess.run(["mount", "--bind", src, mnt], capture_output=True, text=True)
    if r.returncode != 0:
        out.append(Check("read-only mount", None, f"skipped: bind mount not permitted ({r.stderr.strip()})"))
    else:
        try:
            r = subprocess.run(["mount", "-o", "remount,bind,ro", mnt], capture_output=True, text=True)
            if r.returncode != 0:
                out.append(Check("read-only mount", None, f"skipped: remount ro not permitted ({r.stderr.strip()})"))
            else:
                for what, args, name in (
                    ("first patch", _p(1024, "yarn"), "model.gguf"),
                    ("in-place re-patch", _p(4096, "ntk"), "patched.gguf"),
                    ("revert", ("revert", "{f}"), "patched.gguf"),
                ):
                    path = os.path.join(mnt, name)
                    before = sha256(path)
                    rc, _, err = run(_fmt(args, path, ""))
                    out.append(Check(f"read-only mount: {what} -> refused", one_line_error(rc, err, "read-only") and sha256(path) == before, err.strip()))
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
    shutil.rmtree(src)
    os.rmdir(mnt)
    return out


def concurrency_checks(fixture: str, work: str, stress: int = 0, seed: int = 0) -> list[Check]:
    out: list[Check] = []
    pristine = str(FIXTURES / fixture)
    d = tempfile.mkdtemp(prefix="conc-", dir=work)
    f = os.path.join(d, "model.gguf")
    cases = (
        ("rewrite (first patch)", (), _p(1024, "yarn"), ("patch", 1024, "yarn", True)),
        ("in-place re-patch", (_p(1024, "yarn"),), _p(2048, "ntk"), ("patch", 2048, "ntk", True)),
        ("revert", (_p(1024, "yarn"),), ("revert", "{f}"), ("pristine",)),
    )
    for what, setup, args, expect in cases:
        for second in (_p(4096, "linear"), ("revert", "{f}")):
            shutil.copyfile(pristine, f)
            for cmd in setup:
                run(_fmt(cmd, f, ""))
            before = sha256(f)
            a = cli(_fmt(args, f, ""), crash_after=1, sig="STOP")  # frozen inside its write, holding the lock
            if not wait_stopped(a):
                a.communicate()
                out.append(Check(f"concurrent: {what}", False, "first process did not stop"))
                continue
            rc, _, err = run(_fmt(second, f, ""))
            # refused: the lock, or (revert of a file not patched yet) nothing to revert
            refused = one_line_error(rc, err, LOCK_MSG) or one_line_error(rc, err, "no ropepatch provenance")
            # while the first is frozen mid-write, readers see a complete file: the old one (a
            # rewrite has not renamed yet) or the new one (an in-place pwrite is all-or-nothing)
            seen = sha256(f)
            whole_while = seen == before or validate(f, expect, pristine, use_llama=False) is None
            ri, _, _ = run(["inspect", f])
            a.send_signal(signal.SIGCONT)
            _, aerr = a.communicate(timeout=60)
            problem = validate(f, expect, pristine, use_llama=False) if a.returncode == 0 else aerr
            ok = refused and whole_while and ri == 0 and a.returncode == 0 and problem is None and not temps(d)
            out.append(Check(f"concurrent: '{' '.join(second[:1] + second[2:])}' while another ropepatch is in its {what} -> refused; first completes", ok,
                             err.strip() if ok else f"second rc={rc} {err.strip()[:200]}; first rc={a.returncode} {problem}"))
    # stress: several processes started together on one file; every one either succeeds or
    # refuses with a clear line, and the file ends as the complete result of one of them
    if stress:
        rng = random.Random(seed)
        cmds = [(_p(1024, "yarn"), ("patch", 1024, "yarn", True)), (_p(2048, "ntk"), ("patch", 2048, "ntk", True)),
                (_p(4096, "linear"), ("patch", 4096, "linear", True)), (("revert", "{f}"), ("pristine",))]
        bad, n_ok, n_refused = [], 0, 0
        for i in range(stress):
            shutil.copyfile(pristine, f)
            if rng.random() < 0.5:
                run(_fmt(_p(1024, "yarn"), f, ""))
            chosen = rng.sample(cmds, 3)
            procs = [cli(_fmt(c, f, "")) for c, _ in chosen]
            res = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
            for (o_, e_, rc), (c, exp) in zip(res, chosen):
                if rc == 0:
                    n_ok += 1
                elif rc == 2 and (LOCK_MSG in e_ or CHANGED_MSG in e_ or "no ropepatch provenance" in e_ or "already patched" in e_):
                    n_refused += 1
                else:
                    bad.append(f"run {i}: {' '.join(c)} rc={rc} {e_.strip()[:150]}")
            # the end state: the pristine file or a valid result of one of the commands
            if sha256(f) != sha256(pristine) and all(validate(f, exp, pristine, use_llama=False) for _, exp in chosen):
                bad.append(f"run {i}: final file is no command's complete result")
            if temps(d):
                bad.append(f"run {i}: temp files left {temps(d)}")
        out.append(Check(f"concurrent stress: {stress} rounds of 3 processes at once", not bad,
                         f"{n_ok} succeeded, {n_refused} refused cleanly" + ("; " + "; ".join(bad[:5]) if bad else "")))
    shutil.rmtree(d)
    return out


# ---- links: a symlinked or hard-linked model is never written through ----------------------


def _leftovers(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".ropepatch-"))


def _link_state(path: str, link: str | None, results: dict[str, str]) -> str | None:
    """Which allowed state ``path`` is in: "link" (the symlink to ``link``) or a key of
    ``results`` (a regular file with that sha256); None for anything else."""
    if os.path.islink(path):
        return "link" if link is not None and os.readlink(path) == link else None
    s = sha256(path)
    return next((k for k, v in results.items() if v == s), None)


def _link_case(name: str, work: str, fixture: str, make, args: list[str], allowed: tuple[str, ...]) -> Check:
    """Kill ``args`` after each write step on a fresh ``make(d) -> (target, link, shared, done)``
    layout: ``shared`` (the blob or the other hard link) never changes, the target is in an
    ``allowed`` state, and re-running the command gives the uninterrupted result and leaves no
    ``.ropepatch-*`` entry."""
    d = tempfile.mkdtemp(prefix="link-", dir=work)
    target, link, shared, _ = make(d)
    rc, _, err = run(_fmt(args, target, ""))
    if rc != 0:
        return Check(name, False, f"uninterrupted run failed: {err.strip()}")
    results = {"result": "" if os.path.islink(target) else sha256(target)}
    final_link = os.readlink(target) if os.path.islink(target) else None
    shutil.rmtree(d)
    kills, bad = 0, []
    for n in range(1, 64):
        d = tempfile.mkdtemp(prefix="link-", dir=work)
        target, link, shared, before = make(d)
        results["before"] = "" if os.path.islink(target) else sha256(target)
        rc, _, _ = run(_fmt(args, target, ""), crash_after=n)
        if rc != -signal.SIGKILL:
            shutil.rmtree(d)
            break
        kills += 1
        state = _link_state(target, link if final_link is None else final_link, {k: v for k, v in results.items() if v})
        if sha256(shared) != before or state is None or (state not in allowed and state != "link"):
            bad.append(f"step {n}: shared file changed or target in state {state}")
        if state != "before" and not (state == "link" and final_link is None):
            shutil.rmtree(d)  # the command had finished its write: nothing to run again
            continue
        rc, _, err = run(_fmt(args, target, ""))
        again = _link_state(target, final_link, {"result": results["result"]} if results["result"] else {})
        if rc != 0 or again not in ("result", "link") or _leftovers(os.path.dirname(target)) or sha256(shared) != before:
            bad.append(f"step {n}: retry rc {rc}, state {again}, left {_leftovers(os.path.dirname(target))}: {err.strip()}")
        shutil.rmtree(d)
    return Check(f"{name}: {kills} kills, shared file untouched, target whole", not bad and kills > 0, "; ".join(bad[:3]))


def _patched_copy(src: str, d: str, link: bool = False) -> str:
    """``src`` patched (yarn, 1024) in ``d``; with ``link``, through a symlink snap/m.gguf ->
    ../blobs/X, so the record names the link."""
    os.makedirs(os.path.join(d, "blobs"))
    os.makedirs(os.path.join(d, "snap"))
    b = os.path.join(d, "blobs", "X")
    shutil.copyfile(src, b)
    t = b
    if link:
        t = os.path.join(d, "snap", "m.gguf")
        os.symlink("../blobs/X", t)
    rc, _, err = run(_fmt(_p(1024, "yarn"), t, ""))
    assert rc == 0, err
    return t


def link_checks(fixture: str, work: str, quick: bool = False) -> list[Check]:
    """kill -9 at every write step of the link cases: the first patch of a symlink into a
    shared blob (HF-cache style), an in-place re-patch through a symlink to a patched blob and
    through a hard link, and the revert that puts the symlink back."""
    src = str(FIXTURES / fixture)
    cache: dict[str, str] = {}

    def once(key: str, make_file) -> str:
        """A file made once (by a real ropepatch run) and copied into each case's directory."""
        if key not in cache:
            cache[key] = make_file(tempfile.mkdtemp(prefix="link-cache-", dir=work))
        return cache[key]

    def blob(d, patched):
        os.makedirs(os.path.join(d, "blobs"))
        os.makedirs(os.path.join(d, "snap"))
        b = os.path.join(d, "blobs", "X")
        shutil.copyfile(src, b)
        if patched:
            shutil.copyfile(once("patched", lambda c: _patched_copy(src, c)), b)
        return b

    def symlinked(patched):
        def make(d):
            b = blob(d, patched)
            t = os.path.join(d, "snap", "m.gguf")
            os.symlink("../blobs/X", t)
            return t, "../blobs/X", b, sha256(b)
        return make

    def hardlinked(d):
        b = blob(d, True)
        t = os.path.join(d, "snap", "m.gguf")
        os.link(b, t)
        return t, None, b, sha256(b)

    def patched_link(d):  # a symlink patched by ropepatch: a regular file whose record names the link
        t, link, b, h = symlinked(False)(d)
        os.unlink(t)
        shutil.copyfile(once("via-link", lambda c: _patched_copy(src, c, link=True)), t)
        return t, link, b, h

    return link_cases(fixture, work, symlinked, hardlinked, patched_link, quick)


def link_cases(fixture, work, symlinked, hardlinked, patched_link, quick) -> list[Check]:
    if quick:  # the CI slice: a re-patch through a symlink to a patched blob, and the revert
        return [
            _link_case("symlink to a patched blob, re-patch", work, fixture, symlinked(True), list(_p(2048, "ntk")), ("before", "result")),
            _link_case("revert puts the symlink back", work, fixture, patched_link, ["revert", "{f}"], ("before",)),
        ]
    return [
        _link_case("symlink, first patch", work, fixture, symlinked(False), list(_p(1024, "yarn")), ("before", "result")),
        _link_case("symlink to a patched blob, re-patch", work, fixture, symlinked(True), list(_p(2048, "ntk")), ("before", "result")),
        _link_case("hard link, re-patch", work, fixture, hardlinked, list(_p(2048, "ntk")), ("before", "result")),
        _link_case("revert puts the symlink back", work, fixture, patched_link, ["revert", "{f}"], ("before",)),
    ]


# ---- main ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one fixture, four scenarios (the CI slice)")
    ap.add_argument("--fixtures", nargs="*", default=None, help="fixture names (default: all four, or one with --quick)")
    ap.add_argument("--random", type=int, default=0, help="extra kills at random times per scenario and fixture")
    ap.add_argument("--stress", type=int, default=0, help="rounds of 3 concurrent processes")
    ap.add_argument("--big", type=int, default=0, metavar="MIB", help="also kill at random times while patching a synthetic file of MIB MiB")
    ap.add_argument("--big-kills", type=int, default=30, help="random-time kills per scenario on the --big file")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-llama", action="store_true", help="skip the llama-cpp-python load check")
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("--factors", action="store_true",
                    help="only the per-pair factor scenarios (rope_freqs.weight writes), no disk/link checks")
    args = ap.parse_args(argv)
    fixtures = args.fixtures or (GGUF_FIXTURES[:1] if args.quick else GGUF_FIXTURES)
    scenarios = FACTOR_SCENARIOS if args.factors else QUICK_SCENARIOS if args.quick else SCENARIOS
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ropepatch-crash-")
    report: dict = {"command": "python tools/crash_harness.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        print(f"kill -9 at every write step ({len(fixtures)} fixtures x {len(scenarios)} scenarios, +{args.random} random-time kills each)")
        total, rows = kill_matrix(fixtures, scenarios, work, args.random, args.jobs, args.seed, not args.no_llama)
        if args.factors and not args.fixtures:
            lr, lr_rows = kill_matrix([LONGROPE_FIXTURE], LONGROPE_SCENARIOS, work, args.random, args.jobs,
                                      args.seed, not args.no_llama)
            total.add(lr)
            rows += lr_rows
        if args.big:
            print(f"kill -9 at random times, synthetic {args.big} MiB file ({args.big_kills} per scenario)")
            big, big_rows = big_file_kills(args.big, work, args.big_kills, args.seed)
            total.add(big)
            rows += big_rows
        report["kills"] = total.row()
        report["kill_rows"] = rows
        report["problems"] = total.problems
        checks: list[Check] = []
        if not args.factors:
            print("disk full / read-only / concurrent / links")
            checks += disk_full_checks(fixtures[0], work, quick=args.quick)
            checks += readonly_checks(fixtures[0], work)
            checks += concurrency_checks(fixtures[0], work, stress=args.stress, seed=args.seed)
            checks += link_checks(fixtures[0], work, quick=args.quick)
        for c in checks:
            mark = "skip" if c.ok is None else ("ok  " if c.ok else "FAIL")
            print(f"  [{mark}] {c.name}" + (f"\n         {c.detail}" if c.detail else ""))
        report["checks"] = [c.__dict__ for c in checks]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = time.monotonic() - t0
    t = report["kills"]
    print(f"\nkills tried {t['kills']}, originals intact {t['original']}, patched files valid {t['patched']}, "
          f"partial {t['partial']}, other valid {t['other_valid']}, corrupt {t['corrupt']}; temp file left by {t['temps_left']} kills, "
          f"all removed by the retry: {t['retry_failed'] == 0}; retries ok {t['retry_ok']}/{t['kills']}; {secs:.0f} s")
    failed = [c for c in report["checks"] if c["ok"] is False]
    report["seconds"] = round(secs, 1)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 1 if (t["corrupt"] or t["other_valid"] or t["retry_failed"] or failed or report["problems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
