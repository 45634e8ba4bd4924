"""tools/bench_quality.py's jobs: the texts, the cache keys and entries, and the Bench that runs
one perplexity eval, tune or passkey job (each cached, and archived in docs/results-data/ when
finished). The script (bench_quality.py) parses the command line and runs the jobs; the report
(bench_report.py) reads what they left in the cache."""

from __future__ import annotations

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

import numpy as np  # noqa: E402
from bench_archive import Store, method_from_cache, method_to_cache  # noqa: E402

from ropepatch.patch.gguf import inspect_gguf  # noqa: E402
from ropepatch.quality import evaluate as E  # noqa: E402
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
