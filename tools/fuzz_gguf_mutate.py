"""Structure-aware GGUF mutations for tools/fuzz_headers.py: bit and byte flips in the header,
every length / count / type field set to edge values, truncation, deleting / duplicating /
swapping / retyping metadata entries (with and without fixing the count), RoPE keys given hostile
types and values, ropepatch's undo record (JSON) damaged, crafted entries with absurd lengths;
and the per-pair factor mutations (issue 14): the rope_freqs.weight tensor's values, type, shape,
offset and a duplicate of its info, the record's ``rope_freqs`` field, ``ropepatch.options``, and
hostile --factors / --beta-* options for the patch targets.
"""

from __future__ import annotations

import json
import random
import struct

from fuzz_common import U32_EDGES, U64_EDGES
from fuzz_gguf_seeds import LLAMA3, ROPE_FREQS, Layout, layout, rebuild, with_rope_freqs

from ropepatch.formats.gguf.header import make_kv
from ropepatch.formats.gguf.keys import ValueType as T


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
                                                   {"type": 8, "raw": "ff" * 12},
                                                   {"type": 9, "raw": "0400000000000000ffffffffffffff0f"},
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
                buf[off:off + size] = (v.to_bytes(size, "little", signed=False) if v < (1 << (8 * size))
                                       else bytes([255]) * size)
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
    return rebuild(lay, data, raws, fix_count=rng.random() < 0.8)


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
    return rebuild(lay, data, raws)


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
    return rebuild(lay, data, raws)


def _insert_crafted(rng, data, lay):
    """An entry whose own length fields lie."""
    key = rng.choice([b"general.name", b"x", b"llama.context_length", b"\xff\xfe", b""])
    kind = rng.randrange(6)
    if kind == 0:  # string value with an absurd length
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, rng.choice(U64_EDGES)) + b"abc"
    elif kind == 1:  # array with an absurd count
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, rng.choice([0, 4, 6, 8, 10, 12]),
                                                              rng.choice(U64_EDGES))
    elif kind == 2:  # nested array
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1) + b"\0" * 4
    elif kind == 3:  # string array whose strings run past the end
        raw = (struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 3) + struct.pack("<Q", 2) + b"ab"
               + struct.pack("<Q", 1 << 40))
    elif kind == 4:  # array of many empty strings (a long loop, bounded by the file size)
        n = rng.choice([1000, 100000])
        raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, n) + bytes(8 * n)
    else:  # key length lies
        raw = struct.pack("<Q", rng.choice(U64_EDGES)) + key + struct.pack("<I", 4) + b"\0" * 4
    raws = [kv.raw for kv in lay.h.kvs]
    raws.insert(rng.randrange(len(raws) + 1), raw)
    return rebuild(lay, data, raws)


# ---- per-pair factors (issue 14) --------------------------------------------------------

HOSTILE_FACTORS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-45, 3.4e38, 1.0, 8.0]
HOSTILE_OPTIONS = ["points: 1, 2", "[1,2]", "{}", "null", '{"points":[NaN,2]}', '{"points":[1,1e400]}',
                   '{"points":"1,2"}', '{"points":[[1],[2]]}', '{"beta_fast":true}', '{"points":[3,1]}',
                   '{"points":[]}', '{"points":[0,0]}', '{"bogus":1}', '{"beta_fast":-5,"beta_slow":1}',
                   '{"points":[1,2],"replace_scaling":"yes"}', '{"points":[1,2],"replace_scaling":true}',
                   '{"points":[' + ",".join(["1"] * 70000) + "]}", "{" * 5000]


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
        vals = ([rng.choice(HOSTILE_FACTORS) for _ in range(n)] if rng.random() < 0.5
                else list(LLAMA3[:n]) * (n // 8 or 1))
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
        for _j in range(rng.randrange(1, 4)):
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
    return rebuild(lay, data, raws)
