"""The Hugging Face kill harness's oracle (tools/crash_harness_hf.py): validate a model
directory against the plan, classify every file after a kill (old, new, new+prev, or corrupt and
why), and check the two ways out of a kill: re-run the command (then revert), or revert at once."""

from __future__ import annotations

import json
import os
import shutil

from crash_common import run
from crash_hf_model import CONFIG, STRAY, Prepared, blobs_of, content, copy_model, fmt_dir, is_cache, snap, strays

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


def why_bad(path: str) -> str:
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


def is_new_plus_prev(prep: Prepared, path: str) -> bool:
    """True when the shard at ``path`` is the uninterrupted result plus the transient
    ``ropepatch.previous_config_sha256`` entry naming the config.json before the command."""
    from ropepatch.errors import RopepatchError
    from ropepatch.formats.safetensors import pad_header, read_header, with_metadata_text
    from ropepatch.patch.hf import RP_PREVIOUS_CONFIG_SHA256, layout_metadata

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
                why = why_bad(os.path.join(where, name))
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
    rc, _, err = run(fmt_dir(sc.args, d, o))
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
