#!/usr/bin/env python3
"""The GPU check of issue #11, as one script for a machine with a CUDA build of llama-cpp-python
(see ../shared/gpu/README.md: `bash .gpu/run.sh python tools/gpu_check.py`).

It runs the real CLI, as a user would, and writes a markdown report (stdout, and
$OUT/gpu_check.md when $OUT is set):

1. the build: llama-cpp-python version, llama_supports_gpu_offload;
2. `ropepatch validate` of every GGUF fixture, unpatched and patched with every method to
   512 tokens, with --gpu-layers -1 and 0 (exit status, per-check status, device, seconds);
3. that llama.cpp reports the layers offloaded (ROPEPATCH_WORKER_LOG=1, "offloaded N/N layers");
4. `ropepatch eval` on the same text with --gpu-layers -1 and 0: per-bucket perplexity, the
   largest relative difference (target: within 1%);
5. with --suite, the whole test suite (`python -m pytest -q`), last lines.

    python tools/gpu_check.py [--suite] [--fixtures a.gguf,b.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = ["tiny-llama-f32.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen2-q8_0.gguf"]
METHODS = ["ntk", "dynamic", "linear", "yarn", "none"]
CTX = 512


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "ropepatch", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def build_info() -> list[str]:
    code = ("import llama_cpp; llama_cpp.llama_backend_init(); "
            "print(llama_cpp.__version__, bool(llama_cpp.llama_supports_gpu_offload()))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return [f"- build: `{p.stdout.strip() or p.stderr.strip()[-300:]}` (version, GPU offload)"]


def validate_matrix(fixtures: list[str], tmp: str) -> list[str]:
    rows = ["| file | method | gpu-layers | exit | checks | device | s |", "|---|---|---|---|---|---|---|"]
    for fx in fixtures:
        for method in ["(unpatched)", *METHODS]:
            path = os.path.join(ROOT, "fixtures", fx)
            if method != "(unpatched)":
                path = os.path.join(tmp, f"{method}-{fx}")
                rc, _, err, _ = cli("gguf", os.path.join(ROOT, "fixtures", fx), "--ctx", str(CTX),
                                    "--method", method, "-o", path, "--json")
                if rc != 0:
                    rows.append(f"| {fx} | {method} | - | patch failed {rc} | {err.strip()[-120:]} | | |")
                    continue
            for layers in ("-1", "0"):
                rc, out, err, s = cli("validate", path, "--gpu-layers", layers, "--json")
                try:
                    rep = json.loads(out)
                    checks = " ".join(f"{c['id']}:{c['status'][:4]}" for c in rep["checks"])
                    device = rep.get("device", "?")
                except (ValueError, KeyError):
                    checks, device = (err.strip().splitlines() or ["no output"])[-1][:160], "?"
                rows.append(f"| {fx} | {method} | {layers} | {rc} | {checks} | {device} | {s:.1f} |")
    return rows


def offload_lines(fixture: str) -> list[str]:
    _, _, err, _ = cli("validate", os.path.join(ROOT, "fixtures", fixture), "--gpu-layers", "-1",
                       env={"ROPEPATCH_WORKER_LOG": "1"})
    found = sorted(set(re.findall(r"offloaded \d+/\d+ layers to GPU", err)))
    return [f"- llama.cpp log with --gpu-layers -1 on {fixture}: {found or 'no offload line (CPU build?)'}"]


def eval_compare(fixture: str) -> list[str]:
    res = {}
    for layers in ("-1", "0"):
        rc, out, err, s = cli("eval", os.path.join(ROOT, "fixtures", fixture), "--ctx", str(CTX), "--text",
                              os.path.join(ROOT, "README.md"), "--methods", "ntk,yarn", "--gpu-layers", layers,
                              "--json", "-q")
        if rc != 0:
            return [f"- eval --gpu-layers {layers} failed ({rc}): {err.strip()[-300:]}"]
        res[layers] = (json.loads(out), s)
    worst, lines = 0.0, []
    gpu, cpu = res["-1"][0], res["0"][0]
    for name, mg in gpu["methods"].items():
        mc = cpu["methods"][name]
        for bg, bc in zip(mg["buckets"], mc["buckets"]):
            if bg.get("ppl") and bc.get("ppl"):
                worst = max(worst, abs(bg["ppl"] / bc["ppl"] - 1))
        lines.append(f"  - {name}: GPU {[b.get('ppl') for b in mg['buckets']]} "
                     f"vs CPU {[b.get('ppl') for b in mc['buckets']]}")
    verdict = "within 1%" if worst <= 0.01 else "OVER 1%"
    return [f"- eval {fixture} ctx {CTX} on README.md, per-bucket perplexity GPU vs CPU: largest relative "
            f"difference {worst:.2e} ({verdict}); {res['-1'][1]:.1f} s GPU, {res['0'][1]:.1f} s CPU", *lines]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", action="store_true", help="also run the whole test suite")
    ap.add_argument("--fixtures", default=",".join(FIXTURES))
    args = ap.parse_args()
    fixtures = [f for f in args.fixtures.split(",") if f]
    tmp = tempfile.mkdtemp(prefix="rp-gpu-")
    try:
        report = ["# GPU check", "", *build_info(), *offload_lines(fixtures[0]), *eval_compare(fixtures[0]), "",
                  *validate_matrix(fixtures, tmp)]
        if args.suite:
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                               capture_output=True, text=True)
            report += ["", "## test suite", "", "```", *p.stdout.strip().splitlines()[-15:], "```"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(report) + "\n"
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
