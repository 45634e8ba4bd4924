"""What ropepatch writes into each shard's ``__metadata__``: the provenance entries in a
fixed layout, and the undo record that restores the shard and config.json exactly.

    layout_metadata(meta) -> str          # the __metadata__ value text, fixed length per model
    HfUndoRecord                          # the undo record: from_json / to_json / of_shard
    record_metadata(hdr, rec) -> dict | None
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Mapping

from ropepatch.errors import FormatError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.keys import ST_MAX_HEADER
from ropepatch.formats.jsontext import parse_json
from ropepatch.formats.safetensors import (
    SafetensorsHeader,
    framed,
    metadata_json,
    parse_header,
    with_metadata_text,
)
from ropepatch.patch.hf_model import sha256_hex
from ropepatch.safeio.paths import shown

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


_FIX = "the header was edited by another tool: restore the file from its source"
_CHANGED = ("the shard was changed by another tool after ropepatch patched it (re-saved, tensors "
            "added or dropped?), so its original header cannot be rebuilt; nothing written: restore "
            "the file from its source")
_WHITESPACE = frozenset(" \t\n\r")  # what read_header accepts after the header JSON


def _found(v: object) -> str:
    return "none" if v is _ABSENT else json.dumps(v, ensure_ascii=True)[:40]


_ABSENT = object()


def _no_dupes(pairs: list) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {json.dumps(k)[:40]}")
        d[k] = v
    return d


@dataclass(frozen=True)
class HfUndoRecord:
    """The undo record one shard carries (its RP_ORIGINAL value): what restores the shard's
    header and config.json byte for byte.

    On disk: compact JSON ``{"v": 1, "header_length": N0, "pad": "<bytes after the JSON>" |
    null (all spaces), "metadata": "<exact original __metadata__ value text>" | null,
    "config": "<original config.json text>", "config_link": "<symlink target>" | null,
    "link": "<symlink target of this shard>" | null, "header_sha256": "<sha256 of the original
    8 + N0 bytes before the tensor data>", "config_sha256": "<sha256 of the original
    config.json>"}``, keys in that order. Records written before the two hashes existed have
    neither: what they do hold is still checked (:meth:`verified_header`).
    """

    header_length: int
    pad: str | None
    metadata: str | None
    config: str
    config_link: str | None
    link: str | None
    header_sha256: str | None = None
    config_sha256: str | None = None

    @classmethod
    def of_shard(cls, hdr: SafetensorsHeader, config_text: str, link: str | None,
                 config_link: str | None) -> HfUndoRecord:
        """The record for the unpatched shard ``hdr`` and the original config.json text."""
        pad = hdr.padding
        return cls(hdr.header_length, None if pad == " " * len(pad) else pad, hdr.metadata_text,
                   config_text, config_link, link, sha256_hex(framed(hdr.header_bytes)),
                   sha256_hex(config_text.encode("utf-8")))

    @classmethod
    def from_json(cls, text: str, shard_path: str) -> HfUndoRecord:
        """Parse and check ``text`` (FormatError naming the shard, the field, what was expected
        and what was found); nothing is sized from a field before it is checked."""
        where = shown(shard_path)
        try:
            rec = parse_json(text, "", "JSON", object_pairs_hook=_no_dupes)
        except FormatError as e:
            detail = str(e).split("not valid JSON: ", 1)[-1]
            raise FormatError(f"{where}: {hk.RP_ORIGINAL} is not valid JSON ({detail}); {_FIX}") from None
        v = rec.get("v", _ABSENT) if isinstance(rec, dict) else _ABSENT
        if type(v) is not int or v != hk.RP_RECORD_VERSION:
            raise FormatError(
                f"{where}: {hk.RP_ORIGINAL} is not a version-{hk.RP_RECORD_VERSION} ropepatch "
                f"undo record (expected an object with \"v\": {hk.RP_RECORD_VERSION}, found "
                f"{_found(v if isinstance(rec, dict) else rec)}); upgrade ropepatch or restore the "
                f"file from its source"
            )
        fields = {k: rec.get(k, None if k in _OPTIONAL else _ABSENT) for k in _FIELDS}
        for key, (ok, expected) in _FIELDS.items():
            if not ok(fields[key]):
                raise FormatError(
                    f"{where}: {hk.RP_ORIGINAL} field {key!r}: expected {expected}, found "
                    f"{_found(fields[key])}; {_FIX}"
                )
        record = cls(**fields)
        record.original_metadata(shard_path)  # the metadata text must be an object or null
        return record

    def to_json(self) -> str:
        """The record as ropepatch writes it (compact, keys in the documented order)."""
        rec = {"v": hk.RP_RECORD_VERSION, "header_length": self.header_length, "pad": self.pad,
               "metadata": self.metadata, "config": self.config,
               "config_link": self.config_link, "link": self.link}
        for k in _OPTIONAL:
            if getattr(self, k) is not None:
                rec[k] = getattr(self, k)
        return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)

    def without_links(self) -> HfUndoRecord:
        """The record for a copy of the shard (``-o``): no symlink to put back."""
        return replace(self, link=None, config_link=None)

    def original_metadata(self, shard_path: str) -> dict | None:
        """The shard's ``__metadata__`` before ropepatch (None: it had none, or null)."""
        if self.metadata is None:
            return None
        try:
            meta = parse_json(self.metadata, "", "JSON")
        except FormatError:
            meta = _ABSENT
        if meta is None or (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            return meta
        raise FormatError(
            f"{shown(shard_path)}: {hk.RP_ORIGINAL} holds malformed original metadata (expected a JSON "
            f"object of strings or null, found {self.metadata[:40]!r}); {_FIX}"
        )

    def original_header(self, hdr: SafetensorsHeader) -> bytes:
        """The shard's original N header bytes (``hdr``: the shard's current header)."""
        n0 = self.header_length
        if n0 > hdr.header_length:  # ropepatch only ever grows a header: bound before allocating
            raise FormatError(
                f"{shown(hdr.path)}: {hk.RP_ORIGINAL} records an original header of {n0} bytes, more "
                f"than the shard's {hdr.header_length}; {_FIX}"
            )
        try:
            json0 = with_metadata_text(hdr, self.metadata).encode("utf-8")
        except FormatError:  # the member ropepatch inserted is no longer where it put it
            raise FormatError(f"{shown(hdr.path)}: __metadata__ is not where ropepatch put it: {_CHANGED}") from None
        pad = self.pad.encode("utf-8") if self.pad is not None else b" " * max(0, n0 - len(json0))
        header = json0 + pad
        if len(header) != n0:
            raise FormatError(
                f"{shown(hdr.path)}: cannot rebuild the original {n0}-byte header exactly (got "
                f"{len(header)} bytes); {_FIX}"
            )
        return header

    def verified_header(self, hdr: SafetensorsHeader) -> bytes:
        """:meth:`original_header`, checked BEFORE anything is written: its recorded sha256 (when
        the record has one), and that it parses back as a safetensors header with the shard's
        tensors and the recorded metadata; the recorded config.json text against its sha256."""
        where = shown(hdr.path)
        h0 = self.original_header(hdr)
        if self.header_sha256 is not None and sha256_hex(framed(h0)) != self.header_sha256:
            raise FormatError(f"{where}: the original header rebuilt from {hk.RP_ORIGINAL} does not "
                              f"match its recorded sha256 {self.header_sha256[:12]}...: {_CHANGED}")
        try:
            back = parse_header(hdr.path, h0, 8 + len(h0) + hdr.data_length, where)
        except FormatError as e:
            raise FormatError(f"{where}: the original header rebuilt from {hk.RP_ORIGINAL} does not "
                              f"parse ({str(e).split(': ', 1)[-1]}); {_FIX}") from None
        meta = back.metadata if back.metadata is None else dict(back.metadata)
        if back.tensors != hdr.tensors or meta != self.original_metadata(hdr.path):
            raise FormatError(f"{where}: the original header rebuilt from {hk.RP_ORIGINAL} does not "
                              f"hold the shard's tensors and recorded metadata; {_FIX}")
        if self.config_sha256 is not None and sha256_hex(self.config.encode("utf-8")) != self.config_sha256:
            raise FormatError(f"{where}: the original config.json text in {hk.RP_ORIGINAL} does not "
                              f"match its recorded sha256 {self.config_sha256[:12]}...; {_FIX}")
        return h0


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _link(v: object) -> bool:
    return v is None or (isinstance(v, str) and 0 < len(v) <= 4096 and "\0" not in v)


def _length(v: object) -> bool:
    return type(v) is int and 2 <= v <= ST_MAX_HEADER


def _pad(v: object) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= ST_MAX_HEADER and set(v) <= _WHITESPACE)


def _sha(v: object) -> bool:
    return v is None or (isinstance(v, str) and len(v) == 64 and set(v) <= _HEX)


_HEX = frozenset("0123456789abcdef")
_OPTIONAL = ("header_sha256", "config_sha256")  # absent from records written before them

# field -> (check, what it expects); every field but _OPTIONAL is required
_FIELDS = {
    "header_length": (_length, f"an integer from 2 to {ST_MAX_HEADER}"),
    "pad": (_pad, "a string of spaces, tabs and line breaks, or null"),
    "metadata": (_opt_str, "a string or null"),
    "config": (lambda v: isinstance(v, str), "a string"),
    "config_link": (_link, "a symlink target (1 to 4096 characters, no NUL) or null"),
    "link": (_link, "a symlink target (1 to 4096 characters, no NUL) or null"),
    "header_sha256": (_sha, "64 lowercase hex digits or null"),
    "config_sha256": (_sha, "64 lowercase hex digits or null"),
}


def record_metadata(hdr: SafetensorsHeader, rec: HfUndoRecord | None) -> dict | None:
    """The shard's metadata before ropepatch: from ``rec``, or the header's own when the shard
    is not patched (``rec`` None)."""
    if rec is None:
        return dict(hdr.metadata) if hdr.metadata is not None else None
    return rec.original_metadata(hdr.path)
