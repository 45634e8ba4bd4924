#!/usr/bin/env python3
"""Kill harness for Hugging Face writes: kill -9 a real ``python -m ropepatch hf`` / ``revert`` at
every file-changing step and check every file of the model after each kill.

The GGUF harness (tools/crash_harness.py) does the same for one file; an HF patch writes several
files (every safetensors shard, then config.json; ``revert`` writes config.json first, then the
shards), so the state after a kill is judged per file and then for the model as a whole.

How a run is stopped: the ``ROPEPATCH_CRASH_AFTER=N`` hook in ropepatch/safeio/files.py makes the child
SIGKILL itself right after its Nth file-changing step (temp file created, pwrite, kernel copy
chunk, truncate, chmod, fsync, rename, directory fsync, and the ``-o`` staging steps in
ropepatch/patch/hf_out.py). For each scenario the harness runs N = 1, 2, ... until the command
completes, so every step boundary is hit once; ``--random K`` adds K kills at random times sent
from the parent.

After each kill, every file (config.json, each shard, the index) is compared with the state
before the command and with the result of the same command run without interruption:

* ``original``: every file is as before the command;
* ``patched``: every file is the uninterrupted result;
* ``mixed``: every file is one of the two, but not all the same one (for example the shard
  already carries the new metadata and config.json is still the old one). A re-patch has one
  more per-file state by design: it writes the shards first with an extra
  ``ropepatch.previous_config_sha256`` entry (the sha256 of the config.json being replaced),
  then config.json, then the shards without it. A shard whose bytes are exactly the
  uninterrupted result plus that entry (naming the old config.json's sha256) is counted as
  ``new+prev`` and its model as ``mixed``;
* ``corrupt``: some file is neither (its safetensors header or JSON is checked to say why), a
  file is missing or extra, or the input of a ``-o`` run changed.

Then what a user does after a crash: the same command is run again. It must succeed and leave
every file byte-identical to the uninterrupted result, with no ``.ropepatch-*`` temp file or
directory left; where the kill left the complete result, a clean one-line refusal that says so
(``nothing to revert``, ``-o`` directory ``not empty``) also counts. After a patch, ``revert``
(revert_hf, what ``ropepatch revert DIR`` calls) must then restore the pristine bytes of every
file. A kill counts as ``recovered`` when all of that holds. For the in-place patch scenarios the
other way out is tried too, on a copy of the killed state: ``revert`` straight away must give the
pristine bytes (``revert ok``).

Each distinct result (and each re-patch's starting state) is validated once: ``safe_open``
reads every tensor and it equals the pristine tensor, config.json's ``rope_scaling``,
``rope_theta`` and ``max_position_embeddings`` equal ``plan_hf`` + ``plan_hf_snippets`` on the
pristine model, and ``inspect_hf`` reports the method and context.

Models: ``fixtures/hf/tiny-llama`` (one shard), the same tensors split into two shards with
an index (built here), so kills between two shards' writes are tried too, and the fixture laid
out as a Hugging Face cache snapshot (``snapshots/rev/config.json -> ../../blobs/<sha>``, the
shard likewise), so kills while patch replaces the symlinks with regular files and while revert
puts them back are tried too (issue 12): the shared blobs must never change, and after a revert
every symlink must be back, pointing where it did.

Usage::

    python tools/crash_harness_hf.py                   # every scenario, both models
    python tools/crash_harness_hf.py --quick           # one model, 3 scenarios (what CI runs)
    python tools/crash_harness_hf.py --random 10 --seed 1 --json out.json
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

from crash_common import cli, run, run_setup, run_timed, sha256
from crash_hf_classify import classify, is_new_plus_prev, recover, revert_now, validate, why_bad
from crash_hf_kills import Counts, fresh_copy, kill_at_step, kill_at_time, kill_matrix, prepare
from crash_hf_model import (
    CONFIG,
    FIXTURE,
    INDEX,
    MODELS,
    QUICK_SCENARIOS,
    REVERT,
    SCENARIOS,
    STRAY,
    Prepared,
    Scenario,
    blobs_of,
    content,
    copy_model,
    fmt_dir,
    hf_args,
    is_cache,
    make_models,
    snap,
    strays,
)

# the harness's parts live in tools/crash_*.py; these names stay importable from here
__all__ = [
    "CONFIG", "FIXTURE", "INDEX", "MODELS", "QUICK_SCENARIOS", "REVERT", "SCENARIOS", "STRAY", "Counts", "Prepared",
    "Scenario", "blobs_of", "classify", "cli", "content", "copy_model", "fmt_dir", "fresh_copy", "hf_args",
    "is_cache", "is_new_plus_prev", "kill_at_step", "kill_at_time", "kill_matrix", "main", "make_models", "prepare",
    "recover", "revert_now", "run", "run_setup", "run_timed", "sha256", "snap", "strays", "table", "validate",
    "why_bad",
]


def table(rows: list[dict], total: Counts) -> str:
    head = ("| model | scenario | steps | kills | original | patched | mixed | corrupt | recovered | revert ok "
            "| temp left |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rv = f"{r['revert_ok']}/{r['revert_tried']}" if r["revert_tried"] else "-"
        lines.append(f"| {r['model']} | {r['scenario']} | {r['steps']} | {r['kills']} | {r['original']} | "
                     f"{r['patched']} | {r['mixed']} | {r['corrupt']} | {r['recovered']}/{r['kills']} | {rv} | "
                     f"{r['temps_left']} |")
    t = total
    lines.append(f"| **total** | | {sum(r['steps'] for r in rows)} | {t.kills} | {t.original} | {t.patched} | "
                 f"{t.mixed} | {t.corrupt} | {t.recovered}/{t.kills} | {t.revert_ok}/{t.revert_tried} | "
                 f"{t.temps_left} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one model, 3 scenarios (the CI slice)")
    ap.add_argument("--random", type=int, default=0, help="extra kills at random times per scenario and model")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)
    models = MODELS[:1] if args.quick else MODELS
    scenarios = QUICK_SCENARIOS if args.quick else SCENARIOS
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ropepatch-crash-hf-")
    try:
        print(f"kill -9 at every write step ({len(models)} models x {len(scenarios)} scenarios, "
              f"+{args.random} random-time kills each)")
        total, rows = kill_matrix(models, scenarios, work, args.random, args.jobs, args.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = time.monotonic() - t0
    print()
    print(table(rows, total))
    if total.mixed_kinds:
        print("\nmixed states: " + "; ".join(f"{k}: {v}" for k, v in sorted(total.mixed_kinds.items())))
    print(f"\nkills {total.kills}, original {total.original}, patched {total.patched}, mixed {total.mixed}, "
          f"corrupt {total.corrupt}, recovered {total.recovered}/{total.kills}; {secs:.0f} s")
    if args.json:
        command = "python tools/crash_harness_hf.py " + " ".join(argv if argv is not None else sys.argv[1:])
        report = {"command": command,
                  "totals": total.row(), "rows": rows, "problems": total.problems, "seconds": round(secs, 1)}
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    bad = (total.corrupt or total.recovered != total.kills or total.revert_ok != total.revert_tried
           or total.problems or not total.kills)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
