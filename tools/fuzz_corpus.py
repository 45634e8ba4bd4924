"""The regression corpus (tests/fuzz_corpus) of tools/fuzz_headers.py: small GGUF and
safetensors inputs that once crashed ropepatch or pin an edge of the format (a few KB each), the
per-pair factor cases (issue 14), and, from tools/fuzz_hf.py, the Hugging Face model directories.
``python tools/fuzz_headers.py --write-corpus tests/fuzz_corpus`` regenerates it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import fuzz_hf
from fuzz_gguf_seeds import LLAMA3, layout, rebuild, small_gguf, small_longrope, with_rope_freqs
from fuzz_st import st_seeds

from ropepatch.formats.gguf.header import make_kv, parse_header
from ropepatch.formats.gguf.keys import ValueType as T
from ropepatch.formats.gguf.params import params_from_kvs, params_to_kvs
from ropepatch.patch import gguf as gp
from ropepatch.patch.gguf_layout import apply_params, layout_header
from ropepatch.patch.gguf_record import new_record
from ropepatch.rope.methods import make_plan


def _with_kvs(data: bytes, edit) -> bytes:
    """``data`` with its metadata entries rewritten by ``edit(list_of_raw_entries, header)``."""
    lay = layout(data)
    raws = edit([kv.raw for kv in lay.h.kvs], lay.h)
    return rebuild(lay, data, raws)


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
    # over 60 lines: one linear table of named cases, which reads best whole
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
        "ctx-as-array.gguf": _with_kvs(
            base, _set("llama.context_length", T.ARRAY, (T.UINT32, struct.pack("<I", 128), 1))),
        "duplicate-key.gguf": _with_kvs(
            base, lambda raws, h: raws + [make_kv("llama.context_length", T.UINT32, 4096).raw]),
        # format edges (clean errors)
        "n-kv-2pow63.gguf": base[:16] + u64(1 << 63) + base[24:],
        "key-length-2pow62.gguf": base[:first_key] + u64(1 << 62) + base[first_key + 8:],
        "array-count-2pow60.gguf": _with_kvs(
            base, lambda raws, h: raws + [arr[:-8 - 12] + struct.pack("<IQ", 6, 1 << 60) + arr[-8:]]),
        "nested-array.gguf": _with_kvs(
            base, lambda raws, h: raws + [u64(1) + b"x" + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1)
                                          + bytes(4)]),
        "string-array-past-end.gguf": _with_kvs(
            base, lambda raws, h: raws + [u64(1) + b"y" + struct.pack("<IIQ", 9, 8, 3) + u64(2) + b"ab"
                                          + u64(1 << 40)]),
        "unknown-value-type.gguf": _with_kvs(
            base, lambda raws, h: raws + [u64(1) + b"z" + struct.pack("<I", 77) + bytes(4)]),
        "tensor-5-dims.gguf": (base[:tinfo + 8 + len("token_embd.weight")] + struct.pack("<I", 5)
                               + base[tinfo + 12 + len("token_embd.weight"):]),
        "truncated-in-header.gguf": base[:300],
        "truncated-data.gguf": base[:-40],
        "big-endian.gguf": base[:4] + struct.pack(">I", 3) + base[8:],
        "version-1.gguf": base[:4] + struct.pack("<I", 1) + base[8:],
        "alignment-not-power-of-2.gguf": _with_kvs(base, _set("general.alignment", T.UINT32, 48)),
        "empty-string-array-500.gguf": _with_kvs(
            base, lambda raws, h: raws + [u64(1) + b"e" + struct.pack("<IIQ", 9, 8, 500) + bytes(8 * 500)]),
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
    for name, data in {**corpus_cases(), **fuzz_hf.corpus_cases()}.items():
        Path(d, name).write_bytes(data)
