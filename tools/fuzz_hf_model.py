"""Hugging Face model directories for tools/fuzz_hf.py: a small model held in memory as
``{file name: bytes}`` (``config.json``, one or two synthetic safetensors shards, an index for
two), written to and read from disk, patched by ropepatch itself (the seeds), bundled as one file;
and a shard's JSON header edited as text (every other header byte kept), its undo record read and
its hashes recomputed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from fuzz_common import FIXTURES

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


def dumps(v) -> str:
    return json.dumps(v, ensure_ascii=True)  # lone surrogates as \ud800 escapes, never raw
