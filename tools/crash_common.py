"""What both kill harnesses (tools/crash_harness.py for GGUF, tools/crash_harness_hf.py for
Hugging Face directories) share: running the real ``python -m ropepatch`` with or without the
``ROPEPATCH_CRASH_AFTER`` hook, killing it at a step or at a time, and the per-scenario kill loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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


def kill_after(args: list[str], delay: float) -> int:
    """Start the command, SIGKILL it from here after ``delay`` seconds; its return code
    (``-signal.SIGKILL`` when the kill landed before it exited)."""
    p = cli(args)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(signal.SIGKILL)
    p.communicate()
    return p.returncode


def run_setup(sc, target: str, label: str, fmt) -> None:
    """Run ``sc.setup`` on ``target`` (a file or model directory); each must succeed.
    ``fmt(args, target, out)`` fills the harness's placeholders."""
    for cmd in sc.setup:
        rc, _, err = run(fmt(cmd, target, ""))
        assert rc == 0, f"{label} / {sc.name}: setup {cmd}: {err}"


def run_timed(sc, target: str, out: str, label: str, fmt) -> float:
    """Run the scenario's command uninterrupted on ``target``; return its wall seconds."""
    t0 = time.monotonic()
    rc, _, err = run(fmt(sc.args, target, out))
    secs = time.monotonic() - t0
    assert rc == 0, f"{label} / {sc.name}: {err}"
    return secs


# ---- files and results --------------------------------------------------------------------


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


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str = ""


# ---- the kill loop of one scenario --------------------------------------------------------


def kill_every_step_then_random(ex, jobs: int, c, at_step, at_time, rng, seconds: float, random_kills: int) -> int:
    """Add to the counts ``c`` a kill at every step boundary (``at_step(n) -> (counts, killed)``
    for N = 1, 2, ..., ``jobs`` at a time on the executor ``ex``, until the command completes),
    then ``random_kills`` kills at random times (``at_time(delay) -> counts``, the delays drawn
    from ``rng`` as 0.3..1.1 of the uninterrupted run's ``seconds``). Returns the step count."""
    n, done = 1, False
    while not done:
        for cc, killed in list(ex.map(at_step, range(n, n + jobs))):
            c.add(cc)
            done = done or not killed
        n += jobs
    steps = c.kills
    delays = [rng.uniform(0.3, 1.1) * seconds for _ in range(random_kills)]
    for cc in ex.map(at_time, delays):
        c.add(cc)
    return steps
