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
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the crash_*.py modules next to this one

from crash_common import Check, cli, one_line_error, run, run_setup, run_timed, sha256, temps, wait_stopped
from crash_concurrency import CHANGED_MSG, LOCK_MSG, concurrency_checks
from crash_disk import count_steps, disk_full_checks, readonly_checks, tmpfs
from crash_kills import (
    Counts,
    Prepared,
    big_file_kills,
    kill_at_step,
    kill_at_time,
    kill_matrix,
    make_big_gguf,
    prepare,
)
from crash_links import link_checks
from crash_scenarios import (
    BIG_SCENARIOS,
    FACTOR_SCENARIOS,
    FIXTURES,
    GGUF_FIXTURES,
    LONGROPE_FIXTURE,
    LONGROPE_SCENARIOS,
    QUICK_SCENARIOS,
    SCENARIOS,
    Scenario,
    fmt_file,
    gguf_args,
)
from crash_validate import validate

# the harness's parts live in tools/crash_*.py; these names stay importable from here
__all__ = [
    "BIG_SCENARIOS", "CHANGED_MSG", "FACTOR_SCENARIOS", "FIXTURES", "GGUF_FIXTURES", "LOCK_MSG", "LONGROPE_FIXTURE",
    "LONGROPE_SCENARIOS", "QUICK_SCENARIOS", "SCENARIOS", "Check", "Counts", "Prepared", "Scenario", "big_file_kills",
    "cli", "concurrency_checks", "count_steps", "disk_full_checks", "fmt_file", "gguf_args", "kill_at_step",
    "kill_at_time", "kill_matrix", "link_checks", "main", "make_big_gguf", "one_line_error", "prepare",
    "readonly_checks", "run", "run_setup", "run_timed", "sha256", "temps", "tmpfs", "validate", "wait_stopped",
]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one fixture, four scenarios (the CI slice)")
    ap.add_argument("--fixtures", nargs="*", default=None,
                    help="fixture names (default: all four, or one with --quick)")
    ap.add_argument("--random", type=int, default=0, help="extra kills at random times per scenario and fixture")
    ap.add_argument("--stress", type=int, default=0, help="rounds of 3 concurrent processes")
    ap.add_argument("--big", type=int, default=0, metavar="MIB",
                    help="also kill at random times while patching a synthetic file of MIB MiB")
    ap.add_argument("--big-kills", type=int, default=30, help="random-time kills per scenario on the --big file")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-llama", action="store_true", help="skip the llama-cpp-python load check")
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("--factors", action="store_true",
                    help="only the per-pair factor scenarios (rope_freqs.weight writes), no disk/link checks")
    return ap.parse_args(argv)


def run_all(args, fixtures: list[str], scenarios, work: str, report: dict) -> None:
    """The kill matrix (and the big file), then the fixed checks; results go into ``report``."""
    print(f"kill -9 at every write step ({len(fixtures)} fixtures x {len(scenarios)} scenarios, "
          f"+{args.random} random-time kills each)")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    fixtures = args.fixtures or (GGUF_FIXTURES[:1] if args.quick else GGUF_FIXTURES)
    scenarios = FACTOR_SCENARIOS if args.factors else QUICK_SCENARIOS if args.quick else SCENARIOS
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ropepatch-crash-")
    report: dict = {"command": "python tools/crash_harness.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        run_all(args, fixtures, scenarios, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = time.monotonic() - t0
    t = report["kills"]
    print(f"\nkills tried {t['kills']}, originals intact {t['original']}, patched files valid {t['patched']}, "
          f"partial {t['partial']}, other valid {t['other_valid']}, corrupt {t['corrupt']}; "
          f"temp file left by {t['temps_left']} kills, "
          f"all removed by the retry: {t['retry_failed'] == 0}; retries ok {t['retry_ok']}/{t['kills']}; {secs:.0f} s")
    failed = [c for c in report["checks"] if c["ok"] is False]
    report["seconds"] = round(secs, 1)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 1 if (t["corrupt"] or t["other_valid"] or t["retry_failed"] or failed or report["problems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
