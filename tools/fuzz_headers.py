#!/usr/bin/env python3
"""Fuzz ropepatch's header readers with hostile and broken files.

Targets:

* GGUF: ``formats.gguf.header.parse_header`` on the bytes, then, on a file, ``read_header``,
  ``patch.gguf.inspect_gguf``, ``patch_gguf(dry_run=True)`` (random method and context),
  ``revert_gguf(dry_run=True)`` and ``make_plan`` for every method (what ``ropepatch plan`` does).
  When a dry run accepts an input, the patch is really written to a copy (``-o``), read back,
  re-patched in place with another method, and reverted: the revert must give the input's
  exact bytes (the "correct result" oracle).
* safetensors: ``formats.safetensors.read_header``; when it accepts a file, the ``safetensors``
  library must open it too and list the same tensors (a disagreement is reported).
* command-line numbers: ``ropepatch gguf --dry-run`` / ``ropepatch plan`` with hostile --ctx,
  --alpha, --base, --rope-dim values.
* Hugging Face model directories (``tools/fuzz_hf.py``, issue 12): damaged and forged undo
  records in shard metadata, hostile config.json and index JSON, through ``inspect_hf``,
  ``plan_hf``, dry-run patch and revert, the CLI, then a real revert and a real patch on copies
  (nothing written on an error, readable results, exact round trips, nothing outside the model
  directory touched).

Inputs come from seeds (the committed fixtures, small synthetic GGUFs built from their metadata,
patched and --no-record-patched copies, a v2 file, a file with general.alignment) through
structure-aware mutations: bit and byte flips in the header, every length / count / type field
set to edge values (0, 1, 2^31, 2^32-1, 2^63, 2^64-1, ...), truncation, deleting / duplicating /
swapping / retyping metadata entries (with and without fixing the count), RoPE keys given hostile
types and values, ropepatch's undo record (JSON) damaged, crafted entries with absurd lengths;
per-pair factors (issue 14): llama3-style and ntk-parts/factors-patched seeds, the rope_freqs.weight
tensor's values (NaN, inf, 0, negative), type, shape, offset (overlapping, past the end) and a
duplicate of its info, the record's ``rope_freqs`` field and ``ropepatch.options`` damaged, and
hostile --factors / --beta-* options through the patch targets.

Every case must end in a ``RopepatchError`` whose message is one line, or a correct result.
Anything else is a finding: ``crash`` (another exception), ``hang`` (over the time limit; SIGALRM),
``alloc`` (tracemalloc peak over 1 MiB + 4x the input size: an allocation driven by a length
field), ``wrote`` (the input file or its directory changed), ``multiline`` (an error message
of more than one line), ``oracle`` (accepted, but the written patch does not revert exactly).

Layout (all under tools/): this module is the entry point (the driver: ``fuzz``, ``replay``, the
report, the command line) and re-exports the pieces for the tests and the crash harnesses;
``fuzz_common.py`` (outcomes, ``guarded``, the in-process CLI, ``no_fsync``, shared with
``fuzz_hf.py``), ``fuzz_gguf_seeds.py`` (small GGUF builders, seeds, ``layout`` / ``rebuild``),
``fuzz_gguf_mutate.py`` (GGUF and per-pair factor mutations), ``fuzz_gguf_check.py`` (the GGUF and
command-line-number targets and their oracles), ``fuzz_st.py`` (safetensors), ``fuzz_corpus.py``
(the regression corpus); ``fuzz_hf.py`` with ``fuzz_hf_model.py`` and ``fuzz_hf_mutate.py``
(Hugging Face model directories).

Usage::

    python tools/fuzz_headers.py --cases 20000 --seed 1          # the long run
    python tools/fuzz_headers.py --cases 300 --seed 0 --save DIR  # keep crashing inputs in DIR
    python tools/fuzz_headers.py --replay tests/fuzz_corpus       # check a corpus
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import fuzz_hf
from fuzz_common import MiB, Stats, Timeout, alarm, cli, guarded, no_fsync, without_fsync
from fuzz_corpus import corpus_cases, factor_corpus_cases, legacy_patched, write_corpus
from fuzz_gguf_check import check_cli_numbers, check_gguf
from fuzz_gguf_mutate import factors_op, hostile_options, mutate_gguf
from fuzz_gguf_seeds import (
    build_gguf,
    factor_seeds,
    gguf_seeds,
    layout,
    small_gguf,
    small_longrope,
    small_phi3_longrope,
    with_rope_freqs,
)
from fuzz_st import check_st, mutate_st, st_seeds

__all__ = ["MiB", "Stats", "Timeout", "build_gguf", "check_cli_numbers", "check_gguf", "check_st", "cli",
           "corpus_cases", "factor_corpus_cases", "factor_seeds", "factors_op", "fuzz", "gguf_seeds", "guarded",
           "hostile_options", "layout", "legacy_patched", "main", "mutate_gguf", "mutate_st", "no_fsync", "replay",
           "replay_files", "report", "small_gguf", "small_longrope", "small_phi3_longrope", "st_seeds",
           "with_rope_freqs", "write_corpus"]


# ---- driver -------------------------------------------------------------------------------


@without_fsync
def fuzz(cases: int, seed: int, save: str | None = None, big: bool = True, log=print, timeout: float = 5.0,
         deep_every: int = 1, targets=("gguf", "safetensors", "cli", "hf")) -> Stats:
    rng = random.Random(seed)
    stats = Stats()
    work = tempfile.mkdtemp(prefix="ropepatch-fuzz-")
    old = signal.signal(signal.SIGALRM, alarm)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        seeds = gguf_seeds(work, big)
        lays = {name: layout(data) for name, data in seeds}
        sts = st_seeds()
        hfs = fuzz_hf.seeds() if "hf" in targets else []
        seed_path = os.path.join(work, "cli-seed.gguf")
        with open(seed_path, "wb") as f:
            f.write(seeds[0][1])
        _warm_up(seed_path)
        # every seed as is (valid inputs must give correct results)
        for _name, data in seeds if "gguf" in targets else ():
            check_gguf(stats, rng, data, work, save, timeout)
        for _name, data in sts if "safetensors" in targets else ():
            check_st(stats, data, work, save, timeout)
        for _name, files in hfs:
            fuzz_hf.check_hf(stats, rng, files, work, save, timeout)
        weights = {"gguf": 0.72, "safetensors": 0.2, "cli": 0.08, "hf": 0.25}
        total = sum(weights[t] for t in targets)
        cut_gguf = weights["gguf"] / total if "gguf" in targets else 0.0
        cut_st = cut_gguf + (weights["safetensors"] / total if "safetensors" in targets else 0.0)
        cut_cli = cut_st + (weights["cli"] / total if "cli" in targets else 0.0)
        t0 = time.monotonic()
        for i in range(cases):
            r = rng.random()
            if r < cut_gguf:
                name, data = rng.choice(seeds)
                check_gguf(stats, rng, mutate_gguf(rng, data, lays[name]), work, save, timeout,
                           deep=i % deep_every == 0)
            elif r < cut_st:
                name, data = rng.choice(sts)
                check_st(stats, mutate_st(rng, data), work, save, timeout)
            elif r < cut_cli:
                check_cli_numbers(stats, rng, seed_path, timeout, save)
            else:
                name, files = rng.choice(hfs)
                fuzz_hf.check_hf(stats, rng, fuzz_hf.mutate(rng, files), work, save, timeout)
            if log and (i + 1) % 1000 == 0:
                log(f"  {i + 1} cases, {stats.calls} calls, {len(stats.findings)} distinct findings, "
                    f"{time.monotonic() - t0:.0f} s")
    finally:
        signal.signal(signal.SIGALRM, old)
        if started:
            tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _warm_up(path: str) -> None:
    """Import everything the targets import lazily, so imports do not count as allocations."""
    for argv in (["inspect", path], ["inspect", path, "--json"], ["plan", path, "--ctx", "1024"],
                 ["gguf", path, "--ctx", "1024", "--dry-run"], ["revert", path, "--dry-run"],
                 ["plan", "--base", "1e4", "--rope-dim", "64", "--orig-ctx", "4096", "--ctx", "9000"]):
        with contextlib.suppress(Exception, SystemExit):
            cli(argv)()
    with contextlib.suppress(Exception):
        import safetensors  # noqa: F401

        import ropepatch.formats.safetensors  # noqa: F401
    with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as d:  # the HF targets, once
        m = fuzz_hf.materialize(fuzz_hf.model("llama"), d)
        for argv in (["inspect", m, "--json"], ["plan", m, "--ctx", "1024"], ["hf", m, "--ctx", "1024", "--dry-run"],
                     ["revert", m, "--dry-run"], ["hf", m, "--ctx", "1024"], ["revert", m]):
            with contextlib.suppress(Exception, SystemExit):
                cli(argv)()
        fuzz_hf.readable(m)


def replay(corpus: str, save: str | None = None, timeout: float = 5.0) -> tuple[Stats, list[str]]:
    """Run every corpus file through its targets (GGUF: .gguf, safetensors: .safetensors, HF
    model directories: .hfmodel.json)."""
    return replay_files([os.path.join(corpus, n) for n in sorted(os.listdir(corpus))], save, timeout)


@without_fsync
def replay_files(paths: list[str], save: str | None = None, timeout: float = 5.0) -> tuple[Stats, list[str]]:
    rng = random.Random(0)
    stats = Stats()
    work = tempfile.mkdtemp(prefix="ropepatch-replay-")
    old = signal.signal(signal.SIGALRM, alarm)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    names = []
    try:
        seed = os.path.join(work, "seed.gguf")
        with open(seed, "wb") as f:
            f.write(small_gguf())
        _warm_up(seed)
        for p in paths:
            name = os.path.basename(p)
            data = Path(p).read_bytes()
            if name.endswith(".gguf"):
                check_gguf(stats, rng, data, work, save, timeout)
            elif name.endswith(".safetensors"):
                check_st(stats, data, work, save, timeout)
            elif name.endswith(fuzz_hf.EXT):
                fuzz_hf.check_hf(stats, rng, fuzz_hf.unbundle(data), work, save, timeout)
            else:
                continue
            names.append(name)
    finally:
        signal.signal(signal.SIGALRM, old)
        if started:
            tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return stats, names


def report(stats: Stats, secs: float) -> str:
    lines = [f"cases {stats.cases}, target calls {stats.calls}, {secs:.0f} s",
             "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.outcomes.items())),
             f"max tracemalloc peak {stats.max_peak / 1024:.0f} KiB, "
             f"slowest call {stats.max_seconds * 1000:.0f} ms ({stats.slowest})",
             f"distinct findings: {len(stats.findings)}"]
    for _sig, (kind, target, detail, sha, n) in stats.findings.items():
        last = [ln for ln in detail.strip().splitlines() if ln.strip()][-1:] or [""]
        lines.append(f"  [{kind}] {target}: {last[0][:160]}  (input {sha}, {n} bytes)")
        frames = [ln.strip() for ln in detail.splitlines() if "/ropepatch/" in ln]
        if frames:
            lines.append(f"      at {frames[-1][:160]}")
    if stats.disagreements:
        lines.append("safetensors reader vs the safetensors library:")
        for k, v in stats.disagreements.most_common():
            lines.append(f"  {v:5}  {k}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write each distinct finding's input (and traceback) here")
    ap.add_argument("--small", action="store_true", help="synthetic seeds only (no 120 KB fixtures)")
    ap.add_argument("--replay", help="run a corpus directory instead of fuzzing")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per target call")
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("--write-corpus", metavar="DIR", help="(re)generate the regression corpus into DIR and exit")
    args = ap.parse_args(argv)
    if args.write_corpus:
        write_corpus(args.write_corpus)
        return 0
    t0 = time.monotonic()
    if args.replay:
        stats, names = replay(args.replay, args.save, args.timeout)
    else:
        stats = fuzz(args.cases, args.seed, args.save, not args.small, timeout=args.timeout)
    secs = time.monotonic() - t0
    print(report(stats, secs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python tools/fuzz_headers.py "
                                  + " ".join(argv if argv is not None else sys.argv[1:]),
                       "cases": stats.cases, "calls": stats.calls, "outcomes": dict(stats.outcomes),
                       "findings": [dict(zip(("kind", "target", "detail", "input_sha", "bytes"), v))
                                    for v in stats.findings.values()],
                       "disagreements": dict(stats.disagreements), "max_peak": stats.max_peak,
                       "seconds": round(secs, 1)}, f, indent=1)
    return 1 if stats.findings else 0


if __name__ == "__main__":
    sys.exit(main())
