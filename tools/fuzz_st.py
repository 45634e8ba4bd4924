"""The safetensors target of tools/fuzz_headers.py: seeds (the fixtures' shards and a tiny one),
mutations of the length prefix and the JSON header, and ``formats.safetensors.read_header`` with a
differential oracle: when ropepatch accepts a file, the ``safetensors`` library must open it too
and list the same tensors (a disagreement is counted).
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

from fuzz_common import FIXTURES, U64_EDGES, Stats, alloc_budget, fresh_case, guarded

ST_FIXTURES = ["hf/tiny-llama/model.safetensors", "hf/tiny-qwen2/model.safetensors"]


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
        obj["__metadata__"] = rng.choice([None, 5, [], {"a": 1}, {"a": None}, {"a": "b" * 10000}, "x",
                                          {"a": {"b": "c"}}])
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
    d, path = fresh_case(work, "st", "model.safetensors", data)
    hdr = guarded(stats, "safetensors read_header", lambda: sf.read_header(path), data, alloc_budget(data) * 3,
                  timeout, save, ".safetensors")
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
