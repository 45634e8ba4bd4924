#!/usr/bin/env python3
"""Fuzz ropepatch's header readers with hostile and broken files.

Targets:

* GGUF: ``formats.gguf.header.parse_header`` on the bytes, then, on a file, ``read_header``,
  ``patch.gguf.inspect_gguf``, ``patch_gguf(dry_run=True)`` (random method and context),
  ``revert_gguf(dry_run=True)`` and ``make_plan`` for every method (what ``ropepatch plan`` does).
  When a dry run accepts an input, the patch is really written to a copy (``-o``), read back,
  re-patched in place with another method, and reverted: the revert must give the input's
  exact bytes (the "correct result" oracle).
* safetensors: ``formats.safetensors.read_header``; when it accepts a file, the ``safetensors``
  library must open it too and list the same tensors (a disagreement is reported).
* command-line numbers: ``ropepatch gguf --dry-run`` / ``ropepatch plan`` with hostile --ctx,
  --alpha, --base, --rope-dim values.
* Hugging Face model directories (``tools/fuzz_hf.py``, issue 12): damaged and forged undo
  records in shard metadata, hostile config.json and index JSON, through ``inspect_hf``,
  ``plan_hf``, dry-run patch and revert, the CLI, then a real revert and a real patch on copies
  (nothing written on an error, readable results, exact round trips, nothing outside the model
  directory touched).

Inputs come from seeds (the committed fixtures, small synthetic GGUFs built from their metadata,
patched and --no-record-patched copies, a v2 file, a file with general.alignment) through
structure-aware mutations: bit and byte flips in the header, every length / count / type field
set to edge values (0, 1, 2^31, 2^32-1, 2^63, 2^64-1, ...), truncation, deleting / duplicating /
swapping / retyping metadata entries (with and without fixing the count), RoPE keys given hostile
types and values, ropepatch's undo record (JSON) damaged, crafted entries with absurd lengths;
per-pair factors (issue 14): llama3-style and ntk-parts/factors-patched seeds, the rope_freqs.weight
tensor's values (NaN, inf, 0, negative), type, shape, offset (overlapping, past the end) and a
duplicate of its info, the record's ``rope_freqs`` field and ``ropepatch.options`` damaged, and
hostile --factors / --beta-* options through the patch targets.

Every case must end in a ``RopepatchError`` whose message is one line, or a correct result.
Anything else is a finding: ``crash`` (another exception), ``hang`` (over the time limit; SIGALRM),
``alloc`` (tracemalloc peak over 1 MiB + 4x the input size: an allocation driven by a length
field), ``wrote`` (the input file or its directory changed), ``multiline`` (an error message
of more than one line), ``oracle`` (accepted, but the written patch does not revert exactly).

Usage::

    python tools/fuzz_headers.py --cases 20000 --seed 1          # the long run
    python tools/fuzz_headers.py --cases 300 --seed 0 --save DIR  # keep crashing inputs in DIR
    python tools/fuzz_headers.py --replay tests/fuzz_corpus       # check a corpus
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ropepatch.patch import gguf as gp  # noqa: E402
from ropepatch.errors import RopepatchError  # noqa: E402
from ropepatch.formats.gguf.header import GGUFHeader, make_kv, parse_header, read_header, serialize_header  # noqa: E402
from ropepatch.formats.gguf.params import params_from_kvs, params_to_kvs  # noqa: E402
from ropepatch.patch.gguf_layout import apply_params, layout_header  # noqa: E402
from ropepatch.patch.gguf_record import new_record  # noqa: E402
from ropepatch.formats.gguf.keys import ValueType as T  # noqa: E402
from ropepatch.rope.methods import METHODS, make_plan  # noqa: E402

FIXTURES = ROOT / "fixtures"
GGUF_FIXTURES = ["tiny-llama-q8_0.gguf", "tiny-qwen2-q8_0.gguf", "tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf"]
ST_FIXTURES = ["hf/tiny-llama/model.safetensors", "hf/tiny-qwen2/model.safetensors"]
MiB = 1 << 20

U32_EDGES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 31, 32, 0x7F, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
U64_EDGES = U32_EDGES + [1 << 32, (1 << 32) + 1, 1 << 40, 1 << 60, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 2, (1 << 64) - 1]


class Timeout(BaseException):
    """Raised by SIGALRM inside a case (a BaseException, so no ``except Exception`` eats it)."""


def _alarm(signum, frame):
    raise Timeout()


# ---- outcomes -----------------------------------------------------------------------------


@dataclass
class Stats:
    cases: int = 0
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)  # ok / error / finding kinds
    findings: dict = field(default_factory=dict)  # signature -> (kind, detail, input sha, target)
    disagreements: Counter = field(default_factory=Counter)
    max_peak: int = 0
    max_seconds: float = 0.0
    slowest: str = ""

    def finding(self, kind: str, target: str, detail: str, data: bytes, save: str | None, ext: str) -> None:
        sig = f"{kind}:{_signature(detail) if kind == 'crash' else target}"
        self.outcomes[kind] += 1
        if sig in self.findings:
            return
        sha = hashlib.sha256(data).hexdigest()[:16]
        self.findings[sig] = (kind, target, detail, sha, len(data))
        if save:
            os.makedirs(save, exist_ok=True)
            with open(os.path.join(save, f"{kind}-{sha}{ext}"), "wb") as f:
                f.write(data)
            with open(os.path.join(save, f"{kind}-{sha}.txt"), "w") as f:
                f.write(f"{target}\n{detail}\n")


def _signature(detail: str) -> str:
    """Exception type + innermost ropepatch frame: one signature per distinct bug."""
    lines = [ln for ln in detail.splitlines() if ln.strip()]
    frames = [ln.strip() for ln in lines if ln.strip().startswith("File ") and "/ropepatch/" in ln]
    last = lines[-1] if lines else ""
    return (frames[-1] if frames else "") + " | " + last.split(":")[0]


def guarded(stats: Stats, target: str, fn, data: bytes, budget: int, timeout: float, save, ext) -> object:
    """Run ``fn`` under a time limit and tracemalloc; classify; return its result or None."""
    stats.calls += 1
    tracemalloc.clear_traces()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    result, kind, detail = None, "ok", ""
    try:
        result = fn()
    except RopepatchError as e:
        msg = str(e)
        kind = "error" if msg and "\n" not in msg and "Traceback" not in msg else "multiline"
        detail = msg
    except Timeout:
        kind, detail = "hang", f"over {timeout} s"
    except MemoryError:
        kind, detail = "alloc", traceback.format_exc()
    except SystemExit as e:  # argparse rejecting a value: its own clean usage error
        kind, detail = ("error" if e.code == 2 else "crash"), f"SystemExit({e.code})"
    except Exception:  # noqa: BLE001 - any other exception is the finding
        kind, detail = "crash", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    stats.max_peak = max(stats.max_peak, peak)
    if secs > stats.max_seconds:
        stats.max_seconds, stats.slowest = secs, f"{target} on a {len(data)}-byte input"
    if kind in ("ok", "error") and peak > budget:
        kind, detail = "alloc", f"tracemalloc peak {peak} bytes > budget {budget}"
    if kind in ("ok", "error"):
        stats.outcomes[kind] += 1
    else:
        stats.finding(kind, target, detail, data, save, ext)
    return result if kind == "ok" else None


# ---- GGUF seeds ---------------------------------------------------------------------------


def _kv_arr(key: str, et: T, items) -> tuple:
    if et == T.STRING:
        payload = b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in items)
    else:
        fmt = {T.FLOAT32: "<f", T.INT32: "<i", T.UINT32: "<I"}[et]
        payload = b"".join(struct.pack(fmt, x) for x in items)
    return (key, T.ARRAY, (et, payload, len(items)))


def build_gguf(kvs, tensors, version=3, alignment=32) -> bytes:
    """A GGUF from [(key, type, value)] and [(name, shape, ggml_type, nbytes)]."""
    entries = [make_kv(k, t, v) for k, t, v in kvs]
    infos, off, data = b"", 0, bytearray()
    for name, shape, gt, nbytes in tensors:
        nb = name.encode()
        infos += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", gt, off)
        data += bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
        data += bytes(-len(data) % alignment)
        off = len(data)
    head = serialize_header(version, entries, infos, len(tensors))
    head += bytes(-len(head) % alignment)
    return head + bytes(data)


def small_gguf(arch="llama", version=3, alignment=None, extra=()) -> bytes:
    """A few-KB GGUF with a fixture's hyperparameters and a trimmed tokenizer."""
    kvs = [("general.architecture", T.STRING, arch), ("general.name", T.STRING, f"fuzz-{arch}")]
    if alignment:
        kvs.append(("general.alignment", T.UINT32, alignment))
    kvs += [
        (f"{arch}.vocab_size", T.UINT32, 8),
        (f"{arch}.context_length", T.UINT32, 128),
        (f"{arch}.embedding_length", T.UINT32, 64),
        (f"{arch}.block_count", T.UINT32, 2),
        (f"{arch}.attention.head_count", T.UINT32, 4),
        (f"{arch}.attention.head_count_kv", T.UINT32, 2),
        (f"{arch}.rope.dimension_count", T.UINT32, 16),
        (f"{arch}.rope.freq_base", T.FLOAT32, 10000.0),
        ("tokenizer.ggml.model", T.STRING, "llama"),
        _kv_arr("tokenizer.ggml.tokens", T.STRING, ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"]),
        _kv_arr("tokenizer.ggml.scores", T.FLOAT32, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0]),
        _kv_arr("tokenizer.ggml.token_type", T.INT32, [2, 3, 3, 1, 1, 1, 1, 1]),
        ("tokenizer.ggml.bos_token_id", T.UINT32, 1),
        ("general.quantization_version", T.UINT32, 2),
        *extra,
    ]
    tensors = [("token_embd.weight", (64, 8), 8, 8 * 2 * 34), ("output_norm.weight", (64,), 0, 256)]
    return build_gguf(kvs, tensors, version, alignment or 32)


def gguf_seeds(work: str, big: bool = True) -> list[tuple[str, bytes]]:
    """(name, bytes) seeds: synthetic small files, fixtures, and patched copies of both."""
    seeds = [
        ("small-llama", small_gguf()),
        ("small-qwen2", small_gguf("qwen2")),
        ("small-v2", small_gguf(version=2)),
        ("small-align64", small_gguf(alignment=64)),
        ("small-scaled", small_gguf(extra=[("llama.rope.scaling.type", T.STRING, "linear"),
                                             ("llama.rope.scaling.factor", T.FLOAT32, 2.0)])),
    ]
    if big:
        seeds += [(f, (FIXTURES / f).read_bytes()) for f in GGUF_FIXTURES[:2]]
    out = list(seeds)
    for name, data in seeds:
        for method, ctx in (("yarn", 1024), ("ntk", 512)):
            p = os.path.join(work, "seed.gguf")
            with open(p, "wb") as f:
                f.write(data)
            try:
                gp.patch_gguf(p, ctx, method, replace_scaling=True)
                out.append((f"{name}+{method}", Path(p).read_bytes()))
            except RopepatchError:
                pass
        p = os.path.join(work, "seed.gguf")
        with open(p, "wb") as f:
            f.write(data)
        with contextlib.suppress(RopepatchError):
            gp.patch_gguf(p, 256, "ntk", record=False)
            out.append((f"{name}+norecord", Path(p).read_bytes()))
    return out + factor_seeds(work)


# ---- GGUF structure-aware mutation ---------------------------------------------------------


@dataclass
class Layout:
    h: GGUFHeader
    fields: list  # (offset, size, kind)
    kv_spans: list  # (start, end) of each KV entry
    tstart: int


def layout(data: bytes) -> Layout | None:
    try:
        h = parse_header(data, "seed", len(data))
    except RopepatchError:
        return None
    fields = [(4, 4, "version"), (8, 8, "n_tensors"), (16, 8, "n_kv")]
    spans, pos = [], 24
    for kv in h.kvs:
        klen = len(kv.key.encode())
        fields += [(pos, 8, "key_len"), (pos + 8 + klen, 4, "type")]
        v = pos + 8 + klen + 4
        if kv.type == T.STRING:
            fields.append((v, 8, "str_len"))
        elif kv.type == T.ARRAY:
            fields += [(v, 4, "arr_type"), (v + 4, 8, "arr_count")]
            if kv.value.elem_type == T.STRING and kv.value.count:
                fields.append((v + 12, 8, "arr_str_len"))
        else:
            fields.append((v, len(kv.raw) - (v - pos), "scalar"))
        spans.append((pos, pos + len(kv.raw)))
        pos += len(kv.raw)
    tstart = pos
    for t in h.tensors:
        nlen = len(t.name.encode())
        fields += [(pos, 8, "name_len"), (pos + 8 + nlen, 4, "n_dims")]
        p = pos + 8 + nlen + 4
        for _ in t.shape:
            fields.append((p, 8, "dim"))
            p += 8
        fields += [(p, 4, "ggml_type"), (p + 4, 8, "tensor_offset")]
        pos = p + 12
    return Layout(h, fields, spans, tstart)


def _edge(rng: random.Random, size: int) -> int:
    if size == 4:
        return rng.choice(U32_EDGES)
    if size == 8:
        return rng.choice(U64_EDGES)
    return rng.randrange(1 << (8 * size)) if size <= 8 else 0


# hostile (type, value) pairs for the keys ropepatch reads
HOSTILE_INTS = [(T.UINT32, 0), (T.UINT32, 1), (T.UINT32, 2), (T.UINT32, 3), (T.UINT32, 0xFFFFFFFF),
                (T.INT32, -1), (T.INT32, -(1 << 31)), (T.UINT64, 1 << 40), (T.UINT64, (1 << 64) - 1),
                (T.INT64, -5), (T.UINT16, 7), (T.INT8, -128), (T.BOOL, True), (T.FLOAT32, 1024.0),
                (T.FLOAT32, float("nan")), (T.STRING, "1024"), (T.ARRAY, (T.UINT32, struct.pack("<I", 4), 1)),
                (T.ARRAY, (T.INT32, b"", 0)), (T.ARRAY, (T.FLOAT32, struct.pack("<f", 3.0), 1))]
HOSTILE_FLOATS = [(T.FLOAT32, v) for v in (0.0, -1.0, 1.0, 1.0000001, float("nan"), float("inf"), float("-inf"),
                                           3.4028234663852886e38, 1e-45, 1e30)] + [
                  (T.FLOAT64, 1e300), (T.UINT32, 10000), (T.STRING, "10000"), (T.BOOL, False)]
HOSTILE_STRINGS = [(T.STRING, v) for v in ("", "none", "linear", "yarn", "longrope", "YARN", "bogus", "x" * 5000,
                                           "llama\x00", "\u00e9\u00e8", "gpt2", "bert", "mamba", "unknown-arch")] + [
                   (T.UINT32, 2), (T.ARRAY, (T.STRING, struct.pack("<Q", 4) + b"yarn", 1))]


def _hostile_records(rng: random.Random, rec: dict) -> str:
    choice = rng.randrange(16)
    r = json.loads(json.dumps(rec))
    if choice >= 14:  # the rope_freqs field (issue 14)
        r["rope_freqs"] = _hostile_freqs_field(rng, r.get("rope_freqs"))
        return json.dumps(r)
    if choice == 0:
        return "[" * rng.choice([10, 1000, 100000]) + "]" * rng.choice([0, 10])
    if choice == 1:
        return json.dumps(rng.choice([None, 1, "x", [], [1, 2], 1.5, True]))
    if choice == 2:
        r["format"] = rng.choice([2, "1", None, 1.0, True])
    elif choice == 3:
        r["keys"] = rng.choice([5, "llama.context_length", [], None, {"llama.context_length": 5}, 1.5])
    elif choice == 4:
        k = rng.choice(list(r.get("keys") or {"x": 1}))
        r.setdefault("keys", {})[k] = rng.choice([{"type": 4}, {"raw": "00"}, {"type": 99, "raw": "00"},
                                                   {"type": 8, "raw": "ff" * 12}, {"type": 9, "raw": "0400000000000000ffffffffffffff0f"},
                                                   {"type": 4, "raw": "zz"}, {"type": 4, "raw": 5}, [1], "x", 7,
                                                   {"type": 4, "raw": "00000000"}, {"type": 6, "raw": "0000c07f"}])
    elif choice == 5:
        r["data_offset"] = rng.choice(["x", None, -1, 1 << 70, 1.5, [], 0, 2**63])
    elif choice == 6:
        r["header_sha256"] = rng.choice([5, None, "", "0" * 64, []])
    elif choice == 7:
        r["padding"] = rng.choice(["zz", 5, "00" * 100000, None, "0", ["00"]])
    elif choice == 8:
        r["at"] = rng.choice([None, 5, "x", [], {"llama.context_length": -1}, {"llama.context_length": "3"},
                              {"llama.context_length": 1 << 40}, {"llama.context_length": True}, {"nope": 0},
                              {"llama.context_length": 1.5}])
    elif choice == 9:
        r.pop(rng.choice(list(r)), None)
    elif choice == 10:
        return json.dumps(r)[: rng.randrange(1, len(json.dumps(r)))]
    elif choice == 11:
        return json.dumps(r) + rng.choice(["x", " ", "\n", "}", "1" * 5000])
    elif choice == 12:
        return json.dumps(r).replace("0", "9" * rng.choice([1, 5000]), 1)
    else:
        r["keys"] = {f"k{i}": None for i in range(rng.choice([0, 1, 1000]))}
    return json.dumps(r)


def mutate_gguf(rng: random.Random, data: bytes, lay: Layout | None) -> bytes:
    try:
        return _mutate_gguf(rng, data, lay)
    except Exception:  # noqa: BLE001 - a mutator corner case (empty list, ...): flip bytes instead
        b = bytearray(data)
        for _ in range(4):
            if b:
                b[rng.randrange(min(len(b), 4096))] = rng.randrange(256)
        return bytes(b)


def _mutate_gguf(rng: random.Random, data: bytes, lay: Layout | None) -> bytes:
    ops = rng.randrange(1, 4)
    buf = bytearray(data)
    for _ in range(ops):
        lay = lay if lay is not None and bytes(buf) == data else layout(bytes(buf))
        hdr_end = lay.h.data_offset if lay else min(len(buf), 4096)
        op = rng.choices(["flip", "field", "trunc", "kv", "semantic", "record", "insert", "splice", "factors"],
                         [18, 25, 6, 14, 20, 9, 6, 2, 8])[0]
        if op == "flip" or (lay is None and op not in ("trunc",)):
            for _ in range(rng.choice([1, 1, 2, 4, 16])):
                if not buf:
                    break
                i = rng.randrange(min(len(buf), hdr_end + 64))
                buf[i] = buf[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
        elif op == "field":
            off, size, kind = rng.choice(lay.fields)
            if size in (4, 8):
                v = _edge(rng, size)
                if kind == "type" or kind == "arr_type":
                    v = rng.choice(list(range(0, 16)) + [255, 0xFFFFFFFF])
                elif kind in ("str_len", "key_len", "name_len", "arr_str_len", "arr_count") and rng.random() < 0.5:
                    cur = struct.unpack_from("<Q", buf, off)[0]
                    v = max(0, cur + rng.choice([-2, -1, 1, 2, 8, len(buf)]))
                buf[off:off + size] = v.to_bytes(size, "little", signed=False) if v < (1 << (8 * size)) else bytes([255]) * size
            else:
                buf[off:off + size] = bytes(rng.randrange(256) for _ in range(size))
        elif op == "trunc":
            cut = rng.randrange(0, max(1, min(len(buf), hdr_end + 256)))
            del buf[cut:]
        elif op == "kv":
            buf = bytearray(_kv_op(rng, bytes(buf), lay))
        elif op == "semantic":
            buf = bytearray(_semantic(rng, bytes(buf), lay))
        elif op == "record":
            buf = bytearray(_record_op(rng, bytes(buf), lay))
        elif op == "insert":
            buf = bytearray(_insert_crafted(rng, bytes(buf), lay))
        elif op == "factors":
            buf = bytearray(factors_op(rng, bytes(buf), lay))
        elif op == "splice":
            a = rng.randrange(len(buf)) if buf else 0
            b = rng.randrange(len(buf)) if buf else 0
            n = rng.randrange(1, 64)
            buf[a:a + n] = bytes(buf[b:b + n])
    return bytes(buf)


def _rebuild(lay: Layout, data: bytes, kvs_raw: list[bytes], fix_count: bool = True, n_kv=None) -> bytes:
    """Re-serialise a header from raw KV entries, keeping the tensor infos and data."""
    h = lay.h
    n = len(kvs_raw) if fix_count else (n_kv if n_kv is not None else len(h.kvs))
    head = b"GGUF" + struct.pack("<IQQ", h.version, len(h.tensors), n) + b"".join(kvs_raw) + h.tensor_info_raw
    align = h.alignment
    head += bytes(-len(head) % align)
    return head + data[h.data_offset:]


def _kv_op(rng, data, lay):
    raws = [kv.raw for kv in lay.h.kvs]
    if not raws:
        return data
    i = rng.randrange(len(raws))
    op = rng.randrange(5)
    if op == 0:
        del raws[i]
    elif op == 1:
        raws.insert(rng.randrange(len(raws) + 1), raws[i])  # duplicate key
    elif op == 2:
        j = rng.randrange(len(raws))
        raws[i], raws[j] = raws[j], raws[i]
    elif op == 3:  # same key, another type tag (payload left as it was)
        kv = lay.h.kvs[i]
        kl = 8 + len(kv.key.encode())
        raws[i] = raws[i][:kl] + struct.pack("<I", rng.choice(list(range(13)) + [13, 99])) + raws[i][kl + 4:]
    else:
        raws = raws[:i]
    return _rebuild(lay, data, raws, fix_count=rng.random() < 0.8)


def _semantic(rng, data, lay):
    """Give one RoPE-relevant key a hostile type or value (or add it)."""
    arch = lay.h.get("general.architecture")
    arch = arch if isinstance(arch, str) else "llama"
    key, pool = rng.choice([
        ("general.architecture", HOSTILE_STRINGS),
        (f"{arch}.context_length", HOSTILE_INTS),
        (f"{arch}.embedding_length", HOSTILE_INTS),
        (f"{arch}.attention.head_count", HOSTILE_INTS),
        (f"{arch}.attention.key_length", HOSTILE_INTS),
        (f"{arch}.rope.dimension_count", HOSTILE_INTS),
        (f"{arch}.rope.freq_base", HOSTILE_FLOATS),
        (f"{arch}.rope.scaling.type", HOSTILE_STRINGS),
        (f"{arch}.rope.scaling.factor", HOSTILE_FLOATS),
        (f"{arch}.rope.scale_linear", HOSTILE_FLOATS),
        (f"{arch}.rope.scaling.original_context_length", HOSTILE_INTS),
        (f"{arch}.rope.scaling.attn_factor", HOSTILE_FLOATS),
        ("general.alignment", HOSTILE_INTS),
        ("ropepatch.ctx", HOSTILE_INTS + HOSTILE_STRINGS),
        ("ropepatch.alpha", HOSTILE_FLOATS + HOSTILE_STRINGS),
        ("ropepatch.method", HOSTILE_STRINGS),
        ("ropepatch.version", HOSTILE_STRINGS + HOSTILE_INTS),
        ("ropepatch.reserved", HOSTILE_INTS),
        ("ropepatch.unset.{arch}.rope.scaling.type", HOSTILE_INTS),
    ])
    t, v = rng.choice(pool)
    try:
        new = make_kv(key, t, v).raw
    except (struct.error, OverflowError, ValueError):
        return data
    raws = [kv.raw for kv in lay.h.kvs]
    idx = [i for i, kv in enumerate(lay.h.kvs) if kv.key == key]
    if idx and rng.random() < 0.85:
        raws[idx[0]] = new
    else:
        raws.insert(rng.randrange(len(raws) + 1), new)
    return _rebuild(lay, data, raws)


def _record_op(rng, data, lay):
    kv = lay.h.entry("ropepatch.original")
    if kv is None or not isinstance(kv.value, str):
        return _semantic(rng, data, lay)
    try:
        rec = json.loads(kv.value)
    except (ValueError, RecursionError):
        rec = {}
    text = _hostile_records(rng, rec if isinstance(rec, dict) else {})
    raws = [make_kv("ropepatch.original", T.STRING, text).raw if k.key == "ropepatch.original" else k.raw
            for k in lay.h.kvs]
    return _rebuild(lay, data, raws)


def _insert_crafted(rng, data, lay):
    """An entry whose own length fields lie."""
    key = rng.choice([b"general.name", b"x", b"llama.context_length", b"\xff\xfe", b""])
    kind = rng.randrange(6)
    if kind == 0:  # string value with an absurd length
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, rng.choice(U64_EDGES)) + b"abc"
    elif kind == 1:  # array with an absurd count
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, rng.choice([0, 4, 6, 8, 10, 12]), rng.choice(U64_EDGES))
    elif kind == 2:  # nested array
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1) + b"\0" * 4
    elif kind == 3:  # string array whose strings run past the end
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 3) + struct.pack("<Q", 2) + b"ab" + struct.pack("<Q", 1 << 40)
    elif kind == 4:  # array of many empty strings (a long loop, bounded by the file size)
        n = rng.choice([1000, 100000])
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, n) + bytes(8 * n)
    else:  # key length lies
        raw = struct.pack("<Q", rng.choice(U64_EDGES)) + key + struct.pack("<I", 4) + b"\0" * 4
    raws = [kv.raw for kv in lay.h.kvs]
    raws.insert(rng.randrange(len(raws) + 1), raw)
    return _rebuild(lay, data, raws)


# ---- per-pair factors (issue 14): rope_freqs.weight and the records around it --------------

ROPE_FREQS = "rope_freqs.weight"
LLAMA3 = (1.0, 1.0, 1.0, 1.25, 2.0, 4.0, 8.0, 8.0)
HOSTILE_FACTORS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-45, 3.4e38, 1.0, 8.0]
HOSTILE_OPTIONS = ["points: 1, 2", "[1,2]", "{}", "null", '{"points":[NaN,2]}', '{"points":[1,1e400]}',
                   '{"points":"1,2"}', '{"points":[[1],[2]]}', '{"beta_fast":true}', '{"points":[3,1]}',
                   '{"points":[]}', '{"points":[0,0]}', '{"bogus":1}', '{"beta_fast":-5,"beta_slow":1}',
                   '{"points":[1,2],"replace_scaling":"yes"}', '{"points":[1,2],"replace_scaling":true}',
                   '{"points":[' + ",".join(["1"] * 70000) + "]}", "{" * 5000]


def with_rope_freqs(data: bytes, values, ggml_type: int = 0, shape=None, name: str = ROPE_FREQS) -> bytes:
    """``data`` with a llama3-style rope_freqs.weight (F32, or F16 with ``ggml_type=1``; or the
    tensor ``name``) holding ``values`` appended: its info after the others, its bytes after the
    data's padded end."""
    from ropepatch.formats.gguf.header import TensorInfo
    from ropepatch.formats.gguf.tensors import data_size, encode_tensor_info

    h = parse_header(data, "seed", len(data))
    off = data_size(h.tensors, h.alignment) or 0
    blob = struct.pack(f"<{len(values)}{'e' if ggml_type == 1 else 'f'}", *values)
    info = encode_tensor_info(TensorInfo(name, shape or (len(values),), ggml_type, off))
    head = serialize_header(h.version, h.kvs, h.tensor_info_raw + info, len(h.tensors) + 1)
    head += bytes(-len(head) % h.alignment)
    body = data[h.data_offset:]
    body += bytes(max(0, off - len(body))) + blob + bytes(-len(blob) % h.alignment)
    return head + body


def small_longrope() -> bytes:
    """A small llama file with LongRoPE: type longrope, original ctx 32, long and short factors."""
    data = small_gguf(extra=[("llama.rope.scaling.type", T.STRING, "longrope"),
                             ("llama.rope.scaling.original_context_length", T.UINT32, 32)])
    data = with_rope_freqs(data, LLAMA3, name="rope_factors_long.weight")
    return with_rope_freqs(data, (1.0,) * 8, name="rope_factors_short.weight")


def small_phi3_longrope() -> bytes:
    """A small phi3 file as Phi-3-128k GGUFs are: NO scaling type (phi3 applies the pair anyway),
    original ctx 32, long and short factors."""
    data = small_gguf("phi3", extra=[("phi3.rope.scaling.original_context_length", T.UINT32, 32)])
    data = with_rope_freqs(data, LLAMA3, name="rope_factors_long.weight")
    return with_rope_freqs(data, (1.0,) * 8, name="rope_factors_short.weight")


def factor_seeds(work: str) -> list[tuple[str, bytes]]:
    """A llama3-style small file, LongRoPE ones (llama with the type, phi3 without), and small
    files patched with ntk-parts / factors (the tensor appended, or composed with / replacing the
    file's own, or LongRoPE's long factors multiplied) or with yarn over phi3's pair."""
    l3 = with_rope_freqs(small_gguf(), LLAMA3)
    lr, phi3 = small_longrope(), small_phi3_longrope()
    out = [("small-llama3", l3), ("small-longrope", lr), ("small-phi3-longrope", phi3)]
    for name, data, method, opts, rs in (("small-llama", small_gguf(), "ntk-parts", None, False),
                                         ("small-longrope", lr, "ntk-parts", None, False),
                                         ("small-phi3-longrope", phi3, "ntk-parts", None, False),
                                         ("small-phi3-longrope", phi3, "yarn", None, True),
                                         ("small-longrope", lr, "factors", {"points": (1.0, 2.0)}, False),
                                         ("small-llama", small_gguf(), "factors", {"points": (1.0, 2.0, 4.0)}, False),
                                         ("small-llama3", l3, "ntk-parts", {"beta_fast": 16.0}, False),
                                         ("small-llama3", l3, "factors", {"points": (1.0, 3.0)}, True)):
        p = os.path.join(work, "seed.gguf")
        Path(p).write_bytes(data)
        gp.patch_gguf(p, 512, method, options=opts, replace_scaling=rs)
        out.append((f"{name}+{method}{'+rs' if rs else ''}", Path(p).read_bytes()))
    return out


def hostile_options(rng: random.Random, method: str) -> dict | None:
    """Method options for a patch call (mostly none; hostile ones for the factor methods)."""
    if method == "factors" and rng.random() < 0.5:
        return {"points": rng.choice([(1.0, 2.0), (1.0, 1.5, 3.0), (2.0, 1.0), (1.0, float("nan")), (1.0,),
                                      (1.0, 1e300), (0.0, 1.0), tuple(range(1, 40))])}
    if method == "ntk-parts" and rng.random() < 0.5:
        return {rng.choice(["beta_fast", "beta_slow"]): rng.choice([32.0, 0.5, -1.0, 0.0, float("nan"), 1e300])}
    return None


def _hostile_freqs_field(rng: random.Random, cur) -> object:
    n = cur.get("data_length", 0) if isinstance(cur, dict) and isinstance(cur.get("data_length"), int) else 0
    return rng.choice([None, 5, "x", [], {}, {"raw": "zz"}, {"raw": "0000803"}, {"raw": "0000803f"},
                       {"raw": "0000803f" * 8}, {"raw": "0000c07f" * 8}, {"raw": "00" * (1 << 18)},
                       {"data_length": -1}, {"data_length": 0}, {"data_length": 1 << 64}, {"data_length": 1.5},
                       {"data_length": True}, {"data_length": "1"}, {"raw": "0000803f" * 8, "data_length": 1},
                       {"raw": "0000803f" * 8, "tensor": "rope_factors_long.weight"},
                       {"raw": "0000803f" * 8, "tensor": "rope_factors_short.weight"},
                       {"raw": "0000803f" * 8, "tensor": ROPE_FREQS}, {"raw": "0000803f" * 8, "tensor": 5},
                       {"data_length": max(0, n + rng.choice([-64, -32, -8, -1, 1, 8, 32]))}])


def factors_op(rng: random.Random, data: bytes, lay) -> bytes:
    """A per-pair-factor mutation: the rope_freqs tensor's values, type, shape, offset or a
    duplicate of its info; ``ropepatch.options`` garbage; or a rope_freqs added to a file."""
    t = next((x for x in lay.h.tensors if x.name in (ROPE_FREQS, "rope_factors_long.weight")), None)
    kind = rng.randrange(7)
    if kind == 0 or (t is None and kind < 5):
        if t is not None or lay.h.get("general.architecture") is None:
            return _set_options(rng, data, lay)
        n = rng.choice([8, 8, 4, 16])
        vals = [rng.choice(HOSTILE_FACTORS) for _ in range(n)] if rng.random() < 0.5 else list(LLAMA3[:n]) * (n // 8 or 1)
        return with_rope_freqs(data, vals[:n], rng.choice([0, 0, 0, 1]))
    if kind == 5:
        return _set_options(rng, data, lay)
    if t is None:
        return data
    from ropepatch.formats.gguf.tensors import encode_tensor_info

    enc = encode_tensor_info(t)
    i = data.find(enc, lay.tstart, lay.h.data_offset)
    if i < 0:
        return data
    buf = bytearray(data)
    end = i + len(enc)
    if kind == 1:  # values
        at = lay.h.data_offset + t.offset
        for j in range(rng.randrange(1, 4)):
            k = at + 4 * rng.randrange(max(1, t.shape[0] if t.shape else 1))
            buf[k:k + 4] = struct.pack("<f", rng.choice(HOSTILE_FACTORS))
    elif kind == 2:  # type
        buf[end - 12:end - 8] = struct.pack("<I", rng.choice([1, 8, 30, 99, 0xFFFFFFFF]))
    elif kind == 3:  # shape
        dim = i + 8 + len(t.name.encode()) + 4
        buf[dim:dim + 8] = struct.pack("<Q", rng.choice([0, 1, 4, 16, 1 << 16, (1 << 16) + 1, 1 << 63]))
    elif kind == 4:  # offset: another tensor's, misaligned, past the end
        other = rng.choice(lay.h.tensors).offset
        buf[end - 8:end] = struct.pack("<Q", rng.choice([0, other, t.offset + 1, t.offset + 32, 1 << 40]))
    else:  # a duplicate info (count fixed)
        buf[end:end] = enc
        buf[8:16] = struct.pack("<Q", len(lay.h.tensors) + 1)
        head_end = lay.h.data_offset - len(lay.h.padding)
        pad = -(head_end + len(enc)) % lay.h.alignment
        return bytes(buf[:head_end + len(enc)]) + bytes(pad) + data[lay.h.data_offset:]
    return bytes(buf)


def _set_options(rng: random.Random, data: bytes, lay) -> bytes:
    new = make_kv("ropepatch.options", T.STRING, rng.choice(HOSTILE_OPTIONS)).raw
    raws = [new if kv.key == "ropepatch.options" else kv.raw for kv in lay.h.kvs]
    if lay.h.entry("ropepatch.options") is None:
        raws.insert(rng.randrange(len(raws) + 1), new)
    return _rebuild(lay, data, raws)


# ---- GGUF targets -------------------------------------------------------------------------


def _budget(data: bytes) -> int:
    return MiB + 4 * len(data)


def _listing(d: str) -> list:
    return sorted((n, os.stat(os.path.join(d, n)).st_size) for n in os.listdir(d))


def check_gguf(stats: Stats, rng: random.Random, data: bytes, work: str, save=None, timeout=5.0,
               deep: bool = True) -> None:
    stats.cases += 1
    budget = _budget(data)
    guarded(stats, "parse_header", lambda: parse_header(data, "fuzz.gguf", len(data)), data, budget, timeout, save, ".gguf")
    d = os.path.join(work, "case")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    path = os.path.join(d, "model.gguf")
    with open(path, "wb") as f:
        f.write(data)
    before = _listing(d)

    def wrote() -> bool:
        return _listing(d) != before or Path(path).read_bytes() != data

    guarded(stats, "read_header", lambda: read_header(path), data, budget, timeout, save, ".gguf")
    info = guarded(stats, "inspect_gguf", lambda: gp.inspect_gguf(path), data, budget, timeout, save, ".gguf")
    if info is not None:
        for m in METHODS:
            ctx = rng.choice([info.original.n_ctx_train * 2, info.original.n_ctx_train + 1, 1 << 20, 0xFFFFFFFF])
            guarded(stats, "make_plan", lambda: make_plan(info.original, ctx, m), data, budget, timeout, save, ".gguf")
    method = rng.choice(list(METHODS))
    ctx = rng.choice([256, 512, 1024, 4096, 1 << 20, 0xFFFFFFFF, 1 << 33, 129, 1])
    alpha = rng.choice([None, None, None, 1.0, 2.5, 1e30, float("inf")])
    rs = rng.random() < 0.3
    opts = hostile_options(rng, method)
    res = guarded(stats, "patch_gguf(dry_run)", lambda: gp.patch_gguf(path, ctx, method, alpha, dry_run=True, replace_scaling=rs,
                                                                      options=opts), data, budget, timeout, save, ".gguf")
    guarded(stats, "revert_gguf(dry_run)", lambda: gp.revert_gguf(path, dry_run=True), data, budget, timeout, save, ".gguf")
    flags = ["--factors", "1,2,4"] if method == "factors" and rng.random() < 0.5 else []
    argv = rng.choice([["inspect", path], ["gguf", path, "--ctx", str(ctx), "--method", method, "--dry-run", *flags],
                       ["plan", path, "--ctx", str(ctx)], ["revert", path, "--dry-run"]])
    guarded(stats, "cli " + argv[0], _cli(argv + (["--json"] if rng.random() < 0.4 else [])), data, budget, timeout, save, ".gguf")
    if wrote():
        stats.finding("wrote", "dry-run entry points", "the input file or its directory changed", data, save, ".gguf")
        return
    if res is not None and deep:
        _deep(stats, rng, data, path, d, ctx, method, alpha, rs, save, timeout, opts)


def _deep(stats, rng, data, path, d, ctx, method, alpha, rs, save, timeout, opts=None) -> None:
    """The dry run accepted the input: write the patch for real (to a copy), re-patch it in
    place, revert it: every step must work and the revert must give the input's bytes."""
    out = os.path.join(d, "out.gguf")
    back = os.path.join(d, "back.gguf")
    orig = os.path.join(d, "orig.gguf")
    budget = _budget(data) + 2 * len(data)

    def run():
        # what a revert must give: the input itself, or, when the input was patched already,
        # what reverting the input gives (None: the input's own record cannot be reverted)
        if gp.inspect_gguf(path).provenance is None:
            expect = data
        else:
            try:
                gp.revert_gguf(path, out=orig)
                expect = Path(orig).read_bytes()
            except RopepatchError:
                expect = None
        r = gp.patch_gguf(path, ctx, method, alpha, out=out, replace_scaling=rs, options=opts)
        read_header(out)
        gp.inspect_gguf(out)
        prov = gp.inspect_gguf(out).provenance
        if prov is not None:  # a second, in-place patch with another method, then revert
            m2 = rng.choice(list(METHODS))
            with contextlib.suppress(RopepatchError):
                gp.patch_gguf(out, max(ctx, 2) * 2 if ctx < 0x7FFFFFFF else ctx, m2, replace_scaling=rs)
            gp.revert_gguf(out, out=back)
            if expect is not None and Path(back).read_bytes() != expect:
                raise AssertionError("revert of the written patch does not give the original bytes")
        return r

    try:
        guarded(stats, "patch+repatch+revert", run, data, budget, timeout, save, ".gguf")
    finally:
        if Path(path).read_bytes() != data:
            stats.finding("wrote", "patch -o", "patch to a copy changed the input", data, save, ".gguf")


# ---- safetensors --------------------------------------------------------------------------


def st_seeds() -> list[tuple[str, bytes]]:
    seeds = []
    for f in ST_FIXTURES:
        p = FIXTURES / f
        if p.exists():
            seeds.append((f, p.read_bytes()))
    # a tiny one: 3 tensors and metadata
    hdr = {"__metadata__": {"format": "pt", "note": "x"},
           "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
           "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
           "c": {"dtype": "I8", "shape": [0], "data_offsets": [22, 22]}}
    text = json.dumps(hdr).encode()
    text += b" " * (-len(text) % 8)
    seeds.append(("small.safetensors", struct.pack("<Q", len(text)) + text + bytes(range(22))))
    return seeds


def mutate_st(rng: random.Random, data: bytes) -> bytes:
    try:
        return _mutate_st(rng, data)
    except Exception:  # noqa: BLE001 - a mutator corner case: truncate instead
        return data[: rng.randrange(len(data) + 1)]


def _mutate_st(rng: random.Random, data: bytes) -> bytes:
    n = struct.unpack_from("<Q", data)[0] if len(data) >= 8 else 0
    text = data[8:8 + n]
    body = data[8 + n:]
    op = rng.randrange(9)
    if op == 0:  # length prefix
        v = rng.choice(U64_EDGES + [n - 1, n + 1, n + 8, len(data), len(data) - 8, 100_000_001])
        return struct.pack("<Q", v % (1 << 64)) + data[8:]
    if op == 1:  # byte flips in the JSON
        b = bytearray(text)
        for _ in range(rng.choice([1, 2, 8])):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return struct.pack("<Q", len(b)) + bytes(b) + body
    if op == 2:
        return data[: rng.randrange(len(data) + 1)]
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return data
    if not isinstance(obj, dict) or not obj:
        return data
    key = rng.choice(list(obj))
    if op == 3:  # a tensor entry field
        ent = obj[key]
        if isinstance(ent, dict) and key != "__metadata__":
            f = rng.choice(["dtype", "shape", "data_offsets"])
            ent[f] = rng.choice([None, 5, "F32", "F4", "F6_E2M3", "XX", [], [1 << 64], [-1], [0, 1 << 63], [2**70],
                                 [1, 0], [0], [0, 0, 0], [True, False], 1.5, {"a": 1}, [1.0, 2.0], [3] * 1000,
                                 [2**31] * 4, "[" * 10])
    elif op == 4:  # deep nesting somewhere
        obj[key] = json.loads("[" * 50 + "]" * 50) if rng.random() < 0.5 else None
        raw = json.dumps(obj)
        if rng.random() < 0.5:
            depth = rng.choice([1000, 100000])
            raw = raw[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        t = raw.encode()
        return struct.pack("<Q", len(t)) + t + body
    elif op == 5:  # metadata values of other types
        obj["__metadata__"] = rng.choice([None, 5, [], {"a": 1}, {"a": None}, {"a": "b" * 10000}, "x", {"a": {"b": "c"}}])
    elif op == 6:  # duplicate key (in the text)
        raw = json.dumps(obj)
        first = raw[1:raw.index("}") + 1] if "}" in raw else ""
        raw = "{" + first + "," + raw[1:]
        t = raw.encode()
        return struct.pack("<Q", len(t)) + t + body
    elif op == 7:  # drop or rename a tensor
        if rng.random() < 0.5:
            obj.pop(key)
        else:
            obj[key + "\u00e9" * rng.choice([1, 100])] = obj.pop(key)
    else:  # trailing garbage / padding variants after the JSON
        raw = json.dumps(obj) + rng.choice(["    ", "\n", "\x00\x00", "x", " }", "\t\r\n", "\u00a0"])
        t = raw.encode()
        return struct.pack("<Q", len(t)) + t + body
    t = json.dumps(obj).encode()
    t += b" " * (-len(t) % 8) if rng.random() < 0.7 else b""
    return struct.pack("<Q", len(t)) + t + body


def check_st(stats: Stats, data: bytes, work: str, save=None, timeout=5.0) -> None:
    from ropepatch.formats import safetensors as sf

    stats.cases += 1
    d = os.path.join(work, "st")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    path = os.path.join(d, "model.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    hdr = guarded(stats, "safetensors read_header", lambda: sf.read_header(path), data, _budget(data) * 3, timeout, save, ".safetensors")
    if Path(path).read_bytes() != data or os.listdir(d) != ["model.safetensors"]:
        stats.finding("wrote", "safetensors read_header", "the input changed", data, save, ".safetensors")
    if hdr is None:
        return
    try:  # differential oracle: the reference implementation must accept it too
        from safetensors import safe_open

        with safe_open(path, "np") as f:
            names = sorted(f.keys())
        if names != sorted(t.name for t in hdr.tensors):
            stats.disagreements["tensor names differ from the safetensors library"] += 1
    except ImportError:  # pragma: no cover
        pass
    except Exception as e:  # noqa: BLE001
        stats.disagreements[f"ropepatch accepts, safetensors refuses: {str(e).splitlines()[0][:90]}"] += 1


# ---- command-line numbers -----------------------------------------------------------------

HOSTILE_NUMBERS = ["0", "-1", "1", "1.0", "nan", "inf", "-inf", "1e39", "1e31", "1e300", "1e-300", "4294967295",
                   "4294967296", "99999999999999999999999", "0x10", "1_000", " 5", "", "2.5", "1e308", "-0"]


def check_cli_numbers(stats: Stats, rng: random.Random, seed_path: str, timeout=5.0, save=None) -> None:
    stats.cases += 1
    if rng.random() < 0.5:
        argv = ["gguf", seed_path, "--dry-run", "--ctx", rng.choice(HOSTILE_NUMBERS + ["1024", "512"]),
                "--method", rng.choice(list(METHODS))]
    else:
        argv = ["plan", "--base", rng.choice(HOSTILE_NUMBERS + ["10000"]), "--rope-dim", rng.choice(HOSTILE_NUMBERS + ["64"]),
                "--orig-ctx", rng.choice(HOSTILE_NUMBERS + ["4096"]), "--ctx", rng.choice(HOSTILE_NUMBERS + ["16384"])]
    if rng.random() < 0.7:
        argv += ["--alpha", rng.choice(HOSTILE_NUMBERS)]
    if rng.random() < 0.3:
        argv += ["--json"]
    data = " ".join(argv).encode()
    guarded(stats, "cli " + argv[0], _cli(argv), data, 8 * MiB, timeout, save, ".argv")


def _cli(argv: list[str]):
    """A call of the real command line (in process): exit 0, or 2 with exactly one error line."""
    from ropepatch import cli

    def run():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("ropepatch: error")]
        if rc not in (0, 2) or (rc == 2 and len(errors) != 1) or "Traceback" in err.getvalue():
            raise AssertionError(f"exit status {rc}, stderr {err.getvalue()[:300]!r}")
        if "--json" in argv and rc == 0:
            json.loads(out.getvalue())
        return rc

    return run


# ---- the regression corpus (tests/fuzz_corpus) ---------------------------------------------


def _with_kvs(data: bytes, edit) -> bytes:
    """``data`` with its metadata entries rewritten by ``edit(list_of_raw_entries, header)``."""
    lay = layout(data)
    raws = edit([kv.raw for kv in lay.h.kvs], lay.h)
    return _rebuild(lay, data, raws)


def _set(key, t, v):
    def edit(raws, h):
        new = make_kv(key, t, v).raw
        idx = [i for i, kv in enumerate(h.kvs) if kv.key == key]
        if idx:
            raws[idx[0]] = new
        else:
            raws.append(new)
        return raws
    return edit


def _patched(data: bytes, ctx=512, method="ntk") -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.gguf")
        Path(p).write_bytes(data)
        gp.patch_gguf(p, ctx, method)
        return Path(p).read_bytes()


def _record(data: bytes, change) -> bytes:
    """A patched file whose undo record (JSON) went through ``change(dict) -> str``."""
    def edit(raws, h):
        i = next(i for i, kv in enumerate(h.kvs) if kv.key == "ropepatch.original")
        raws[i] = make_kv("ropepatch.original", T.STRING, change(json.loads(h.kvs[i].value))).raw
        return raws
    return _with_kvs(data, edit)


def legacy_patched(data: bytes, ctx=512, method="yarn") -> bytes:
    """A patch in the layout ropepatch wrote before touched keys moved to the header's tail
    (original keys in place, new keys appended, record without "at"): such files must still
    re-patch (migrated by one rewrite) and revert exactly."""
    import ropepatch
    from ropepatch.formats.gguf import keys as K

    h = parse_header(data, "legacy", len(data))
    arch = h.get("general.architecture")
    info_orig = params_from_kvs({kv.key: kv for kv in h.kvs}, [t.name for t in h.tensors], "legacy")
    plan = make_plan(info_orig, ctx, method)
    new_kvs = apply_params(list(h.kvs), params_to_kvs(plan))
    record = new_record(h, arch).to_json()
    rp = [make_kv(K.RP_VERSION, T.STRING, ropepatch.__version__), make_kv(K.RP_METHOD, T.STRING, method),
          make_kv(K.RP_CTX, T.UINT32, ctx), make_kv(K.RP_ALPHA, T.FLOAT64, float(plan.alpha)),
          make_kv(K.RP_ORIGINAL, T.STRING, record)]
    header, _ = layout_header(h, new_kvs + rp, rewrite_layout=True)
    return header + data[h.data_offset:]


def corpus_cases() -> dict[str, bytes]:
    """Small inputs that once crashed ropepatch or pin an edge of the format (a few KB each)."""
    base = small_gguf()
    patched = _patched(base)
    u64 = lambda v: struct.pack("<Q", v)  # noqa: E731
    first_key = 24  # offset of the first key's length
    arr = make_kv("fuzz.scores", T.ARRAY, (T.FLOAT32, b"\0" * 8, 2)).raw
    lay = layout(base)
    tinfo = lay.tstart
    cases = {
        # found by fuzzing (crashed before the fix; now one clean line)
        "record-deep-json.gguf": _record(patched, lambda r: "[" * 3000),
        "record-keys-null.gguf": _record(patched, lambda r: json.dumps({**r, "keys": None})),
        "record-padding-int.gguf": _record(patched, lambda r: json.dumps({**r, "padding": 5})),
        "record-padding-not-hex.gguf": _record(patched, lambda r: json.dumps({**r, "padding": "zz"})),
        "record-data-offset-huge.gguf": _record(patched, lambda r: json.dumps({**r, "data_offset": 1 << 62})),
        "record-data-offset-string.gguf": _record(patched, lambda r: json.dumps({**r, "data_offset": "x"})),
        "record-at-damaged.gguf": _record(patched, lambda r: json.dumps({**r, "at": {"llama.context_length": "3"}})),
        "rp-alpha-string.gguf": _with_kvs(patched, _set("ropepatch.alpha", T.STRING, "bert")),
        "rp-ctx-array.gguf": _with_kvs(patched, _set("ropepatch.ctx", T.ARRAY, (T.UINT32, u64(0)[:4], 1))),
        "rp-reserved-bool.gguf": _with_kvs(patched, _set("ropepatch.reserved", T.BOOL, True)),
        "rp-keys-without-record.gguf": _with_kvs(base, _set("ropepatch.version", T.STRING, "0.1.0")),
        "ctx-zero.gguf": _with_kvs(base, _set("llama.context_length", T.UINT32, 0)),
        "ctx-negative-int8.gguf": _with_kvs(base, _set("llama.context_length", T.INT8, -128)),
        "base-float32-max.gguf": _with_kvs(base, _set("llama.rope.freq_base", T.FLOAT32, 3.4028234663852886e38)),
        "ctx-as-array.gguf": _with_kvs(base, _set("llama.context_length", T.ARRAY, (T.UINT32, struct.pack("<I", 128), 1))),
        "duplicate-key.gguf": _with_kvs(base, lambda raws, h: raws + [make_kv("llama.context_length", T.UINT32, 4096).raw]),
        # format edges (clean errors)
        "n-kv-2pow63.gguf": base[:16] + u64(1 << 63) + base[24:],
        "key-length-2pow62.gguf": base[:first_key] + u64(1 << 62) + base[first_key + 8:],
        "array-count-2pow60.gguf": _with_kvs(base, lambda raws, h: raws + [arr[:-8 - 12] + struct.pack("<IQ", 6, 1 << 60) + arr[-8:]]),
        "nested-array.gguf": _with_kvs(base, lambda raws, h: raws + [u64(1) + b"x" + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1) + bytes(4)]),
        "string-array-past-end.gguf": _with_kvs(base, lambda raws, h: raws + [u64(1) + b"y" + struct.pack("<IIQ", 9, 8, 3) + u64(2) + b"ab" + u64(1 << 40)]),
        "unknown-value-type.gguf": _with_kvs(base, lambda raws, h: raws + [u64(1) + b"z" + struct.pack("<I", 77) + bytes(4)]),
        "tensor-5-dims.gguf": base[:tinfo + 8 + len("token_embd.weight")] + struct.pack("<I", 5) + base[tinfo + 12 + len("token_embd.weight"):],
        "truncated-in-header.gguf": base[:300],
        "truncated-data.gguf": base[:-40],
        "big-endian.gguf": base[:4] + struct.pack(">I", 3) + base[8:],
        "version-1.gguf": base[:4] + struct.pack("<I", 1) + base[8:],
        "alignment-not-power-of-2.gguf": _with_kvs(base, _set("general.alignment", T.UINT32, 48)),
        "empty-string-array-500.gguf": _with_kvs(base, lambda raws, h: raws + [u64(1) + b"e" + struct.pack("<IIQ", 9, 8, 500) + bytes(8 * 500)]),
        # valid inputs that must give correct results (patch, re-patch, revert exactly)
        "valid-small.gguf": base,
        "valid-v2.gguf": small_gguf(version=2),
        "valid-alignment-64.gguf": small_gguf(alignment=64),
        "valid-patched.gguf": patched,
        "valid-legacy-layout.gguf": legacy_patched(base),
    }
    cases.update(factor_corpus_cases(base))
    st = dict(st_seeds())["small.safetensors"]
    n = struct.unpack_from("<Q", st)[0]
    hdr = json.loads(st[8:8 + n])

    def st_with(text: str, body: bytes = st[8 + n:]) -> bytes:
        t = text.encode()
        return u64(len(t)) + t + body

    cases.update({
        "st-valid-small.safetensors": st,
        "st-length-huge.safetensors": u64((1 << 64) - 1) + st[8:],
        "st-length-past-end.safetensors": u64(len(st)) + st[8:],
        "st-not-utf8.safetensors": st_with(json.dumps(hdr)).replace(b'"note"', b'"\xff\xfe\xfd\xfc"'),
        "st-duplicate-key.safetensors": st_with('{"a":' + json.dumps(hdr["a"]) + "," + json.dumps(hdr)[1:]),
        "st-overlap.safetensors": st_with(json.dumps({**hdr, "b": {**hdr["b"], "data_offsets": [14, 20]}})),
        "st-metadata-not-string.safetensors": st_with(json.dumps({**hdr, "__metadata__": {"a": 1}})),
        "st-truncated.safetensors": st[:20],
        # found open in ropepatch/safetensors_file.py (a crash instead of a clean error); fixed
        # since in what is now ropepatch/formats/safetensors.py
        "st-deep-nesting.safetensors": st_with(json.dumps(hdr)[:-1] + ', "deep": ' + "[" * 3000 + "]" * 3000 + "}"),
        "st-dtype-list.safetensors": st_with(json.dumps({**hdr, "a": {**hdr["a"], "dtype": ["F32"]}})),
    })
    return cases


def factor_corpus_cases(base: bytes) -> dict[str, bytes]:
    """Per-pair factor inputs (issue 14): the first four were accepted (and written to) before
    the fix, the rest pin refusals and valid round trips."""
    from ropepatch.formats.gguf.header import TensorInfo
    from ropepatch.formats.gguf.tensors import encode_tensor_info

    l3 = with_rope_freqs(base, LLAMA3)
    ntkp = _patched(base, 512, "ntk-parts")
    lr_ntkp = _patched(small_longrope(), 512, "ntk-parts")
    lay = layout(l3)
    t = lay.h.tensors[-1]
    dup = encode_tensor_info(TensorInfo(t.name, t.shape, t.ggml_type, t.offset + 32))
    head_end = lay.h.data_offset - len(lay.h.padding)
    dup_file = (l3[:8] + struct.pack("<Q", len(lay.h.tensors) + 1) + l3[16:head_end] + dup)
    dup_file += bytes(-len(dup_file) % 32) + l3[lay.h.data_offset:] + struct.pack("<8f", *LLAMA3)
    overlap = l3.replace(encode_tensor_info(t), encode_tensor_info(TensorInfo(t.name, t.shape, 0, 0)), 1)

    def freqs(change):
        return _record(ntkp, lambda r: json.dumps({**r, "rope_freqs": change(r.get("rope_freqs"))}))

    return {
        "factors-duplicate-tensor-name.gguf": dup_file,
        "factors-rope-freqs-overlaps-token-embd.gguf": overlap,
        "factors-record-data-length-short.gguf": freqs(lambda f: {"data_length": f["data_length"] - 8}),
        "factors-record-without-rope-freqs.gguf": _record(ntkp, lambda r: json.dumps(
            {k: v for k, v in r.items() if k != "rope_freqs"})),
        "factors-record-data-length-long.gguf": freqs(lambda f: {"data_length": f["data_length"] + 8}),
        "factors-record-raw-4-values.gguf": freqs(lambda f: {"raw": "0000803f" * 4}),
        "factors-record-not-an-object.gguf": freqs(lambda f: "absent"),
        "factors-rope-freqs-f16.gguf": with_rope_freqs(base, LLAMA3, 1),
        "factors-rope-freqs-nan.gguf": with_rope_freqs(base, (1.0, float("nan"), 1.0, 1.0, 2.0, 2.0, 2.0, 2.0)),
        "factors-rope-freqs-shape-16.gguf": with_rope_freqs(base, LLAMA3 * 2),
        "factors-options-nan.gguf": _with_kvs(ntkp, _set("ropepatch.options", T.STRING, '{"beta_fast":NaN}')),
        "factors-options-unknown-name.gguf": _with_kvs(ntkp, _set("ropepatch.options", T.STRING, '{"bogus":1}')),
        "valid-llama3.gguf": l3,
        "valid-ntk-parts.gguf": ntkp,
        "valid-llama3-factors.gguf": _patched(l3, 512, "factors"),
        "valid-longrope-ntk-parts.gguf": lr_ntkp,
        "factors-longrope-record-names-short.gguf": _record(lr_ntkp, lambda r: json.dumps(
            {**r, "rope_freqs": {**r["rope_freqs"], "tensor": "rope_factors_short.weight"}})),
        "factors-longrope-record-names-rope-freqs.gguf": _record(lr_ntkp, lambda r: json.dumps(
            {**r, "rope_freqs": {"raw": r["rope_freqs"]["raw"]}})),
    }


def write_corpus(d: str) -> None:
    os.makedirs(d, exist_ok=True)
    for name, data in {**corpus_cases(), **_hf().corpus_cases()}.items():
        Path(d, name).write_bytes(data)


# ---- driver -------------------------------------------------------------------------------


@contextlib.contextmanager
def no_fsync():
    """``os.fsync`` as a no-op while fuzzing: the fuzzer judges results, not durability (the
    crash harnesses kill real runs for that), and the HF targets' real patches and reverts would
    otherwise spend most of their time waiting for the disk."""
    saved = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = saved


def _without_fsync(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with no_fsync():
            return fn(*args, **kwargs)

    return run


def _hf():
    import fuzz_hf  # tools/ is on sys.path (as a script, and in tests/formats/test_fuzz.py)

    return fuzz_hf


@_without_fsync
def fuzz(cases: int, seed: int, save: str | None = None, big: bool = True, log=print, timeout: float = 5.0,
         deep_every: int = 1, targets=("gguf", "safetensors", "cli", "hf")) -> Stats:
    rng = random.Random(seed)
    stats = Stats()
    work = tempfile.mkdtemp(prefix="ropepatch-fuzz-")
    old = signal.signal(signal.SIGALRM, _alarm)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        seeds = gguf_seeds(work, big)
        lays = {name: layout(data) for name, data in seeds}
        sts = st_seeds()
        hfs = _hf().seeds() if "hf" in targets else []
        seed_path = os.path.join(work, "cli-seed.gguf")
        with open(seed_path, "wb") as f:
            f.write(seeds[0][1])
        _warm_up(seed_path)
        # every seed as is (valid inputs must give correct results)
        for name, data in seeds if "gguf" in targets else ():
            check_gguf(stats, rng, data, work, save, timeout)
        for name, data in sts if "safetensors" in targets else ():
            check_st(stats, data, work, save, timeout)
        for name, files in hfs:
            _hf().check_hf(sys.modules[__name__], stats, rng, files, work, save, timeout)
        weights = {"gguf": 0.72, "safetensors": 0.2, "cli": 0.08, "hf": 0.25}
        total = sum(weights[t] for t in targets)
        cut_gguf = weights["gguf"] / total if "gguf" in targets else 0.0
        cut_st = cut_gguf + (weights["safetensors"] / total if "safetensors" in targets else 0.0)
        cut_cli = cut_st + (weights["cli"] / total if "cli" in targets else 0.0)
        t0 = time.monotonic()
        for i in range(cases):
            r = rng.random()
            if r < cut_gguf:
                name, data = rng.choice(seeds)
                check_gguf(stats, rng, mutate_gguf(rng, data, lays[name]), work, save, timeout, deep=i % deep_every == 0)
            elif r < cut_st:
                name, data = rng.choice(sts)
                check_st(stats, mutate_st(rng, data), work, save, timeout)
            elif r < cut_cli:
                check_cli_numbers(stats, rng, seed_path, timeout, save)
            else:
                name, files = rng.choice(hfs)
                _hf().check_hf(sys.modules[__name__], stats, rng, _hf().mutate(rng, files), work, save, timeout)
            if log and (i + 1) % 1000 == 0:
                log(f"  {i + 1} cases, {stats.calls} calls, {len(stats.findings)} distinct findings, {time.monotonic() - t0:.0f} s")
    finally:
        signal.signal(signal.SIGALRM, old)
        if started:
            tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _warm_up(path: str) -> None:
    """Import everything the targets import lazily, so imports do not count as allocations."""
    for argv in (["inspect", path], ["inspect", path, "--json"], ["plan", path, "--ctx", "1024"],
                 ["gguf", path, "--ctx", "1024", "--dry-run"], ["revert", path, "--dry-run"],
                 ["plan", "--base", "1e4", "--rope-dim", "64", "--orig-ctx", "4096", "--ctx", "9000"]):
        with contextlib.suppress(Exception, SystemExit):
            _cli(argv)()
    with contextlib.suppress(Exception):
        import safetensors  # noqa: F401

        import ropepatch.formats.safetensors  # noqa: F401
    with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as d:  # the HF targets, once
        hf = _hf()
        m = hf.materialize(hf.model("llama"), d)
        for argv in (["inspect", m, "--json"], ["plan", m, "--ctx", "1024"], ["hf", m, "--ctx", "1024", "--dry-run"],
                     ["revert", m, "--dry-run"], ["hf", m, "--ctx", "1024"], ["revert", m]):
            with contextlib.suppress(Exception, SystemExit):
                _cli(argv)()
        hf._readable(m)


def replay(corpus: str, save: str | None = None, timeout: float = 5.0) -> tuple[Stats, list[str]]:
    """Run every corpus file through its targets (GGUF: .gguf, safetensors: .safetensors, HF
    model directories: .hfmodel.json)."""
    return replay_files([os.path.join(corpus, n) for n in sorted(os.listdir(corpus))], save, timeout)


@_without_fsync
def replay_files(paths: list[str], save: str | None = None, timeout: float = 5.0) -> tuple[Stats, list[str]]:
    rng = random.Random(0)
    stats = Stats()
    work = tempfile.mkdtemp(prefix="ropepatch-replay-")
    old = signal.signal(signal.SIGALRM, _alarm)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    names = []
    try:
        seed = os.path.join(work, "seed.gguf")
        with open(seed, "wb") as f:
            f.write(small_gguf())
        _warm_up(seed)
        for p in paths:
            name = os.path.basename(p)
            data = Path(p).read_bytes()
            if name.endswith(".gguf"):
                check_gguf(stats, rng, data, work, save, timeout)
            elif name.endswith(".safetensors"):
                check_st(stats, data, work, save, timeout)
            elif name.endswith(_hf().EXT):
                _hf().check_hf(sys.modules[__name__], stats, rng, _hf().unbundle(data), work, save, timeout)
            else:
                continue
            names.append(name)
    finally:
        signal.signal(signal.SIGALRM, old)
        if started:
            tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return stats, names


def report(stats: Stats, secs: float) -> str:
    lines = [f"cases {stats.cases}, target calls {stats.calls}, {secs:.0f} s",
             "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.outcomes.items())),
             f"max tracemalloc peak {stats.max_peak / 1024:.0f} KiB, slowest call {stats.max_seconds * 1000:.0f} ms ({stats.slowest})",
             f"distinct findings: {len(stats.findings)}"]
    for sig, (kind, target, detail, sha, n) in stats.findings.items():
        last = [ln for ln in detail.strip().splitlines() if ln.strip()][-1:] or [""]
        lines.append(f"  [{kind}] {target}: {last[0][:160]}  (input {sha}, {n} bytes)")
        frames = [ln.strip() for ln in detail.splitlines() if "/ropepatch/" in ln]
        if frames:
            lines.append(f"      at {frames[-1][:160]}")
    if stats.disagreements:
        lines.append("safetensors reader vs the safetensors library:")
        for k, v in stats.disagreements.most_common():
            lines.append(f"  {v:5}  {k}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write each distinct finding's input (and traceback) here")
    ap.add_argument("--small", action="store_true", help="synthetic seeds only (no 120 KB fixtures)")
    ap.add_argument("--replay", help="run a corpus directory instead of fuzzing")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per target call")
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("--write-corpus", metavar="DIR", help="(re)generate the regression corpus into DIR and exit")
    args = ap.parse_args(argv)
    if args.write_corpus:
        write_corpus(args.write_corpus)
        return 0
    t0 = time.monotonic()
    if args.replay:
        stats, names = replay(args.replay, args.save, args.timeout)
    else:
        stats = fuzz(args.cases, args.seed, args.save, not args.small, timeout=args.timeout)
    secs = time.monotonic() - t0
    print(report(stats, secs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python tools/fuzz_headers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "cases": stats.cases, "calls": stats.calls, "outcomes": dict(stats.outcomes),
                       "findings": [dict(zip(("kind", "target", "detail", "input_sha", "bytes"), v)) for v in stats.findings.values()],
                       "disagreements": dict(stats.disagreements), "max_peak": stats.max_peak,
                       "seconds": round(secs, 1)}, f, indent=1)
    return 1 if stats.findings else 0


if __name__ == "__main__":
    sys.exit(main())
