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
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
ORIGINAL = "ropepatch.original"
OUTSIDE = "outside.safetensors"
EXT = ".hfmodel.json"

Files = dict  # file name -> bytes

# ---- seeds --------------------------------------------------------------------------------


def shard(tensors: dict, metadata: dict | None = {"format": "pt"}) -> bytes:  # noqa: B006 - never mutated
    """A safetensors file of F32 ``tensors`` ``{name: n_floats}`` (bytes 0, 1, 2, ...)."""
    hdr, off = ({"__metadata__": metadata} if metadata is not None else {}), 0
    for name, n in tensors.items():
        hdr[name] = {"dtype": "F32", "shape": [n], "data_offsets": [off, off + 4 * n]}
        off += 4 * n
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(i % 251 for i in range(off))


def model(kind: str = "llama") -> Files:
    """A tiny model: one shard ("llama", "qwen2") or two shards and an index ("llama-2")."""
    name = "tiny-qwen2" if kind == "qwen2" else "tiny-llama"
    cfg = (FIXTURES / "hf" / name / CONFIG).read_bytes()
    if kind != "llama-2":
        return {CONFIG: cfg, "model.safetensors": shard({"a": 4, "b": 2})}
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index = {"metadata": {"total_size": 40}, "weight_map": {"a": s1, "b": s1, "c": s2}}
    return {CONFIG: cfg, s1: shard({"a": 4, "b": 2}), s2: shard({"c": 4}),
            INDEX: json.dumps(index, indent=2).encode()}


def materialize(files: Files, d: str, outside: bytes | None = None) -> str:
    """Write ``files`` into a fresh ``d/model`` (and ``d/outside.safetensors``); the model dir."""
    shutil.rmtree(d, ignore_errors=True)
    m = os.path.join(d, "model")
    os.makedirs(m)
    for n, data in files.items():
        Path(m, n).write_bytes(data)
    Path(d, OUTSIDE).write_bytes(outside if outside is not None else shard({"z": 2}))
    return m


def read_dir(m: str) -> Files:
    return {n: Path(m, n).read_bytes() for n in sorted(os.listdir(m)) if os.path.isfile(os.path.join(m, n))}


def snapshot(d: str) -> dict:
    """Every entry under ``d``: kind and, for a file, its sha256 (what "nothing written" means)."""
    out = {}
    for root, dirs, names in os.walk(d):
        for n in dirs + names:
            p = os.path.join(root, n)
            if os.path.islink(p):
                out[os.path.relpath(p, d)] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                out[os.path.relpath(p, d)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                out[os.path.relpath(p, d)] = "dir"
    return out


def patched(files: Files, steps) -> Files:
    """``files`` after ropepatch's own ``patch_hf`` for each ``(ctx, method)`` of ``steps``."""
    from ropepatch.patch.hf import patch_hf

    with tempfile.TemporaryDirectory() as d:
        m = materialize(files, d)
        for ctx, method in steps:
            patch_hf(m, ctx, method)
        return read_dir(m)


def seeds() -> list[tuple[str, Files]]:
    out = []
    for kind in ("llama", "qwen2", "llama-2"):
        base = model(kind)
        out += [(kind, base), (kind + "+yarn", patched(base, [(1024, "yarn")])),
                (kind + "+ntk", patched(base, [(2048, "ntk")]))]
    out.append(("llama+yarn+ntk", patched(model("llama"), [(1024, "yarn"), (4096, "ntk")])))
    return out


def bundle(files: Files) -> bytes:
    """One input as one file (what ``--save`` and the corpus keep)."""
    return json.dumps({"files": {n: base64.b64encode(b).decode() for n, b in files.items()}},
                      indent=0).encode()


def unbundle(data: bytes) -> Files:
    return {n: base64.b64decode(b) for n, b in json.loads(data)["files"].items()}


# ---- editing a shard's header as text ------------------------------------------------------


def header_text(data: bytes) -> tuple[str, bytes]:
    n = struct.unpack_from("<Q", data)[0]
    return data[8:8 + n].decode("utf-8"), data[8 + n:]


def with_header(text: str, body: bytes, pad8: bool = True) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if pad8:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def value_span(text: str, key: str) -> tuple[int, int] | None:
    """Where the JSON value of ``"key":`` starts and ends in ``text`` (compact spelling)."""
    k = json.dumps(key) + ":"
    i = text.find(k)
    if i < 0:
        return None
    j = i + len(k)
    try:
        _, end = json.JSONDecoder().raw_decode(text, j)
    except ValueError:
        return None
    return j, end


def set_meta_raw(data: bytes, key: str, raw: str, pad8: bool = True) -> bytes:
    """The shard with the metadata value of ``key`` replaced by the JSON text ``raw`` (the
    entry appended to ``__metadata__`` when absent); every other byte of the header kept."""
    text, body = header_text(data)
    span = value_span(text, key)
    if span is not None:
        text = text[:span[0]] + raw + text[span[1]:]
    else:
        ms = value_span(text, "__metadata__")
        if ms is None:
            return data
        inner = text[ms[0]:ms[1]]
        sep = "" if inner.strip() == "{}" else ","
        text = text[:ms[1] - 1] + f"{sep}{json.dumps(key)}:{raw}" + text[ms[1] - 1:]
    return with_header(text.rstrip(" "), body, pad8)


def record_of(data: bytes) -> dict | None:
    try:
        text, _ = header_text(data)
        meta = json.loads(text).get("__metadata__") or {}
        return json.loads(meta[ORIGINAL]) if ORIGINAL in meta else None
    except (ValueError, KeyError, TypeError, struct.error, RecursionError):
        return None


def rehash(data: bytes, rec: dict) -> dict:
    """``rec`` with header_sha256 / config_sha256 recomputed for what it now says (a forged
    record that passes the hash checks); ``rec`` unchanged when it cannot be rebuilt."""
    from ropepatch.formats.safetensors import framed, parse_header
    from ropepatch.patch.hf_record import HfUndoRecord

    rec = dict(rec)
    try:
        if isinstance(rec.get("config"), str):
            rec["config_sha256"] = hashlib.sha256(rec["config"].encode("utf-8", "surrogatepass")).hexdigest()
        n = struct.unpack_from("<Q", data)[0]
        hdr = parse_header("x.safetensors", data[8:8 + n], len(data))
        fields = {k: rec.get(k) for k in ("header_length", "pad", "metadata", "config", "config_link", "link")}
        h0 = HfUndoRecord(**fields).original_header(hdr)
        rec["header_sha256"] = hashlib.sha256(framed(h0)).hexdigest()
    except Exception:  # noqa: BLE001 - not rebuildable: leave the hashes as they are
        pass
    return rec


# ---- mutations ----------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_SMALL = "[" * 3000 + "]" * 3000  # deeper than Python's recursion limit, small for the corpus
HOSTILE_VALUES = [None, 0, -1, 1, 2, 3.5, 1 << 62, 1 << 70, 300_000_000, 1e308, True, "", "x", "[1,2]",
                  '{"a":1}', '{"format":"pt","x":"y"}', "null", "\ud800", "a\x00b", "x" * 100_000, [], [1, 2],
                  {"a": 1}, "../../outside", "/etc/passwd", "A" * 64, "0" * 63, "g" * 64, "²", "1" * 5000]
RECORD_FIELDS = ["v", "header_length", "pad", "metadata", "config", "config_link", "link", "header_sha256",
                 "config_sha256"]
RP_ENTRIES = {"ropepatch.ctx": ['"²"', '"-1"', '"0"', '"1e400"', '"99999999999999999999999"', '"nan"', '" 1024"',
                                '"1024\\n"', "5", "null"],
              "ropepatch.alpha": ['"nan"', '"inf"', '"-1"', '"x"', '"1e400"', "[]"],
              "ropepatch.method": ['"bogus"', '""', '"yarn\\u0000"', "{}"],
              "ropepatch.version": ['""', '"9.9.9"', "1"],
              "ropepatch.config_sha256": ['"x"', '"' + "0" * 64 + '"', "null"],
              "ropepatch.previous_config_sha256": ['"' + "1" * 64 + '"', '"zz"', "7"],
              "ropepatch.reserved": ['"x"', '""', "false"],
              "format": ["5", "null", '"\\ud800"']}
CONFIG_KEYS = ["max_position_embeddings", "rope_theta", "rope_scaling", "head_dim", "hidden_size",
               "num_attention_heads", "num_key_value_heads", "partial_rotary_factor", "model_type",
               "rope_parameters", "original_max_position_embeddings"]
CONFIG_VALUES = [None, "x", -1, 0, 1, 2, 1 << 70, True, [], {}, 0.5, "\ud800", "llama\ud800", "gpt2",
                 {"rope_type": "yarn", "factor": "x"}, {"rope_type": "yarn", "factor": 0},
                 {"rope_type": "yarn", "factor": -2.0, "original_max_position_embeddings": 64},
                 {"type": "linear", "factor": 1e308}, {"rope_type": 5}, {"rope_type": "longrope"},
                 {"rope_type": "dynamic", "factor": float("nan")}, {"rope_type": "yarn", "factor": 4.0},
                 {"rope_theta": 0}, [{"a": 1}], 1e308, 1 << 62, 2**31,
                 {"rope_type": "yarn", "factor": 1e308, "original_max_position_embeddings": 1 << 62},
                 {"rope_type": "dynamic", "factor": 1e300}, {"type": "linear", "factor": 1e-308}]
CONFIG_TEXT = ['{"a": ' + "9" * 5000 + "}", DEEP, "", "null", "[]", '"x"', "{", '{"model_type": "llama\\ud800"}']
INDEX_MAPS = [None, [], "x", {"a": 5}, {"a": "../" + OUTSIDE}, {"a": "/tmp/" + OUTSIDE}, {"a": "missing.safetensors"},
              {"a": "sub/x.safetensors"}, {"a": "model.safetensors\u0000"}, {"a": "."}, {"a": ""}, {"a": CONFIG},
              {"a": INDEX}, {"a": "model-00001-of-00002.safetensors", "c": "../" + OUTSIDE}]


def _pick(rng: random.Random, values):
    return values[rng.randrange(len(values))]


def _dumps(v) -> str:
    return json.dumps(v, ensure_ascii=True)  # lone surrogates as \ud800 escapes, never raw


def _record_op(rng: random.Random, data: bytes) -> bytes:
    rec = record_of(data)
    if rec is None:
        return data
    op = rng.randrange(8)
    if op <= 3:  # a field of another type or value
        rec[_pick(rng, RECORD_FIELDS)] = _pick(rng, HOSTILE_VALUES + [rec.get("header_length", 0) + rng.choice([-8, -1, 1, 8])])
    elif op == 4:
        rec.pop(_pick(rng, RECORD_FIELDS), None)
        if rng.random() < 0.3:
            rec["extra"] = _pick(rng, HOSTILE_VALUES)
    elif op == 5:  # metadata that is valid JSON but not the original
        rec["metadata"] = _pick(rng, ['{"format":"pt","x":"y"}', '{"format":"np"}', "null", '{"format":"pt"} ', "{}"])
    elif op == 6:  # the record's own text damaged
        text = _dumps(rec)
        how = rng.randrange(5)
        text = [text[: rng.randrange(len(text))], DEEP, "", '{"v":1,"v":1,' + text[1:],
                text.replace('"', "'", 1)][how]
        return set_meta_raw(data, ORIGINAL, _dumps(text))
    else:  # the record is not a string at all
        return set_meta_raw(data, ORIGINAL, _pick(rng, ["5", "null", "[]", '{"v":1}', DEEP]))
    if rng.random() < 0.5:
        rec = rehash(data, rec)
    return set_meta_raw(data, ORIGINAL, _dumps(_dumps(rec)), pad8=rng.random() < 0.8)


def _entry_op(rng: random.Random, data: bytes) -> bytes:
    key = _pick(rng, list(RP_ENTRIES))
    return set_meta_raw(data, key, _pick(rng, RP_ENTRIES[key]))


def _shard_op(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        v = _pick(rng, [0, 1, 7, 2, len(data), len(data) - 8, (1 << 64) - 1, 1 << 62, 100_000_001])
        return struct.pack("<Q", v) + data[8:]
    if op == 1:
        return data[: rng.randrange(len(data) + 1)]
    if op == 2:
        b = bytearray(data)
        n = struct.unpack_from("<Q", data)[0]
        for _ in range(rng.choice([1, 3])):
            b[8 + rng.randrange(max(1, min(n, len(data) - 8)))] = rng.randrange(256)
        return bytes(b)
    return set_meta_raw(data, "__metadata__", _pick(rng, ["null", "5", "[]", '{"a":1}', DEEP]))


def _config_op(rng: random.Random, cfg: bytes) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return _pick(rng, CONFIG_TEXT).encode()
    if op == 1:
        return _pick(rng, [b"\xef\xbb\xbf" + cfg, cfg.replace(b'"llama"', b'"ll\xffama"'), cfg[: rng.randrange(len(cfg))],
                           cfg + b"garbage", cfg.replace(b"10000.0", b"NaN"), cfg.replace(b"10000.0", b"Infinity"),
                           cfg.replace(b"10000.0", b"1e400"), cfg.replace(b"128,", b"1" * 5000 + b","),
                           cfg.replace(b'"llama"', b'"llama\\ud800"'), b'{"model_type": "llama", ' + cfg[1:]])
    try:
        doc = json.loads(cfg)
    except ValueError:
        return cfg
    if not isinstance(doc, dict):
        return cfg
    for _ in range(1 if op < 5 else 3):
        doc[_pick(rng, CONFIG_KEYS)] = _pick(rng, CONFIG_VALUES)
    text = json.dumps(doc, indent=2)  # NaN stays the NaN literal: that is one of the cases
    if rng.random() < 0.2:
        text = text.replace("\n", "\n" + "  " * 1000, 1)  # odd but valid whitespace
    return text.encode()


def _index_op(rng: random.Random, index: bytes) -> bytes:
    if rng.random() < 0.3:
        return _pick(rng, CONFIG_TEXT + ['{"weight_map": {"a": "model-00001-of-00002.safetensors"}, "weight_map": 5}']).encode()
    try:
        doc = json.loads(index)
    except ValueError:
        return index
    if rng.random() < 0.2:
        doc["metadata"] = _pick(rng, [5, None, [], {"total_size": -1}, {"total_size": 1 << 70}])
    else:
        doc["weight_map"] = _pick(rng, INDEX_MAPS)
    return _dumps(doc).encode()


def mutate(rng: random.Random, files: Files) -> Files:
    files = dict(files)
    shards = [n for n in files if n.endswith(".safetensors")]
    with_record = [n for n in shards if record_of(files[n]) is not None]
    r = rng.random()
    try:
        if with_record and r < 0.45:
            n = _pick(rng, with_record)
            files[n] = _record_op(rng, files[n])
        elif shards and r < 0.6:
            n = _pick(rng, shards)
            files[n] = _entry_op(rng, files[n]) if rng.random() < 0.7 else _shard_op(rng, files[n])
        elif INDEX in files and r < 0.72:
            files[INDEX] = _index_op(rng, files[INDEX])
        else:
            files[CONFIG] = _config_op(rng, files[CONFIG])
    except (ValueError, KeyError, TypeError, struct.error, UnicodeError, RecursionError):
        pass  # a mutator corner case: the input stays as it was
    return files


# ---- targets ------------------------------------------------------------------------------


def _readable(m: str) -> None:
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


def check_hf(fz, stats, rng: random.Random, files: Files, work: str, save=None, timeout: float = 5.0) -> None:
    """One input through every HF target (``fz``: the fuzz_headers module: ``guarded``, ``_cli``)."""
    from ropepatch.errors import RopepatchError
    from ropepatch.patch.hf import inspect_hf, patch_hf, plan_hf, revert_hf
    from ropepatch.rope.methods import METHODS

    stats.cases += 1
    data = bundle(files)
    budget = 4 * fz.MiB + 8 * sum(len(b) for b in files.values())  # read_bounded reads in 1 MiB chunks
    d = os.path.join(work, "hf")
    m = materialize(files, d)
    before = snapshot(d)
    ctx = rng.choice([1024, 2048, 4096, 129, 1 << 20, 0xFFFFFFFF, 1 << 33])
    method = rng.choice(list(METHODS))
    alpha = rng.choice([None, None, 2.5, 1e300])
    force = rng.random() < 0.3

    def g(target, fn):
        return fz.guarded(stats, target, fn, data, budget, timeout, save, EXT)

    info = g("inspect_hf", lambda: inspect_hf(m))
    g("plan_hf", lambda: plan_hf(m, ctx, method, alpha))
    g("patch_hf(dry_run)", lambda: patch_hf(m, ctx, method, alpha, dry_run=True, force=force))
    g("revert_hf(dry_run)", lambda: revert_hf(m, dry_run=True, force=force))
    argv = rng.choice([["inspect", m], ["plan", m, "--ctx", str(ctx)], ["revert", m, "--dry-run"],
                       ["hf", m, "--ctx", str(ctx), "--method", method, "--dry-run"]])
    g("cli " + argv[0] + " (hf)", fz._cli(argv + (["--json"] if rng.random() < 0.4 else [])))
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
        _readable(m)
        if inspect_hf(m).patched:
            raise AssertionError("revert reported success but the model is still patched")

    def patch_then_check():
        try:
            patch_hf(m, ctx, method, alpha, force=force)
        except RopepatchError:
            if snapshot(d) != before:
                raise AssertionError("patch failed but changed the model directory") from None
            raise
        _readable(m)
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
    base = model("llama")
    yarn = patched(base, [(1024, "yarn")])
    two = patched(model("llama-2"), [(1024, "yarn")])
    s = "model.safetensors"

    def rec(change, files=yarn, name=s, rehashed=False):
        r = record_of(files[name])
        change(r)
        if rehashed:
            r = rehash(files[name], r)
        return {**files, name: set_meta_raw(files[name], ORIGINAL, _dumps(_dumps(r)))}

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
        "hf-record-deep-json": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL, _dumps(DEEP_SMALL))},
        "hf-record-not-json": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL, _dumps("{not json"))},
        "hf-record-duplicate-key": {**yarn, s: set_meta_raw(yarn[s], ORIGINAL,
                                                          _dumps('{"v":1,"v":1,' + _dumps(record_of(yarn[s]))[1:]))},
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
        "hf-index-escapes-the-directory": {**model("llama-2"), INDEX: _dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "../" + OUTSIDE}}).encode()},
        "hf-index-absolute-path": {**model("llama-2"), INDEX: _dumps({"weight_map": {"a": "/tmp/" + OUTSIDE}}).encode()},
        "hf-index-names-config": {**model("llama-2"), INDEX: _dumps({"weight_map": {"a": CONFIG}}).encode()},
        "hf-index-nul": {**model("llama-2"), INDEX: _dumps({"weight_map": {"a": "x.safetensors\u0000"}}).encode()},
        # valid inputs: must patch, revert exactly
        "hf-valid": base,
        "hf-valid-yarn": yarn,
        "hf-valid-two-shards-yarn": two,
    }
    return {name + EXT: bundle(files) for name, files in cases.items()}
