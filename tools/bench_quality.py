#!/usr/bin/env python3
"""Does it actually help? Perplexity by position with 95% intervals, tuned per-pair factors and
passkey retrieval with Wilson intervals, on SmolLM2 (issue #14, part 5), into docs/results.md.

Model: SmolLM2-135M-Instruct Q4_1 (downloaded from PyPI by tools/get_smollm2.py, never committed),
trained at L = 8192. Texts: two from Python's stdlib (Lib/_pydecimal.py, code; pydoc_data/topics,
prose). Per (text, ctx) every method scores the SAME tokens: window (the unscaled model through a
sliding window of L, the baseline), none, linear, ntk, dynamic, yarn, ntk-parts (per-pair factors,
scored on a temporary patched copy of the model) and `tuned factors` (`ropepatch tune --method
factors --budget B` on that text, its winner then scored like the others); `--tune-methods` adds
`tuned M` for any tunable M. Each method's ppl_in / ppl_ext get a 95% interval and its ppl_ext is
compared with window's PAIRED on the same tokens (verdict: beats / tie / does not pay); with
`--windows 1` (the default) the intervals are over ~512-token blocks of one window: correlated, a
rough guide (`--windows K` >= 2: Student t over K windows, where the text holds them). Passkey:
`--trials` keys (default 5) per depth (default 0.1,0.3,0.5,0.7,0.9), Wilson intervals, the
library's pooled verdict. The report opens with the issue's goal evaluated from the numbers;
its plots are docs/results-<text>-<ctx>.png (docs/quality-*.png belong to the earlier
measurement, docs/results-2026-11.md).

Every (text, ctx, method, windows) result is cached (JSON, per-position NLL sums, per-window sums:
all the intervals and the paired comparison need) under --cache (default
~/.cache/ropepatch/quality/<model>/v2/); runs are resumable, docs/results.md is rewritten from the
cache after every job and shows only what was measured. Cache entries of version 1 (no
per-position data) are ignored (the log says so) and re-measured when asked for. Every finished
entry is also written to docs/results-data/ (committed, tools/bench_archive.py), which a machine
without the cache reads: a fresh clone reports what earlier machines measured (--no-archive: the
cache only; --archive-cache: copy a cache measured without the archive into it).

Cost on 2 CPU cores (2 threads): one 16k eval of SmolLM2 ~7 min (window ~10), a 32k one roughly 4x
(~25-30 min). `tuned factors`: --budget (default 20 min) per (text, ctx), counted from the
start of the search; the candidate being scored when it runs out finishes, and the first always
runs, so at 16k a 20-min budget scores about 3-4 profiles (the starting ones) and at 32k one:
give 32k a budget of hours to search at all. With --windows > 1 the winner is then scored on
all windows. Passkey, per method: the deepest prefix once, then per depth and trial the prompt
from the key on: with depths 0.1..0.9 and 5 trials that is ~2.5 x 5 = 12.5 prompts' worth of
decoding (~440k tokens at 32k: several hours per method on 2 cores; window only decodes the last
L tokens of the depths it can see). --gpu-layers N offloads to a GPU (a GPU build of llama-cpp-python)
where one is available; the report names the machine, and results must not depend on it.

    python tools/bench_quality.py --ctx 16384 --methods window,yarn,ntk-parts,tuned --budget 20 --no-passkey
    python tools/bench_quality.py --ctx 32768 --texts topics --methods window,ntk,yarn,ntk-parts,tuned --no-passkey
    python tools/bench_quality.py --ctx 32768 --passkey-only --texts topics --methods window,yarn,ntk-parts,tuned
    python tools/bench_quality.py --ctx 16384 --passkey-only --texts topics --methods yarn@3 --depths 0.1
    python tools/bench_quality.py --report-only                 # rewrite docs/results.md from the cache
    python tools/bench_quality.py --model fixtures/tiny-llama-f32.gguf --ctx 256,512 --goal-ctx 256,512 \\
        --budget 0.05 --cache /tmp/bq-cache --out /tmp/bq-out  # a quick check of the tool itself

Jobs run in the order: perplexity (texts x ctx x methods), then tuned, then passkey.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_archive import ARCHIVE  # noqa: E402
from bench_jobs import (  # noqa: E402
    ALL_METHODS,
    DEFAULT_BUDGET,
    DEFAULT_CACHE,
    GOAL_CTX,
    GOAL_DEPTHS,
    TEXTS,
    TUNE_METHODS,
    TUNED,
    Bench,
    log,
    spec_of,
)

from ropepatch.errors import RopepatchError  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.quality import factor_model  # noqa: E402
from ropepatch.quality.specs import WINDOW, MethodSpec, parse_methods  # noqa: E402

# ---- main -----------------------------------------------------------------------------------


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", default="16384,32768", help="comma-separated contexts (default 16384,32768)")
    ap.add_argument("--texts", default=",".join(TEXTS), help=f"comma-separated texts: {', '.join(TEXTS)}")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help=f"comma-separated subset of {', '.join(ALL_METHODS)} (default all); a scaled "
                         "method may take another factor than ctx/L as METHOD@FACTOR (yarn@3 at 16384)")
    ap.add_argument("--tune-methods", default=",".join(TUNE_METHODS),
                    help="methods `tuned` tunes, one row each (default factors; any tunable method)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help=f"minutes for tune --method factors per (text, ctx) (default {DEFAULT_BUDGET:g})")
    ap.add_argument("--windows", type=int, default=1,
                    help="windows per text (1: block intervals, a rough guide; K >= 2: Student t over K)")
    ap.add_argument("--threads", type=int, default=min(2, E.default_threads()))
    ap.add_argument("--batch", type=int, default=E.DEFAULT_N_BATCH)
    ap.add_argument("--gpu-layers", type=int, default=0,
                    help="layers to offload to a GPU (-1: all; needs a GPU build of llama-cpp-python; default 0)")
    ap.add_argument("--no-passkey", action="store_true", help="skip the passkey runs")
    ap.add_argument("--passkey-only", action="store_true", help="only the passkey runs")
    ap.add_argument("--depths", default=",".join(f"{d:g}" for d in GOAL_DEPTHS))
    ap.add_argument("--trials", type=int, default=5, help="passkey keys per depth (default 5)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--goal-ctx", default=",".join(map(str, GOAL_CTX)),
                    help="the goal's two contexts (default 16384,32768)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from the cache")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where results.md and the plots go")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"cache folder (default {DEFAULT_CACHE})")
    ap.add_argument("--archive", default=str(ARCHIVE),
                    help=f"the committed copy of every finished entry (default {ARCHIVE.relative_to(ROOT)}; "
                         f"tools/bench_archive.py)")
    ap.add_argument("--no-archive", action="store_true", help="read and write the cache only (e.g. a quick check)")
    ap.add_argument("--archive-cache", action="store_true",
                    help="copy the cache's complete entries into the archive, then report")
    ap.add_argument("--model", default=None, help="GGUF to use (default: SmolLM2 from tools/get_smollm2.py)")
    a = ap.parse_args(argv)
    a.specs = {}
    a.ctxs = [int(x) for x in _list(a.ctx)]
    a.text_list, a.method_list, a.tune_list = _list(a.texts), _list(a.methods), _list(a.tune_methods)
    for t in a.text_list:
        if t not in TEXTS:
            ap.error(f"--texts: unknown text {t!r}: expected some of {', '.join(TEXTS)}")
    for m in a.method_list:
        name, at, _ = m.partition("@")
        if name not in ALL_METHODS or (at and name in (WINDOW, TUNED)):
            ap.error(f"--methods: unknown method {m!r}: expected some of {', '.join(ALL_METHODS)}, "
                     f"a scaled one optionally as METHOD@FACTOR (e.g. yarn@3)")
        try:
            a.specs[m] = MethodSpec(m, m) if m in (WINDOW, TUNED) else parse_methods([m])[0]
        except RopepatchError as e:
            ap.error(str(e))
    from ropepatch.quality.tune import TUNABLE

    for m in a.tune_list:
        if m not in TUNABLE:
            ap.error(f"--tune-methods: {m!r} is not tunable: expected some of {', '.join(TUNABLE)}")
    if a.windows < 1 or a.trials < 1 or not a.budget > 0:
        ap.error("--windows and --trials: expected >= 1; --budget: expected minutes > 0")
    a.depth_list = [float(x) for x in _list(a.depths)]
    a.goal = [int(x) for x in _list(a.goal_ctx)]
    if len(a.goal) != 2:
        ap.error("--goal-ctx: expected two contexts, e.g. 16384,32768")
    return a


def run_jobs(bench: Bench, a, report) -> None:
    plain = [m for m in a.method_list if m != TUNED]
    if not a.passkey_only:
        for ctx in a.ctxs:
            for text in a.text_list:
                for m in plain:
                    spec = a.specs[m]
                    why = factor_model.refusal(bench.original, ctx, spec.method) if m != WINDOW else None
                    if why:
                        log(f"skipping {m} at {ctx}: {why}")
                        continue
                    bench.eval(text, ctx, spec, a.windows)
                    report()
        if TUNED in a.method_list:
            for ctx in a.ctxs:
                for text in a.text_list:
                    for tm in a.tune_list:
                        t = bench.tuned(text, ctx, tm, a.budget)
                        w = t["result"].get("winner")
                        if w and a.windows > 1:
                            bench.eval(text, ctx, spec_of(w), a.windows)
                        report()
    if a.no_passkey:
        return
    for ctx in a.ctxs:
        jobs = [(a.specs[m], m) for m in plain]
        if TUNED in a.method_list:
            for text in a.text_list:
                for tm in a.tune_list:
                    t = bench.tune_cached(text, ctx, tm)
                    w = t and t["result"].get("winner")
                    if w:
                        jobs.append((spec_of(w), f"tuned {tm} ({text})"))
        for spec, name in jobs:
            bench.passkey(ctx, spec, name, a.depth_list, a.trials, a.seed)
            report()


def main(argv=None) -> int:
    a = parse_args(argv)
    from bench_report import write_report
    from get_smollm2 import smollm2_path

    bench = Bench(a.model or smollm2_path(), a.threads, a.batch, Path(a.cache), a.gpu_layers,
                  None if a.no_archive else Path(a.archive))
    if a.archive_cache and bench.store.archive is not None:
        n = bench.store.archive_all()
        log(f"archived {n} cache entries into {bench.store.archive}")
    out_dir = Path(a.out)
    report_ctxs = sorted(set(a.ctxs) | set(a.goal) | bench.cached_ctxs(a.windows))

    done = [-1]

    def report() -> None:
        """Rewrite the report when something new was measured since the last rewrite."""
        if bench.measured != done[0]:
            done[0] = bench.measured
            write_report(bench, a, list(TEXTS), report_ctxs, out_dir)

    if not (a.report_only or a.archive_cache):
        try:
            with factor_model.scope(bench.model):  # one temporary patched copy serves the whole run
                run_jobs(bench, a, report)
        except RopepatchError as e:
            report()
            print(f"bench_quality: {e}", file=sys.stderr)
            return 2
        finally:
            bench.close()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
