"""The Hugging Face kill harness's models and scenarios (tools/crash_harness_hf.py): the
pristine model directories (one shard, two shards with an index, a Hugging Face cache snapshot),
the commands under test, and the per-file snapshots the classifier compares."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from crash_common import ROOT, sha256

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


def hf_args(ctx, method, *more):
    """``ropepatch hf {d} --ctx CTX --method METHOD ...``."""
    return ("hf", "{d}", "--ctx", str(ctx), "--method", method, *more)


_hf = hf_args  # the scenario table below reads best with a short name
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


def fmt_dir(args, d, o) -> list[str]:
    """The command line ``args`` with ``{d}`` (the model directory) and ``{o}`` (the output) filled."""
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
