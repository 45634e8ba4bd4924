"""GGUF seeds for tools/fuzz_headers.py: small synthetic files built from a fixture's
hyperparameters, the fixtures, patched / --no-record-patched copies, and the per-pair factor
seeds (issue 14: llama3-style rope_freqs.weight, LongRoPE pairs); plus a file's structure
(``layout``: every length / count / type field and entry span) and ``rebuild``, which the
mutators and the corpus use to re-serialise a header from raw entries.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from fuzz_common import FIXTURES

from ropepatch.errors import RopepatchError
from ropepatch.formats.gguf.header import GGUFHeader, make_kv, parse_header, serialize_header
from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.patch import gguf as gp

GGUF_FIXTURES = ["tiny-llama-q8_0.gguf", "tiny-qwen2-q8_0.gguf", "tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf"]


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


# ---- a file's structure (what the mutators edit) ----------------------------------------


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


def rebuild(lay: Layout, data: bytes, kvs_raw: list[bytes], fix_count: bool = True, n_kv=None) -> bytes:
    """Re-serialise a header from raw KV entries, keeping the tensor infos and data."""
    h = lay.h
    n = len(kvs_raw) if fix_count else (n_kv if n_kv is not None else len(h.kvs))
    head = b"GGUF" + struct.pack("<IQQ", h.version, len(h.tensors), n) + b"".join(kvs_raw) + h.tensor_info_raw
    align = h.alignment
    head += bytes(-len(head) % align)
    return head + data[h.data_offset:]


# ---- per-pair factors (issue 14): rope_freqs.weight and the records around it --------------

ROPE_FREQS = "rope_freqs.weight"
LLAMA3 = (1.0, 1.0, 1.0, 1.25, 2.0, 4.0, 8.0, 8.0)


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
