#!/usr/bin/env python3
"""What running llama.cpp in a separate worker process costs, measured side by side in one run.

For each model and each repetition, interleaved so both see the same machine state, it times as
fresh processes (what a user's command pays):

  in-process   python -c "validate(F)" / "evaluate(F, ...)" (eval: the fixture only)  (the library
               call, llama.cpp in the same process, as before the worker existed)
  isolated     python -c "validate_isolated(F)" / "evaluate_isolated(F, ...)"  (what the CLI runs
               now: the worker is spawned, imports llama_cpp first, streams the result back)

and reports medians, the difference (the isolation overhead per command) and the ratio. It also
reports the worker's start-up: seconds from spawn to its first event.

    python tools/bench_isolation.py --reps 5 --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

TEXT = os.path.join(ROOT, "README.md")
JOBS = {
    "validate": ("from ropepatch.check.validate import validate as f; f({path!r})",
                 "from ropepatch.check.isolated import validate_isolated as f; f({path!r})"),
    "eval": ("from ropepatch.quality.evaluate import evaluate as f; f({path!r}, {ctx}, open({text!r}).read(), "
             "methods='ntk', window=False, max_windows=1)",
             "from ropepatch.quality.isolated import evaluate_isolated as f; f({path!r}, {ctx}, "
             "open({text!r}).read(), methods='ntk', window=False, max_windows=1)"),
}


def timed(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def startup(reps: int) -> float:
    """Median seconds from spawning the worker to its first event (a trivial job)."""
    from ropepatch.runtime.isolate import Job, Outcome, run_isolated

    out = []
    for _ in range(reps):
        o = Outcome()
        run_isolated(Job("ropepatch.runtime.isolate:device_label", (0,), callbacks=()), file="-", outcome=o)
        out.append(time.perf_counter() - o.started)
    return statistics.median(out)


def bench(models: list[tuple[str, str, int, tuple[str, ...]]], reps: int) -> list[dict]:
    rows = []
    for label, path, ctx, jobs in models:
        for job in jobs:
            inproc, isolated = JOBS[job]
            a, b = [], []
            for _ in range(reps):
                kw = {"path": path, "ctx": ctx, "text": TEXT}
                a.append(timed(inproc.format(**kw)))
                b.append(timed(isolated.format(**kw)))
            ma, mb = statistics.median(a), statistics.median(b)
            rows.append({"model": label, "job": job, "in": ma, "iso": mb, "min_in": min(a), "min_iso": min(b)})
            print(f"{label:28} {job:9} in-process {ma:6.2f} s  isolated {mb:6.2f} s  "
                  f"overhead {mb - ma:+.2f} s ({mb / ma:.2f}x)", flush=True)
    return rows


def markdown(rows: list[dict], reps: int, start: float) -> str:
    import llama_cpp

    lines = [
        "## Runtime isolation overhead (validate / eval in a worker process)",
        "",
        f"`python tools/bench_isolation.py --reps {reps}`: each job as a fresh process, in-process and "
        "isolated interleaved, median of "
        f"{reps}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, llama-cpp-python {llama_cpp.__version__} (CPU build). The worker's "
        f"start-up (spawn to first event, trivial job) is {start:.2f} s: mostly `import llama_cpp` "
        "(numpy, jinja2), which the parent no longer does.",
        "",
        "| model | job | in-process (s) | isolated (s) | overhead (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['job']} | {r['in']:.2f} | {r['iso']:.2f} | "
                     f"{r['iso'] - r['in']:+.2f} | {r['iso'] / r['in']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-smollm2", action="store_true", help="only the bundled fixture")
    ap.add_argument("--md", help="replace this section of a markdown file (e.g. docs/benchmarks.md)")
    args = ap.parse_args()
    models = [("tiny-llama-f32 (fixture)", os.path.join(ROOT, "fixtures", "tiny-llama-f32.gguf"), 256,
               ("validate", "eval"))]
    if not args.no_smollm2:
        from get_smollm2 import smollm2_path

        # validate only: eval at ctx > 8192 scores 16k tokens, seconds of work that hide the overhead
        models.append(("SmolLM2-135M Q4_1", smollm2_path(), 16384, ("validate",)))
    start = startup(args.reps)
    print(f"worker start-up: {start:.2f} s")
    md = markdown(bench(models, args.reps), args.reps, start)
    if args.md:
        replace_section(args.md, md)
    else:
        print(md)
    return 0


def replace_section(path: str, md: str) -> None:
    """Put ``md`` (starting with its ``## `` heading) in place of the section of that name."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    head = md.split("\n", 1)[0]
    if head in text:
        before, rest = text.split(head, 1)
        nxt = rest.find("\n## ")
        text = before + md + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + md
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
