"""What ropepatch writes into each shard's ``__metadata__``: the provenance entries in a
fixed layout, and the undo record that restores the shard and config.json exactly.

    layout_metadata(meta) -> str          # the __metadata__ value text, fixed length per model
    parse_record(shard, raw) -> dict      # the undo record a shard carries
    build_record(hdr, config_text, link, config_link) -> str
    original_metadata(hdr, rec) -> dict | None
    original_header(hdr, rec) -> bytes
"""

from __future__ import annotations

import json
from typing import Mapping

from ropepatch.errors import FormatError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import SafetensorsHeader, metadata_json, with_metadata_text

# The __metadata__ entries a re-patch may change, in the order layout_metadata writes them.
RP_CHANGING = (hk.RP_VERSION, hk.RP_METHOD, hk.RP_CTX, hk.RP_ALPHA, hk.RP_CONFIG_SHA256,
               hk.RP_PREVIOUS_CONFIG_SHA256)


def layout_metadata(meta: Mapping[str, str]) -> str:
    """The ``__metadata__`` value text ropepatch writes for the entries of ``meta``.

    Order: the other entries (``"format"`` and whatever the file had) in their order; the
    entries a re-patch changes (:data:`RP_CHANGING`, those present); the
    :data:`~ropepatch.formats.hf.keys.RP_RESERVED` filler; the undo record
    :data:`~ropepatch.formats.hf.keys.RP_ORIGINAL`. The filler (spaces; any filler in ``meta``
    is ignored) is sized so the text has the same length whatever the changing values are, as
    long as they fit in :data:`~ropepatch.formats.hf.keys.RP_VALUE_BUDGET` bytes. A re-patch
    then changes only the bytes from the first changed value to the filler, and the same
    entries always give the same bytes (patching twice equals patching once).
    """
    skip = {*RP_CHANGING, hk.RP_RESERVED, hk.RP_ORIGINAL}
    base = {k: v for k, v in meta.items() if k not in skip}
    changing = {k: meta[k] for k in RP_CHANGING if k in meta}
    tail = {hk.RP_ORIGINAL: meta[hk.RP_ORIGINAL]} if hk.RP_ORIGINAL in meta else {}
    skeleton = {**base, **{k: "" for k in RP_CHANGING[:-1]}, hk.RP_RESERVED: "", **tail}
    target = len(metadata_json(skeleton).encode("utf-8")) + hk.RP_VALUE_BUDGET
    bare = len(metadata_json({**base, **changing, hk.RP_RESERVED: "", **tail}).encode("utf-8"))
    return metadata_json({**base, **changing, hk.RP_RESERVED: " " * max(0, target - bare), **tail})


def parse_record(shard: str, raw: str) -> dict:
    """The undo record ``raw`` (the shard's RP_ORIGINAL value), checked (FormatError)."""
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{shard}: {hk.RP_ORIGINAL} is not valid JSON ({e.msg}); the header was edited by "
            f"another tool: restore the file from its source"
        ) from None
    ok = (
        isinstance(rec, dict)
        and rec.get("v") == hk.RP_RECORD_VERSION
        and isinstance(rec.get("header_length"), int)
        and isinstance(rec.get("config"), str)
        and (rec.get("metadata") is None or isinstance(rec.get("metadata"), str))
        and (rec.get("pad") is None or isinstance(rec.get("pad"), str))
    )
    if not ok:
        raise FormatError(
            f"{shard}: {hk.RP_ORIGINAL} is not a version-{hk.RP_RECORD_VERSION} ropepatch undo "
            f"record; upgrade ropepatch or restore the file from its source"
        )
    return rec


def build_record(hdr: SafetensorsHeader, config_text: str, link: str | None,
                 config_link: str | None) -> str:
    """The undo record text for an unpatched shard ``hdr``."""
    pad = hdr.padding
    rec = {
        "v": hk.RP_RECORD_VERSION,
        "header_length": hdr.header_length,
        "pad": None if pad == " " * len(pad) else pad,
        "metadata": hdr.metadata_text,
        "config": config_text,
        "config_link": config_link,
        "link": link,
    }
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def original_metadata(hdr: SafetensorsHeader, rec: dict | None) -> dict | None:
    """The shard's metadata before ropepatch (``rec`` None: the shard is not patched)."""
    if rec is None:
        return dict(hdr.metadata) if hdr.metadata is not None else None
    text = rec["metadata"]
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise FormatError(f"{hdr.path}: {hk.RP_ORIGINAL} holds malformed original metadata") from None
    return meta if isinstance(meta, dict) else None


def original_header(hdr: SafetensorsHeader, rec: dict) -> bytes:
    """The shard's original N header bytes, rebuilt from ``rec``."""
    json0 = with_metadata_text(hdr, rec["metadata"]).encode("utf-8")
    n0 = rec["header_length"]
    pad = rec["pad"].encode("utf-8") if rec["pad"] is not None else b" " * (n0 - len(json0))
    header = json0 + pad
    if len(header) != n0:
        raise FormatError(
            f"{hdr.path}: cannot rebuild the original {n0}-byte header exactly (got {len(header)} "
            f"bytes); the header was edited by another tool: restore the file from its source"
        )
    return header
