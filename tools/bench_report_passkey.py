"""The passkey part of docs/results.md (tools/bench_report.py): per ctx the passkey entries of
tools/bench_quality.py's cache merged across runs at some depths, one table row per method with
Wilson intervals, and goal (c) evaluated from them."""

from __future__ import annotations

import dataclasses
import math

from bench_jobs import ALL_METHODS, GOAL_DEPTHS, VERSION

from ropepatch.quality.passkey_results import PASSES, DepthResult, MethodPasskey, PasskeyResult, passkey_verdict
from ropepatch.quality.specs import WINDOW


def passkey_goal(p) -> tuple[str, str]:
    """(met / not met / not measured, figures): some method at >= 80% at every goal depth."""
    if p is None:
        return "not measured", "no passkey run at this ctx with these depths and trials."
    res: PasskeyResult = p[3]
    cands = []
    for name, m in res.methods.items():
        if name == WINDOW:
            continue
        by = {round(d.depth, 6): d for d in m.depths}
        ds = [by.get(round(x, 6)) for x in GOAL_DEPTHS]
        if any(d is None or d.accuracy is None for d in ds):
            continue
        cands.append((min(d.accuracy for d in ds), m.correct / max(m.trials, 1), name, m, ds))
    if not cands:
        part = [partial_note(n, m) for n, m in res.methods.items() if n != WINDOW and m.trials]
        return "not measured", "no method was run at every goal depth." + (" " + " ".join(part) if part else "")
    lo, _, name, m, ds = max(cands, key=lambda c: (c[0], c[1]))
    cells = ", ".join(f"{d.depth:g}: {d.correct}/{d.trials}" for d in ds)
    iv = m.ci
    stat = "" if iv is None else (f"; pooled {m.correct}/{m.trials} [{100 * iv.lo:.0f}%, {100 * iv.hi:.0f}%], "
                                  f"Wilson status `{m.status()}`" + (" (shown >= 80%)" if m.status() == PASSES else ""))
    return ("met" if lo >= 0.8 else "not met"), f"best {name} (point accuracy at each depth): {cells}{stat}."


def _depth(x: dict) -> DepthResult:
    return DepthResult(x["depth"], x["position"], x["visible"], x["trials"], x["correct"], x["accuracy"],
                       x["key_nll"], tuple(x.get("greedy", ())))


def _passkey_entries(bench, ctx: int, a) -> tuple[dict, set, set, dict | None]:
    """Per method, its depth results from every cache entry at ``ctx`` with this run's trials and
    seed whose depths are among this run's (a run at some depths only -- ``--depths 0.5`` -- is
    merged with others; a depth measured twice keeps the later entry's), and the machines and dates."""
    by_method: dict[str, dict[float, DepthResult]] = {}
    params, machines, dates, first = {}, set(), set(), None
    found = [(p, bench.store.read(p)) for p in bench.store.paths(f"passkey-{ctx}-*.json")]
    for _p, d in sorted(found, key=lambda e: ((e[1] or {}).get("date", ""), e[0].stat().st_mtime)):
        if not d:
            continue
        k = d["key"]
        if [k.get(x) for x in ("version", "trials", "seed")] != [VERSION, a.trials, a.seed] or \
                not set(k.get("depths", ())) <= set(a.depth_list):
            continue
        for label, mj in d["result"]["methods"].items():
            name = WINDOW if label == WINDOW else d.get("name", label)
            params[name] = mj["params"]
            by_method.setdefault(name, {}).update({round(x["depth"], 6): _depth(x) for x in mj["depths"]})
        machines.add(d["machine"])
        dates.add(d["date"])
        first = first or d["result"]
    methods = {n: MethodPasskey(n, params[n], tuple(v[k] for k in sorted(v))) for n, v in by_method.items()}
    return methods, machines, dates, first


def _is_partial(m: MethodPasskey, depths) -> bool:
    return {round(x.depth, 6) for x in m.depths} != {round(x, 6) for x in depths}


def _passkey_row(name: str, m: MethodPasskey, depths) -> str:
    by = {round(x.depth, 6): x for x in m.depths}
    cells = []
    for d in depths:
        x = by.get(round(d, 6))
        cells.append("not measured" if x is None else "not in view" if x.accuracy is None
                     else f"{x.correct}/{x.trials} {_pct(x.ci)} (NLL {x.key_nll:.2f})")
    overall = f"{m.correct}/{m.trials} {_pct(m.ci)}" if m.trials else "–"
    status = "(baseline)" if name == WINDOW else m.status()
    if name != WINDOW and _is_partial(m, depths) and status != "fails":
        status = f"partial ({len(m.depths)} of {len(depths)} depths)"
    return f"| {name} | " + " | ".join(cells) + f" | {overall} | {status} |"


def partial_note(name: str, m: MethodPasskey) -> str:
    """One line on a method measured at some depths only."""
    cells = ", ".join(f"{x.depth:g}: {x.correct}/{x.trials} {_pct(x.ci)}" for x in m.depths if x.accuracy is not None)
    end = (" -- below 80% there with 95% confidence, so it cannot pass" if m.status() == "fails"
           else " -- the other depths are not measured yet")
    return f"{name}: measured at depth {cells} only{end}."


def passkey_tables(bench, ctx: int, a):
    """(lines, machines, dates, PasskeyResult) of the passkey entries measured with this run's
    trials and seed at ctx, at this run's depths or some of them; None when there are none."""
    methods, machines, dates, first = _passkey_entries(bench, ctx, a)
    if not methods:
        return None
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    methods = dict(sorted(methods.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    res = PasskeyResult(first["model"], first["n_ctx_train"], ctx, first["tokens"], a.trials, a.seed,
                        tuple(first["keys"]), methods, 0.0, 0.0, 0)
    depths = a.depth_list
    lines = [f"## Passkey retrieval, ctx {ctx}", "",
             f"A random 5-digit key stated once at the given depth of about {ctx} tokens of filler, asked for at "
             f"the end; correct = greedy decoding gives exactly the key (teacher-forced argmax at each answer "
             f"token). {a.trials} keys per depth (seed {a.seed}), the same for every method; `[a-b%]`: 95% Wilson "
             f"interval; `overall` pools the depths a method can see (window sees only the last L tokens: "
             f"`not in view`) and was measured at; status: `passes` = pooled interval >= 80% and no depth below, "
             f"`fails` = below 80% (at one depth suffices), `undecided` = more trials would decide, `partial` = "
             f"not every depth measured yet.", "",
             "| method | " + " | ".join(f"depth {d:g}" for d in depths) + " | overall | status |",
             "|---|" + "---|" * (len(depths) + 2)]
    lines += [_passkey_row(name, m, depths) for name, m in methods.items()]
    whole = {n: m for n, m in methods.items() if not _is_partial(m, depths) or n == WINDOW}
    if len(whole) > (WINDOW in whole):
        lines += ["", passkey_verdict(dataclasses.replace(res, methods=whole))]
    notes = [partial_note(n, m) for n, m in methods.items() if n != WINDOW and _is_partial(m, depths)]
    lines += [""] + notes if notes else []
    return lines + [""], machines, dates, res


def _pct(iv) -> str:
    if iv is None:
        return ""
    return f"[{math.floor(100 * iv.lo + 1e-9):.0f}-{math.ceil(100 * iv.hi - 1e-9):.0f}%]"
