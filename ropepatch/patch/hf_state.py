"""An HF model as it is on disk now: config.json bytes, every shard header, the undo records.

    read_state(model) -> ModelState
    lock_all(model)                   # context manager: every file of the model locked
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from ropepatch.errors import FormatError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.json_doc import ConfigDoc
from ropepatch.formats.safetensors import SafetensorsHeader
from ropepatch.patch.hf_io import read_config_file, read_shard
from ropepatch.patch.hf_model import HFModel, sha256_hex
from ropepatch.patch.hf_record import HfUndoRecord
from ropepatch.safeio import files as fileio
from ropepatch.safeio.paths import shown


@dataclass
class ModelState:
    """config.json and every shard header of ``model``, read once."""

    model: HFModel
    config_bytes: bytes
    config_doc: ConfigDoc
    headers: dict[str, SafetensorsHeader]
    records: dict[str, HfUndoRecord]  # shard -> its undo record (patched shards only)
    raw_records: dict[str, str]
    originals: dict[str, bytes]  # shard -> its original header, rebuilt and verified

    @property
    def patched(self) -> bool:
        return bool(self.records)

    def original_config_text(self) -> str:
        """The config.json text before ropepatch (the current text when not patched)."""
        texts = {r.config for r in self.records.values()}
        if len(texts) > 1:
            raise FormatError(
                f"{shown(self.model.root)}: the shards record different original config.json texts; "
                f"the files come from different patch runs: restore them from their source"
            )
        return texts.pop() if texts else self.config_doc.text

    def recorded_config_link(self) -> str | None:
        """The symlink target config.json had before ropepatch, when every record agrees."""
        links = {r.config_link for r in self.records.values()}
        return links.pop() if len(links) == 1 else None

    def check_config_unchanged(self, force: bool, what: str) -> None:
        """Refuse when config.json was edited after ropepatch patched it."""
        if not self.patched or force:
            return
        cur = sha256_hex(self.config_bytes)
        known = {h.metadata.get(k) for h in self.headers.values() if h.metadata
                 for k in (hk.RP_CONFIG_SHA256, hk.RP_PREVIOUS_CONFIG_SHA256)}
        known.add(sha256_hex(self.original_config_text().encode("utf-8")))
        if cur not in known:
            raise UsageError(
                f"{shown(self.model.config_path)}: changed since ropepatch patched it (sha256 "
                f"{cur[:12]} matches neither the patched nor the original text); {what} would "
                f"discard that change: undo it, or pass --force (force=True) to discard it"
            )


def read_state(model: HFModel) -> ModelState:
    """Read config.json and every shard header of ``model`` (FormatError when malformed). Every
    undo record is decoded and verified here (:meth:`HfUndoRecord.verified_header`), so a
    damaged record or a shard changed by another tool stops patch, revert and inspect before
    anything is written."""
    cbytes, doc = read_config_file(model.config_path)
    headers, records, raws, originals = {}, {}, {}, {}
    for s in model.shards:
        h = read_shard(s)
        headers[s] = h
        if h.metadata and hk.RP_ORIGINAL in h.metadata:
            raws[s] = h.metadata[hk.RP_ORIGINAL]
            records[s] = HfUndoRecord.from_json(raws[s], s)
            originals[s] = records[s].verified_header(h)
    return ModelState(model, cbytes, doc, headers, records, raws, originals)


@contextlib.contextmanager
def lock_all(model: HFModel) -> Iterator[None]:
    """Hold ropepatch's lock on config.json and every shard (refusing at once if taken)."""
    with contextlib.ExitStack() as stack:
        for p in (model.config_path, *model.shards):
            stack.enter_context(fileio.locked(p))
        yield
