"""The Hugging Face half of ``tools/fuzz_headers.py`` (issue 12): hostile model DIRECTORIES.

An input is a small model directory held in memory as ``{file name: bytes}``: ``config.json``,
one or two safetensors shards (with ``model.safetensors.index.json`` for two), built here from
tiny synthetic tensors, and copies of it patched by ropepatch itself (yarn, ntk, yarn -> ntk),
so the shards carry ``__metadata__["ropepatch.original"]`` undo records.

Mutations:

* the undo record (edited as text inside the shard, every other header byte kept): each field
  given other types and values (null, numbers, 2^62, 2^70, 3e8, strings such as ``"x"``,
  ``"[1,2]"``, ``'{"a":1}'``, lone surrogates, NULs, 10^5-character strings, lists, objects),
  fields dropped or added, ``"v"`` changed, wrong or malformed hashes, and, half of the time, the
  hashes RECOMPUTED after the change (a forged record that only the rebuilt header can expose);
  the record text truncated, byte-flipped, replaced by JSON 10^5 deep, duplicate keys;
* the other ``ropepatch.*`` entries (``ctx = "²"``, NaN alphas, wrong config hashes) and
  ``__metadata__`` values that are not strings;
* ``config.json``: JSON 10^5 deep, 5,000-digit integers, ``"llama\\ud800"``, NaN / Infinity /
  1e400, a BOM, invalid UTF-8, wrong top-level types, rope fields of every wrong type and range
  (zero heads, negative contexts, rope_scaling blocks with bad factors);
* the index: hostile JSON as above, ``weight_map`` of wrong types, and shard names that leave
  the model directory (``../outside.safetensors``, absolute paths), name ``config.json``, a
  directory, a missing file or hold a NUL;
* the shard bytes: length prefix edges, truncation, flipped header bytes.

Targets per input: ``inspect_hf``, ``plan_hf``, ``patch_hf(dry_run=True)``,
``revert_hf(dry_run=True)`` and one command line (``inspect`` / ``plan`` / ``hf --dry-run`` /
``revert --dry-run``), which must write nothing; then a real ``revert_hf`` and a real
``patch_hf`` (each on a fresh copy): on an error the copy must be byte-for-byte unchanged; on
success every shard must open in ropepatch's reader AND the ``safetensors`` library, a revert
must leave a model ``inspect_hf`` calls unpatched, and a patch of an unpatched input must revert
to the input's exact bytes. A file OUTSIDE the model directory (``../outside.safetensors``, what
a hostile index points at) must never change.

Layout: the model directories, bundles and header-as-text editing live in
``tools/fuzz_hf_model.py``, the mutations in ``tools/fuzz_hf_mutate.py``; this module holds the
targets and the corpus, and re-exports what tools/fuzz_headers.py and the tests use.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from fuzz_common import MiB, cli, guarded
from fuzz_hf_model import (
    CONFIG,
    EXT,
    INDEX,
    ORIGINAL,
    OUTSIDE,
    Files,
    bundle,
    dumps,
    materialize,
    model,
    patched,
    read_dir,
    record_of,
    rehash,
    seeds,
    set_meta_raw,
    shard,
    snapshot,
    unbundle,
)
from fuzz_hf_mutate import DEEP, DEEP_SMALL, mutate

from ropepatch.errors import RopepatchError
from ropepatch.patch.hf import inspect_hf, patch_hf, plan_hf, revert_hf
from ropepatch.rope.methods import METHODS

__all__ = ["CONFIG", "DEEP", "DEEP_SMALL", "EXT", "INDEX", "ORIGINAL", "OUTSIDE", "Files", "bundle", "check_hf",
           "corpus_cases", "materialize", "model", "mutate", "patched", "read_dir", "readable", "record_of",
           "rehash", "seeds", "set_meta_raw", "shard", "snapshot", "unbundle"]


# ---- targets ------------------------------------------------------------------------------


def readable(m: str) -> None:
    """Every shard opens in ropepatch's reader and in the safetensors library; config.json is
    JSON. AssertionError (an "oracle" failure) otherwise."""
    from ropepatch.formats.safetensors import read_header

    for n in os.listdir(m):
        p = os.path.join(m, n)
        if n.endswith(".safetensors"):
            hdr = read_header(p)
            try:
                from safetensors import safe_open
            except ImportError:  # pragma: no cover
                continue
            with safe_open(p, "np") as f:
                if sorted(f.keys()) != sorted(t.name for t in hdr.tensors):
                    raise AssertionError(f"{n}: the safetensors library lists other tensors")
    json.loads(Path(m, CONFIG).read_text())


def check_hf(stats, rng: random.Random, files: Files, work: str, save=None, timeout: float = 5.0) -> None:
    """One input through every HF target."""
    stats.cases += 1
    data = bundle(files)
    budget = 4 * MiB + 8 * sum(len(b) for b in files.values())  # read_bounded reads in 1 MiB chunks
    d = os.path.join(work, "hf")
    m = materialize(files, d)
    before = snapshot(d)
    ctx = rng.choice([1024, 2048, 4096, 129, 1 << 20, 0xFFFFFFFF, 1 << 33])
    method = rng.choice(list(METHODS))
    alpha = rng.choice([None, None, 2.5, 1e300])
    force = rng.random() < 0.3

    def g(target, fn):
        return guarded(stats, target, fn, data, budget, timeout, save, EXT)

    info = g("inspect_hf", lambda: inspect_hf(m))
    g("plan_hf", lambda: plan_hf(m, ctx, method, alpha))
    g("patch_hf(dry_run)", lambda: patch_hf(m, ctx, method, alpha, dry_run=True, force=force))
    g("revert_hf(dry_run)", lambda: revert_hf(m, dry_run=True, force=force))
    argv = rng.choice([["inspect", m], ["plan", m, "--ctx", str(ctx)], ["revert", m, "--dry-run"],
                       ["hf", m, "--ctx", str(ctx), "--method", method, "--dry-run"]])
    g("cli " + argv[0] + " (hf)", cli(argv + (["--json"] if rng.random() < 0.4 else [])))
    if snapshot(d) != before:
        stats.finding("wrote", "hf read-only entry points", "the model directory changed", data, save, EXT)
        return
    was_patched = bool(info is not None and getattr(info, "patched", False))

    def revert_then_check():
        try:
            revert_hf(m, force=force)
        except RopepatchError:
            if snapshot(d) != before:
                raise AssertionError("revert failed but changed the model directory") from None
            raise
        readable(m)
        if inspect_hf(m).patched:
            raise AssertionError("revert reported success but the model is still patched")

    def patch_then_check():
        try:
            patch_hf(m, ctx, method, alpha, force=force)
        except RopepatchError:
            if snapshot(d) != before:
                raise AssertionError("patch failed but changed the model directory") from None
            raise
        readable(m)
        if not was_patched and info is not None:
            revert_hf(m)
            if read_dir(m) != files:
                raise AssertionError("patch then revert does not give the input's bytes")

    for target, fn in (("revert_hf", revert_then_check), ("patch_hf+revert", patch_then_check)):
        m = materialize(files, d)
        g(target, fn)
        if Path(d, OUTSIDE).read_bytes() != shard({"z": 2}):
            stats.finding("wrote", target, "a file outside the model directory changed", data, save, EXT)


# ---- the regression corpus ----------------------------------------------------------------


def corpus_cases() -> dict[str, bytes]:
    """Small HF inputs (a few KB each) for tests/fuzz_corpus: the issue's cases and the classes
    around them. Each must end in one clean line or a correct result."""
    # over 60 lines: one linear table of named cases, which reads best whole
    base = model("llama")
    yarn = patched(base, [(1024, "yarn")])
    two = patched(model("llama-2"), [(1024, "yarn")])
    s = "model.safetensors"

    def rec(change, files=yarn, name=s, rehashed=False):
        r = record_of(files[name])
        change(r)
        if rehashed:
            r = rehash(files[name], r)
        return {**files, name: set_meta_raw(files[name], ORIGINAL, dumps(dumps(r)))}

    def field(k, v, rehashed=False):
        return rec(lambda r: r.__setitem__(k, v), rehashed=rehashed)

    cfg = json.loads(base[CONFIG])
    cases = {
        # the undo record (the first bullet, and the classes around it)
        "hf-record-metadata-x": field("metadata", "x"),
        "hf-record-metadata-list": field("metadata", "[1,2]"),
        "hf-record-metadata-object-rehashed": field("metadata", '{"a":1}', rehashed=True),
        "hf-record-metadata-other-rehashed": field("metadata", '{"format":"np"}', rehashed=True),
        "hf-record-header-length-2pow62": field("header_length", 1 << 62),
        "hf-record-header-length-2pow70": field("header_length", 1 << 70),
        "hf-record-header-length-3e8": field("header_length", 300_000_000),
        "hf-record-header-length-float": field("header_length", 144.0),
        "hf-record-link-number": field("link", 5),
        "hf-record-config-link-list": field("config_link", [1]),
        "hf-record-link-nul": field("link", "a\x00b"),
        "hf-record-config-null": field("config", None),
        "hf-record-config-deep-rehashed": field("config", DEEP_SMALL, rehashed=True),
        "hf-record-pad-junk-rehashed": field("pad", "xxxx", rehashed=True),
        "hf-record-header-sha-wrong": field("header_sha256", "0" * 64),
        "hf-record-header-sha-upper": field("header_sha256", "A" * 64),
        "hf-record-config-sha-wrong": field("config_sha256", "1" * 64),
        "hf-record-surrogate": field("metadata", '{"format":"\ud800"}', rehashed=True),
        "hf-record-v2": field("v", 2),
        "hf-record-missing-config": rec(lambda r: r.pop("config")),
        "hf-record-deep-json": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL, dumps(DEEP_SMALL))},
        "hf-record-not-json": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL, dumps("{not json"))},
        "hf-record-duplicate-key": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL,
                                                          dumps('{"v":1,"v":1,' + dumps(record_of(yarn[s]))[1:]))},
        "hf-record-not-a-string": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL, "5")},
        "hf-two-shards-second-record-forged": rec(lambda r: r.__setitem__("metadata", '{"a":1}'), files=two,
                                                  name="model-00002-of-00002.safetensors", rehashed=True),
        # the other ropepatch entries
        "hf-ctx-superscript-two": {**yarn, s: set_meta_raw(yarn[s], "ropepatch.ctx", '"\u00b2"')},
        "hf-alpha-nan": {**yarn, s: set_meta_raw(yarn[s], "ropepatch.alpha", '"nan"')},
        "hf-metadata-value-number": {**yarn, s: set_meta_raw(yarn[s], "ropepatch.method", "5")},
        # config.json
        "hf-config-deep": {**base, CONFIG: DEEP_SMALL.encode()},
        "hf-config-5000-digits": {**base, CONFIG: base[CONFIG].replace(b"128,", b"1" * 5000 + b",")},
        "hf-config-surrogate-model-type": {**base, CONFIG: base[CONFIG].replace(b'"llama"', b'"llama\\ud800"')},
        "hf-config-not-utf8": {**base, CONFIG: base[CONFIG].replace(b'"llama"', b'"ll\xffama"')},
        "hf-config-nan-theta": {**base, CONFIG: base[CONFIG].replace(b"10000.0", b"NaN")},
        "hf-config-theta-1e400": {**base, CONFIG: base[CONFIG].replace(b"10000.0", b"1e400")},
        "hf-config-zero-heads": {**base, CONFIG: json.dumps({**cfg, "num_attention_heads": 0}).encode()},
        "hf-config-array": {**base, CONFIG: b"[]"},
        "hf-config-rope-scaling-bad-factor": {**base, CONFIG: json.dumps(
            {**cfg, "rope_scaling": {"rope_type": "yarn", "factor": "x"}}).encode()},
        "hf-config-bom": {**base, CONFIG: b"\xef\xbb\xbf" + base[CONFIG]},
        # found by this fuzzer (seed 11): `ropepatch inspect` crashed computing the usable context
        "hf-config-linear-factor-1e308": {**model("qwen2"), CONFIG: json.dumps(
            {**json.loads(model("qwen2")[CONFIG]), "max_position_embeddings": 1024,
             "rope_scaling": {"type": "linear", "factor": 1e308}}, indent=2).encode()},
        "hf-config-yarn-huge-original": {**base, CONFIG: json.dumps(
            {**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 1e300,
                                     "original_max_position_embeddings": 1 << 62}}).encode()},
        # the index
        "hf-index-deep": {**model("llama-2"), INDEX: DEEP_SMALL.encode()},
        "hf-index-weight-map-list": {**model("llama-2"), INDEX: b'{"weight_map": []}'},
        "hf-index-escapes-the-directory": {**model("llama-2"), INDEX: dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "../" + OUTSIDE}}).encode()},
        "hf-index-absolute-path": {**model("llama-2"), INDEX: dumps({"weight_map": {"a": "/tmp/" + OUTSIDE}}).encode()},
        "hf-index-names-config": {**model("llama-2"), INDEX: dumps({"weight_map": {"a": CONFIG}}).encode()},
        "hf-index-nul": {**model("llama-2"), INDEX: dumps({"weight_map": {"a": "x.safetensors\u0000"}}).encode()},
        # valid inputs: must patch, revert exactly
        "hf-valid": base,
        "hf-valid-yarn": yarn,
        "hf-valid-two-shards-yarn": two,
    }
    return {name + EXT: bundle(files) for name, files in cases.items()}
