"""The Hugging Face kill matrix (tools/crash_harness_hf.py): kill -9 ``ropepatch hf`` /
``revert`` at every write step and at random times, classify every file of the model after each
kill, try the ways out of it, and count."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from crash_common import kill_after, kill_every_step_then_random, run, run_setup, run_timed
from crash_hf_classify import classify, recover, revert_now, validate
from crash_hf_model import Prepared, Scenario, copy_model, fmt_dir, make_models, snap, strays

FIELDS = ("kills", "original", "patched", "mixed", "corrupt", "recovered", "temps_left", "revert_tried", "revert_ok")


@dataclass
class Counts:
    kills: int = 0
    original: int = 0
    patched: int = 0
    mixed: int = 0
    corrupt: int = 0
    recovered: int = 0
    temps_left: int = 0  # kills after which a .ropepatch-* temp file or directory remained
    revert_tried: int = 0  # in-place patch kills: revert right after the kill, on a copy
    revert_ok: int = 0
    mixed_kinds: dict = field(default_factory=dict)  # "config old, shards new" -> count
    problems: list = field(default_factory=list)

    def add(self, o: Counts) -> None:
        for k in FIELDS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        for k, v in o.mixed_kinds.items():
            self.mixed_kinds[k] = self.mixed_kinds.get(k, 0) + v
        self.problems += o.problems

    def row(self) -> dict:
        return {**{k: getattr(self, k) for k in FIELDS}, "mixed_kinds": dict(self.mixed_kinds)}


def prepare(sc: Scenario, model: str, pristine: str, work: str) -> Prepared:
    base = tempfile.mkdtemp(prefix="prep-", dir=work)
    d = copy_model(pristine, os.path.join(base, "m"))
    run_setup(sc, d, model, fmt_dir)
    if sc.setup:  # a re-patch or revert starts from a patched model: validate it too
        problem = validate(d, ("patch", int(sc.setup[-1][3]), sc.setup[-1][5]), pristine)
        assert problem is None, f"{model} / {sc.name}: setup result invalid: {problem}"
    pre_dir = copy_model(d, os.path.join(base, "pre"))
    o = os.path.join(base, "out")
    secs = run_timed(sc, d, o, model, fmt_dir)
    target = o if sc.output else d
    problem = validate(target, sc.expect, pristine)
    assert problem is None, f"{model} / {sc.name}: uninterrupted result invalid: {problem}"
    if sc.output:
        assert snap(d) == snap(pre_dir), f"{model} / {sc.name}: -o changed the input"
    post_dir = copy_model(target, os.path.join(base, "post"))
    return Prepared(sc, model, pristine, pre_dir, snap(pre_dir), snap(target), post_dir, secs)


def _after_kill(prep: Prepared, c: Counts, d: str, o: str, base: str, label: str) -> None:
    where = f"{prep.model} / {prep.scenario.name} / {label}"
    c.kills = 1
    state, why, kind = classify(prep, d, o)
    setattr(c, state, getattr(c, state) + 1)
    if kind:
        c.mixed_kinds[kind] = c.mixed_kinds.get(kind, 0) + 1
    if why:
        c.problems.append(f"{where}: corrupt: {why}")
    if strays(d, o, base):
        c.temps_left += 1
    if prep.scenario.expect[0] == "patch" and not prep.scenario.output:
        c.revert_tried += 1
        problem = revert_now(prep, d, base)
        if problem is None:
            c.revert_ok += 1
        else:
            c.problems.append(f"{where}: {state}: {problem}")
    problem = recover(prep, state, d, o, base)
    if problem is None:
        c.recovered += 1
    else:
        c.problems.append(f"{where}: {state}: {problem}")


def fresh_copy(prep: Prepared, work: str, prefix: str) -> tuple[str, str, str]:
    base = tempfile.mkdtemp(prefix=prefix, dir=work)
    d = copy_model(prep.pre_dir, os.path.join(base, "m"))
    return base, d, os.path.join(base, "out")


def kill_at_step(prep: Prepared, n: int, work: str) -> tuple[Counts, bool]:
    """Run the command with ROPEPATCH_CRASH_AFTER=n: (counts, whether the kill happened)."""
    c = Counts()
    base, d, o = fresh_copy(prep, work, "kill-")
    try:
        rc, _, err = run(fmt_dir(prep.scenario.args, d, o), crash_after=n)
        if rc != -signal.SIGKILL:
            target = o if prep.scenario.output else d
            if rc != 0 or snap(target) != prep.post:
                c.problems.append(f"{prep.model} / {prep.scenario.name} / step {n}: completed with rc {rc} "
                                  f"but not the uninterrupted result: {err.strip()[:200]}")
            return c, False
        _after_kill(prep, c, d, o, base, f"kill after step {n}")
        return c, True
    finally:
        shutil.rmtree(base, ignore_errors=True)


def kill_at_time(prep: Prepared, delay: float, work: str) -> Counts:
    c = Counts()
    base, d, o = fresh_copy(prep, work, "killt-")
    try:
        if kill_after(fmt_dir(prep.scenario.args, d, o), delay) == -signal.SIGKILL:
            _after_kill(prep, c, d, o, base, f"kill at {delay * 1000:.0f} ms")
        return c
    finally:
        shutil.rmtree(base, ignore_errors=True)


def kill_matrix(models, scenarios, work: str, random_kills: int = 0, jobs: int = 2, seed: int = 0,
                log=print) -> tuple[Counts, list[dict]]:
    log = log or (lambda *a: None)
    pristine = make_models(work)
    total, rows = Counts(), []
    rng = random.Random(seed)
    with ThreadPoolExecutor(jobs) as ex:
        for model in models:
            for sc in scenarios:
                prep = prepare(sc, model, pristine[model], work)
                c = Counts()
                # every step boundary, `jobs` at a time, until the run completes; then random times
                prep.steps = kill_every_step_then_random(ex, jobs, c, partial(kill_at_step, prep, work=work),
                                                         partial(kill_at_time, prep, work=work), rng, prep.seconds,
                                                         random_kills)
                rows.append({"model": model, "scenario": sc.name, "steps": prep.steps, **c.row()})
                log(f"  {model:20} {sc.name:30} steps {prep.steps:2}  kills {c.kills:3}  original {c.original:3}  "
                    f"patched {c.patched:3}  mixed {c.mixed:3}  corrupt {c.corrupt}  "
                    f"recovered {c.recovered:3}/{c.kills}"
                    + (f"  revert ok {c.revert_ok}/{c.revert_tried}" if c.revert_tried else ""))
                for p in c.problems:
                    log(f"    ! {p}")
                total.add(c)
                shutil.rmtree(os.path.join(work, os.path.relpath(prep.pre_dir, work).split(os.sep)[0]),
                              ignore_errors=True)
    return total, rows
