#!/usr/bin/env python3
"""Kill harness for Hugging Face writes: kill -9 a real ``python -m ropepatch hf`` / ``revert`` at
every file-changing step and check every file of the model after each kill.

The GGUF harness (tools/crash_harness.py) does the same for one file; an HF patch writes several
files (every safetensors shard, then config.json; ``revert`` writes config.json first, then the
shards), so the state after a kill is judged per file and then for the model as a whole.

How a run is stopped: the ``ROPEPATCH_CRASH_AFTER=N`` hook in ropepatch/safeio/files.py makes the child
SIGKILL itself right after its Nth file-changing step (temp file created, pwrite, kernel copy
chunk, truncate, chmod, fsync, rename, directory fsync, and the ``-o`` staging steps in
ropepatch/patch/hf_out.py). For each scenario the harness runs N = 1, 2, ... until the command
completes, so every step boundary is hit once; ``--random K`` adds K kills at random times sent
from the parent.

After each kill, every file (config.json, each shard, the index) is compared with the state
before the command and with the result of the same command run without interruption:

* ``original``: every file is as before the command;
* ``patched``: every file is the uninterrupted result;
* ``mixed``: every file is one of the two, but not all the same one (for example the shard
  already carries the new metadata and config.json is still the old one). A re-patch has one
  more per-file state by design: it writes the shards first with an extra
  ``ropepatch.previous_config_sha256`` entry (the sha256 of the config.json being replaced),
  then config.json, then the shards without it. A shard whose bytes are exactly the
  uninterrupted result plus that entry (naming the old config.json's sha256) is counted as
  ``new+prev`` and its model as ``mixed``;
* ``corrupt``: some file is neither (its safetensors header or JSON is checked to say why), a
  file is missing or extra, or the input of a ``-o`` run changed.

Then what a user does after a crash: the same command is run again. It must succeed and leave
every file byte-identical to the uninterrupted result, with no ``.ropepatch-*`` temp file or
directory left; where the kill left the complete result, a clean one-line refusal that says so
(``nothing to revert``, ``-o`` directory ``not empty``) also counts. After a patch, ``revert``
(revert_hf, what ``ropepatch revert DIR`` calls) must then restore the pristine bytes of every
file. A kill counts as ``recovered`` when all of that holds. For the in-place patch scenarios the
other way out is tried too, on a copy of the killed state: ``revert`` straight away must give the
pristine bytes (``revert ok``).

Each distinct result (and each re-patch's starting state) is validated once: ``safe_open``
reads every tensor and it equals the pristine tensor, config.json's ``rope_scaling``,
``rope_theta`` and ``max_position_embeddings`` equal ``plan_hf`` + ``plan_hf_snippets`` on the
pristine model, and ``inspect_hf`` reports the method and context.

Models: ``fixtures/hf/tiny-llama`` (one shard), the same tensors split into two shards with
an index (built here), so kills between two shards' writes are tried too, and the fixture laid
out as a Hugging Face cache snapshot (``snapshots/rev/config.json -> ../../blobs/<sha>``, the
shard likewise), so kills while patch replaces the symlinks with regular files and while revert
puts them back are tried too (issue 12): the shared blobs must never change, and after a revert
every symlink must be back, pointing where it did.

Usage::

    python tools/crash_harness_hf.py                   # every scenario, both models
    python tools/crash_harness_hf.py --quick           # one model, 3 scenarios (what CI runs)
    python tools/crash_harness_hf.py --random 10 --seed 1 --json out.json
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from crash_harness import cli, run, run_setup, run_timed, sha256  # noqa: E402

FIXTURE = ROOT / "fixtures" / "hf" / "tiny-llama"
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
STRAY = ".ropepatch-"  # temp files (safeio.files), -o staging directories, symlink temps


# ---- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """``setup`` commands make the state before ``args``; ``{d}`` is the model directory, ``{o}``
    an output directory next to it. ``expect``: ("patch", ctx, method) or ("pristine",).
    ``done``: the one-line refusal a re-run may give when the kill left the complete result."""

    name: str
    setup: tuple[tuple[str, ...], ...]
    args: tuple[str, ...]
    expect: tuple
    output: bool = False
    done: str | None = None


def _hf(ctx, method, *more):
    return ("hf", "{d}", "--ctx", str(ctx), "--method", method, *more)


REVERT = ("revert", "{d}")
SCENARIOS = [
    Scenario("first patch (in place)", (), _hf(1024, "yarn"), ("patch", 1024, "yarn")),
    Scenario("first patch to a copy (-o)", (), _hf(2048, "ntk", "-o", "{o}"), ("patch", 2048, "ntk"),
             output=True, done="directory is not empty"),
    Scenario("re-patch yarn->ntk (in place)", (_hf(1024, "yarn"),), _hf(2048, "ntk"), ("patch", 2048, "ntk")),
    Scenario("re-patch yarn->yarn (new ctx)", (_hf(1024, "yarn"),), _hf(4096, "yarn"), ("patch", 4096, "yarn")),
    Scenario("re-patch ntk->linear", (_hf(2048, "ntk"),), _hf(1024, "linear"), ("patch", 1024, "linear")),
    Scenario("revert", (_hf(1024, "yarn"),), REVERT, ("pristine",), done="nothing to revert"),
    Scenario("revert after a re-patch", (_hf(1024, "yarn"), _hf(2048, "ntk")), REVERT, ("pristine",),
             done="nothing to revert"),
]
QUICK_SCENARIOS = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[5]]
MODELS = ["tiny-llama", "tiny-llama-2-shards", "tiny-llama-hf-cache"]


def _fmt(args, d, o) -> list[str]:
    return [a.format(d=d, o=o) for a in args]


# ---- files --------------------------------------------------------------------------------


def snap(d: str) -> dict[str, str]:
    """sha256 of every file in the (flat) model directory, ropepatch temp entries excluded; a
    symlink is ``"<sha256 of what it points to>-><target>"``."""
    if not os.path.isdir(d):
        return {}
    out = {}
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        if n.startswith(STRAY) or not os.path.isfile(p):
            continue
        out[n] = sha256(p) + (f"->{os.readlink(p)}" if os.path.islink(p) else "")
    return out


def content(snapshot: dict[str, str]) -> dict[str, str]:
    """:func:`snap` without the link targets: the bytes each name reads as."""
    return {n: v.split("->", 1)[0] for n, v in snapshot.items()}


def is_cache(d: str) -> bool:
    """True for a model directory laid out as a Hugging Face cache snapshot."""
    return os.path.basename(os.path.dirname(os.path.abspath(d))) == "snapshots"


def blobs_of(d: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(d))), "blobs")


def copy_model(src: str, dst: str, ignore=None) -> str:
    """Copy the model directory ``src`` to ``dst``; a cache snapshot is copied with its whole
    cache (blobs and relative symlinks kept). Returns the copy's model directory."""
    if not is_cache(src):
        shutil.copytree(src, dst, ignore=ignore)
        return dst
    cache = os.path.dirname(os.path.dirname(os.path.abspath(src)))
    shutil.copytree(cache, dst, symlinks=True, ignore=ignore)
    return os.path.join(dst, os.path.relpath(os.path.abspath(src), cache))


def strays(*dirs: str) -> list[str]:
    out = []
    for d in dirs:
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.startswith(STRAY)]
    return out


def make_models(work: str) -> dict[str, str]:
    """The pristine model directories: the fixture, and its tensors split into 2 shards."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    one = os.path.join(work, "pristine", MODELS[0])
    shutil.copytree(FIXTURE, one)
    two = os.path.join(work, "pristine", MODELS[1])
    os.makedirs(two)
    shutil.copyfile(FIXTURE / CONFIG, os.path.join(two, CONFIG))
    with safe_open(str(FIXTURE / "model.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    names, wm = sorted(tensors), {}
    for i in range(2):
        fn = f"model-{i + 1:05d}-of-00002.safetensors"
        part = {n: tensors[n] for n in names[i::2]}
        save_file(part, os.path.join(two, fn), metadata=meta)
        wm.update({n: fn for n in part})
    with open(os.path.join(two, INDEX), "w") as fh:
        json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": wm}, fh, indent=2)
    cache = os.path.join(work, "pristine", MODELS[2])
    snapshot = os.path.join(cache, "snapshots", "rev")
    os.makedirs(os.path.join(cache, "blobs"))
    os.makedirs(snapshot)
    for name in (CONFIG, "model.safetensors"):
        blob = sha256(FIXTURE / name)
        shutil.copyfile(FIXTURE / name, os.path.join(cache, "blobs", blob))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    return {MODELS[0]: one, MODELS[1]: two, MODELS[2]: snapshot}


# ---- validation ---------------------------------------------------------------------------

_valid: dict[tuple, str | None] = {}


def validate(d: str, expect: tuple, pristine: str) -> str | None:
    """None when the model directory ``d`` is a complete, valid result of ``expect``."""
    key = (tuple(sorted(snap(d).items())), expect, pristine)
    if key not in _valid:
        _valid[key] = _validate(d, expect, pristine)
    return _valid[key]


def _validate(d: str, expect: tuple, pristine: str) -> str | None:
    import numpy as np
    from safetensors import safe_open

    from ropepatch.errors import RopepatchError
    from ropepatch.patch.hf import inspect_hf, plan_hf, plan_hf_snippets, resolve_model

    if expect[0] == "pristine":
        return None if snap(d) == snap(pristine) else "not the pristine bytes"
    _, ctx, method = expect
    try:
        model, ref = resolve_model(d), resolve_model(pristine)
        info = inspect_hf(d)
    except RopepatchError as e:
        return f"unreadable: {e}"
    ref_tensors = {}
    for s in ref.shards:
        with safe_open(s, framework="numpy") as f:
            ref_tensors.update({k: f.get_tensor(k) for k in f.keys()})
    got = {}
    try:
        for s in model.shards:
            with safe_open(s, framework="numpy") as f:
                got.update({k: f.get_tensor(k) for k in f.keys()})
    except Exception as e:  # noqa: BLE001 - any load failure is the finding
        return f"safetensors cannot read it: {e}"
    if sorted(got) != sorted(ref_tensors) or not all(np.array_equal(got[k], ref_tensors[k]) for k in got):
        return "tensors differ from the pristine model"
    snip = plan_hf_snippets(plan_hf(pristine, ctx, method))
    with open(model.config_path) as f:
        cfg = json.load(f)
    for k in ("rope_scaling", "rope_theta", "max_position_embeddings"):
        if cfg.get(k) != snip[k]:
            return f"config.json {k} = {cfg.get(k)!r}, plan says {snip[k]!r}"
    if not info.patched or info.record["method"] != method or info.record["ctx"] != ctx:
        return f"inspect reports {info.record}, expected {method} {ctx}"
    return None


def _why_bad(path: str) -> str:
    from ropepatch.errors import RopepatchError
    from ropepatch.formats.safetensors import read_header

    name = os.path.basename(path)
    if not os.path.exists(path):
        return f"{name} missing"
    if name.endswith(".json"):
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            return f"{name}: invalid JSON ({e})"
        return f"{name}: valid JSON but neither the old nor the new bytes"
    try:
        read_header(path)
    except RopepatchError as e:
        return f"{name}: {e}"
    return f"{name}: readable header but neither the old nor the new bytes"


# ---- the kill matrix ----------------------------------------------------------------------

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

    def add(self, o: "Counts") -> None:
        for k in FIELDS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        for k, v in o.mixed_kinds.items():
            self.mixed_kinds[k] = self.mixed_kinds.get(k, 0) + v
        self.problems += o.problems

    def row(self) -> dict:
        return {**{k: getattr(self, k) for k in FIELDS}, "mixed_kinds": dict(self.mixed_kinds)}


@dataclass
class Prepared:
    scenario: Scenario
    model: str
    pristine: str  # the pristine model directory
    pre_dir: str  # the model directory before the command
    pre: dict  # snap(pre_dir)
    post: dict  # snap of the uninterrupted result (the model dir, or the -o dir)
    post_dir: str  # a copy of that result
    seconds: float = 0.0
    steps: int = 0


def prepare(sc: Scenario, model: str, pristine: str, work: str) -> Prepared:
    base = tempfile.mkdtemp(prefix="prep-", dir=work)
    d = copy_model(pristine, os.path.join(base, "m"))
    run_setup(sc, d, model, _fmt)
    if sc.setup:  # a re-patch or revert starts from a patched model: validate it too
        problem = validate(d, ("patch", int(sc.setup[-1][3]), sc.setup[-1][5]), pristine)
        assert problem is None, f"{model} / {sc.name}: setup result invalid: {problem}"
    pre_dir = copy_model(d, os.path.join(base, "pre"))
    o = os.path.join(base, "out")
    secs = run_timed(sc, d, o, model, _fmt)
    target = o if sc.output else d
    problem = validate(target, sc.expect, pristine)
    assert problem is None, f"{model} / {sc.name}: uninterrupted result invalid: {problem}"
    if sc.output:
        assert snap(d) == snap(pre_dir), f"{model} / {sc.name}: -o changed the input"
    post_dir = copy_model(target, os.path.join(base, "post"))
    return Prepared(sc, model, pristine, pre_dir, snap(pre_dir), snap(target), post_dir, secs)


def is_new_plus_prev(prep: Prepared, path: str) -> bool:
    """True when the shard at ``path`` is the uninterrupted result plus the transient
    ``ropepatch.previous_config_sha256`` entry naming the config.json before the command."""
    from ropepatch.errors import RopepatchError
    from ropepatch.patch.hf import RP_PREVIOUS_CONFIG_SHA256, layout_metadata
    from ropepatch.formats.safetensors import pad_header, read_header, with_metadata_text

    name = os.path.basename(path)
    if not name.endswith(".safetensors") or name not in prep.post or CONFIG not in prep.pre:
        return False
    try:
        h = read_header(path)
    except RopepatchError:
        return False
    meta = dict(h.metadata or {})
    if meta.pop(RP_PREVIOUS_CONFIG_SHA256, None) != content(prep.pre)[CONFIG]:
        return False
    header = pad_header(with_metadata_text(h, layout_metadata(meta)), h.header_length)
    with open(path, "rb") as f:
        f.seek(h.data_offset)
        data = f.read()
    with open(os.path.join(prep.post_dir, name), "rb") as f:
        return f.read() == len(header).to_bytes(8, "little") + header + data


def classify(prep: Prepared, d: str, o: str) -> tuple[str, str | None, str | None]:
    """(state, what is wrong for corrupt, mixed kind) of the files after a kill."""
    sc = prep.scenario
    if is_cache(d) and snap(blobs_of(d)) != snap(blobs_of(prep.pristine)):
        return "corrupt", "a shared blob changed (written through a symlink)", None
    if sc.output:
        if snap(d) != prep.pre:
            return "corrupt", "the input model changed", None
        before, after, cur, where = {}, prep.post, snap(o), o
    else:
        before, after, cur, where = prep.pre, prep.post, snap(d), d
    sides: dict[str, str] = {}
    for name in sorted(set(before) | set(after) | set(cur)):
        c, b, a = cur.get(name), before.get(name), after.get(name)
        if c == b and c == a:
            continue  # not changed by the command (e.g. the index)
        if c == b:
            sides[name] = "absent" if sc.output else "old"
        elif c == a:
            sides[name] = "new"
        elif not sc.output and is_new_plus_prev(prep, os.path.join(d, name)):
            sides[name] = "new+prev"
        else:
            if c is None or (b is None and a is None):
                why = f"{name} {'missing' if c is None else 'unexpected'}"
            else:
                why = _why_bad(os.path.join(where, name))
            return "corrupt", why, None
    kinds = set(sides.values())
    if kinds <= {"old", "absent"} and sides:
        return "original", None, None
    if kinds <= {"new"}:
        return "patched", None, None
    cfg = sides.get(CONFIG, "unchanged")
    shards = [v for n, v in sorted(sides.items()) if n.endswith(".safetensors")]
    kind = f"config.json {cfg}, shards {'/'.join(shards)}"
    others = [f"{n} {v}" for n, v in sorted(sides.items()) if n != CONFIG and not n.endswith(".safetensors")]
    return "mixed", None, ", ".join([kind, *others])


def recover(prep: Prepared, state: str, d: str, o: str, base: str) -> str | None:
    """Re-run the command, then revert (after a patch); None when all is as it should be."""
    sc = prep.scenario
    target = o if sc.output else d
    rc, _, err = run(_fmt(sc.args, d, o))
    left = strays(d, o, base)
    line = err.strip().splitlines()[-1] if err.strip() else ""
    refused_done = (state == "patched" and sc.done and rc == 2 and len(err.strip().splitlines()) == 1
                    and sc.done in line)
    if not (rc == 0 or refused_done):
        return f"re-run rc={rc}: {line[:300]}"
    if snap(target) != prep.post:
        return "re-run did not give the uninterrupted result"
    if sc.output and snap(d) != prep.pre:
        return "re-run changed the input"
    if left:
        return f"re-run left {[os.path.relpath(p, base) for p in left]}"
    if sc.expect[0] != "patch":
        return None
    from ropepatch.errors import RopepatchError
    from ropepatch.patch.hf import revert_hf

    try:
        revert_hf(target)
    except RopepatchError as e:
        return f"revert after the re-run failed: {e}"
    want = snap(prep.pristine)  # the -o copy holds config.json, the shards and a copy of the index
    if sc.output:  # a copy holds regular files where the input had links
        want = content(want)
    if (content(snap(target)) if sc.output else snap(target)) != want:
        bad = sorted(n for n in set(want) | set(snap(target)) if snap(target).get(n) != want.get(n))
        return f"revert after the re-run did not restore the pristine bytes of {bad}"
    if strays(d, o, base):
        return f"revert left {strays(d, o, base)}"
    if is_cache(d) and snap(blobs_of(d)) != snap(blobs_of(prep.pristine)):
        return "a shared blob changed (written through a symlink)"
    return None


def revert_now(prep: Prepared, d: str, base: str) -> str | None:
    """``revert`` straight after the kill (instead of the re-run), on a copy of the state."""
    from ropepatch.errors import NotPatchedError, RopepatchError
    from ropepatch.patch.hf import revert_hf

    top = os.path.join(base, "revert-now")
    cp = copy_model(d, top, ignore=shutil.ignore_patterns(STRAY + "*"))
    try:
        revert_hf(cp)
    except NotPatchedError:
        pass  # a first patch killed before any shard carried a record: nothing to undo
    except RopepatchError as e:
        return f"revert right after the kill failed: {e}"
    finally:
        left = snap(cp)
        shutil.rmtree(top, ignore_errors=True)
    if left != snap(prep.pristine):
        return "revert right after the kill did not restore the pristine bytes"
    return None


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


def _fresh(prep: Prepared, work: str, prefix: str) -> tuple[str, str, str]:
    base = tempfile.mkdtemp(prefix=prefix, dir=work)
    d = copy_model(prep.pre_dir, os.path.join(base, "m"))
    return base, d, os.path.join(base, "out")


def kill_at_step(prep: Prepared, n: int, work: str) -> tuple[Counts, bool]:
    """Run the command with ROPEPATCH_CRASH_AFTER=n: (counts, whether the kill happened)."""
    c = Counts()
    base, d, o = _fresh(prep, work, "kill-")
    try:
        rc, _, err = run(_fmt(prep.scenario.args, d, o), crash_after=n)
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
    base, d, o = _fresh(prep, work, "killt-")
    try:
        p = cli(_fmt(prep.scenario.args, d, o))
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
        p.communicate()
        if p.returncode == -signal.SIGKILL:
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
                n, done = 1, False
                while not done:  # every step boundary, `jobs` at a time, until the run completes
                    for cc, killed in ex.map(lambda k: kill_at_step(prep, k, work), range(n, n + jobs)):
                        c.add(cc)
                        done = done or not killed
                    n += jobs
                prep.steps = c.kills
                delays = [rng.uniform(0.3, 1.1) * prep.seconds for _ in range(random_kills)]
                for cc in ex.map(lambda t: kill_at_time(prep, t, work), delays):
                    c.add(cc)
                rows.append({"model": model, "scenario": sc.name, "steps": prep.steps, **c.row()})
                log(f"  {model:20} {sc.name:30} steps {prep.steps:2}  kills {c.kills:3}  original {c.original:3}  "
                    f"patched {c.patched:3}  mixed {c.mixed:3}  corrupt {c.corrupt}  recovered {c.recovered:3}/{c.kills}"
                    + (f"  revert ok {c.revert_ok}/{c.revert_tried}" if c.revert_tried else ""))
                for p in c.problems:
                    log(f"    ! {p}")
                total.add(c)
                shutil.rmtree(os.path.join(work, os.path.relpath(prep.pre_dir, work).split(os.sep)[0]),
                              ignore_errors=True)
    return total, rows


def table(rows: list[dict], total: Counts) -> str:
    head = "| model | scenario | steps | kills | original | patched | mixed | corrupt | recovered | revert ok | temp left |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rv = f"{r['revert_ok']}/{r['revert_tried']}" if r["revert_tried"] else "-"
        lines.append(f"| {r['model']} | {r['scenario']} | {r['steps']} | {r['kills']} | {r['original']} | {r['patched']} | "
                     f"{r['mixed']} | {r['corrupt']} | {r['recovered']}/{r['kills']} | {rv} | {r['temps_left']} |")
    t = total
    lines.append(f"| **total** | | {sum(r['steps'] for r in rows)} | {t.kills} | {t.original} | {t.patched} | {t.mixed} | "
                 f"{t.corrupt} | {t.recovered}/{t.kills} | {t.revert_ok}/{t.revert_tried} | {t.temps_left} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one model, 3 scenarios (the CI slice)")
    ap.add_argument("--random", type=int, default=0, help="extra kills at random times per scenario and model")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)
    models = MODELS[:1] if args.quick else MODELS
    scenarios = QUICK_SCENARIOS if args.quick else SCENARIOS
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ropepatch-crash-hf-")
    try:
        print(f"kill -9 at every write step ({len(models)} models x {len(scenarios)} scenarios, "
              f"+{args.random} random-time kills each)")
        total, rows = kill_matrix(models, scenarios, work, args.random, args.jobs, args.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = time.monotonic() - t0
    print()
    print(table(rows, total))
    if total.mixed_kinds:
        print("\nmixed states: " + "; ".join(f"{k}: {v}" for k, v in sorted(total.mixed_kinds.items())))
    print(f"\nkills {total.kills}, original {total.original}, patched {total.patched}, mixed {total.mixed}, "
          f"corrupt {total.corrupt}, recovered {total.recovered}/{total.kills}; {secs:.0f} s")
    if args.json:
        report = {"command": "python tools/crash_harness_hf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "totals": total.row(), "rows": rows, "problems": total.problems, "seconds": round(secs, 1)}
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    bad = (total.corrupt or total.recovered != total.kills or total.revert_ok != total.revert_tried
           or total.problems or not total.kills)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
