"""Mutations of Hugging Face model directories for tools/fuzz_hf.py: the undo record (fields of
other types and values, dropped or added, hashes wrong or RECOMPUTED after the change, its text
damaged), the other ``ropepatch.*`` entries, ``__metadata__`` values that are not strings,
hostile ``config.json`` and index JSON, and the shard bytes (length prefix edges, truncation,
flipped header bytes).
"""

from __future__ import annotations

import json
import random
import struct

from fuzz_hf_model import CONFIG, INDEX, ORIGINAL, OUTSIDE, Files, dumps, record_of, rehash, set_meta_raw

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


def _record_op(rng: random.Random, data: bytes) -> bytes:
    rec = record_of(data)
    if rec is None:
        return data
    op = rng.randrange(8)
    if op <= 3:  # a field of another type or value
        rec[_pick(rng, RECORD_FIELDS)] = _pick(rng, HOSTILE_VALUES
                                               + [rec.get("header_length", 0) + rng.choice([-8, -1, 1, 8])])
    elif op == 4:
        rec.pop(_pick(rng, RECORD_FIELDS), None)
        if rng.random() < 0.3:
            rec["extra"] = _pick(rng, HOSTILE_VALUES)
    elif op == 5:  # metadata that is valid JSON but not the original
        rec["metadata"] = _pick(rng, ['{"format":"pt","x":"y"}', '{"format":"np"}', "null", '{"format":"pt"} ', "{}"])
    elif op == 6:  # the record's own text damaged
        text = dumps(rec)
        how = rng.randrange(5)
        text = [text[: rng.randrange(len(text))], DEEP, "", '{"v":1,"v":1,' + text[1:],
                text.replace('"', "'", 1)][how]
        return set_meta_raw(data, ORIGINAL, dumps(text))
    else:  # the record is not a string at all
        return set_meta_raw(data, ORIGINAL, _pick(rng, ["5", "null", "[]", '{"v":1}', DEEP]))
    if rng.random() < 0.5:
        rec = rehash(data, rec)
    return set_meta_raw(data, ORIGINAL, dumps(dumps(rec)), pad8=rng.random() < 0.8)


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
        return _pick(rng, [b"\xef\xbb\xbf" + cfg, cfg.replace(b'"llama"', b'"ll\xffama"'),
                           cfg[: rng.randrange(len(cfg))], cfg + b"garbage", cfg.replace(b"10000.0", b"NaN"),
                           cfg.replace(b"10000.0", b"Infinity"), cfg.replace(b"10000.0", b"1e400"),
                           cfg.replace(b"128,", b"1" * 5000 + b","), cfg.replace(b'"llama"', b'"llama\\ud800"'),
                           b'{"model_type": "llama", ' + cfg[1:]])
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
        return _pick(rng, CONFIG_TEXT
                     + ['{"weight_map": {"a": "model-00001-of-00002.safetensors"}, "weight_map": 5}']).encode()
    try:
        doc = json.loads(index)
    except ValueError:
        return index
    if rng.random() < 0.2:
        doc["metadata"] = _pick(rng, [5, None, [], {"total_size": -1}, {"total_size": 1 << 70}])
    else:
        doc["weight_map"] = _pick(rng, INDEX_MAPS)
    return dumps(doc).encode()


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
