"""Patch, revert and inspect Hugging Face models (config.json + safetensors shards).

Public API (every error is a one-line :class:`~ropepatch.errors.RopepatchError`; nothing is
written when one is raised)::

    patch_hf(path, ctx, method="ntk", alpha=None, out=None, dry_run=False,
             replace_scaling=False, force=False) -> HFPatchResult
    revert_hf(path, dry_run=False, force=False) -> HFRevertResult
    inspect_hf(path) -> HFInspectResult
    plan_hf(path, ctx, method="ntk", alpha=None, replace_scaling=False) -> Plan
    plan_hf_snippets(plan: Plan) -> dict          # transformers v4 / v5 blocks, vLLM overrides
    resolve_model(path) -> HFModel                # which config.json and shards a path means
    is_hf_path(path) -> bool                      # for the CLI: does this look like an HF model?

``path`` is a model directory (config.json + ``*.safetensors``, with or without
``model.safetensors.index.json``; an index's shards must all exist), a single ``.safetensors``
file with config.json beside it (not one shard of a sharded model), or config.json itself.

Patching always starts from the ORIGINAL settings: a model ropepatch already patched is patched
from the config.json text recorded in its shards, so patching twice equals patching once, and a
repeat with the same arguments writes nothing. What is written (see :mod:`ropepatch.formats.hf.config`
for the config keys per method):

* every shard's ``__metadata__`` gets ``ropepatch.version``, ``.method``, ``.ctx``, ``.alpha``,
  ``.config_sha256`` (of the config.json written), a ``.reserved`` filler (spaces) and
  ``.original`` (a JSON undo record: the shard's original ``__metadata__`` text and header
  length, the original config.json text, any symlink targets, and the sha256 of the original
  header and of the original config.json), in that order after the
  file's own entries (:func:`layout_metadata`); ``"format"`` and every other entry are kept,
  and a file that had no metadata gets ``"format": "pt"`` (transformers refuses safetensors
  metadata without it). The filler keeps the metadata text the same length for every method,
  ctx and alpha, so a re-patch changes one run of a few hundred bytes near the start of the
  metadata;
* the header is edited in place only when the new header has the old length and every changed
  byte lies inside one 4 KiB page of the file: one ``pwrite`` of that run, which a kill -9
  leaves all old or all new. Anything else (the first patch, a revert, metadata that another
  tool placed across a page boundary) is an atomic rewrite of the file (tensor bytes copied by
  the kernel, temp file, fsync, rename), which leaves 1 KiB of header slack when it grows it;
* shards are written first and config.json last, so an interrupted run leaves a state that a
  re-run or ``revert`` completes; a failure part-way restores the shards already written;
* a symlink (Hugging Face cache snapshots point into shared ``blobs/``) or a hard-linked file is
  never written through: it is replaced by a patched regular file (said in ``messages``), or use
  ``out``. ``revert`` puts a symlink back when its target still holds the original bytes;
* ``out``: a new or empty directory that receives the patched config.json and shards plus a
  verbatim copy of the other top-level files (tokenizer, index, ...; other weight files are
  skipped), leaving ``path`` untouched. The files are written into a locked staging directory
  inside ``out`` and renamed into place at the end, config.json last; a re-run after a kill
  clears what the killed run left there;
* a re-patch (config.json already written by ropepatch) first writes the shards with one more
  entry, ``ropepatch.previous_config_sha256`` (the sha256 of the config.json being replaced),
  then config.json, then the shards again without it. A kill between the shards and
  config.json thus leaves shards that name both config texts, and the re-run or ``revert``
  accepts the old config.json as ropepatch's own instead of refusing it as a hand edit.

Hostile input (issue 12): every path is checked to be a regular file (or the model directory)
before anything opens it, JSON reads are size-capped, the undo records are decoded and verified
(the original header rebuilt, hashed and parsed back) before anything is written, a shard
re-saved by another tool is refused, every header about to be written is parsed back first,
and a patch or revert checks the whole run (files replaceable, room for every rewrite at once:
the replaced files stay allocated until the run ends) before its first write
(:mod:`ropepatch.patch.hf_checks`); ``-o`` locks its directory, so of two runs onto one new
directory one is refused; every run removes what a killed run left in the directory it writes.

``force``: config.json edited by hand after ropepatch patched it (its sha256 matches neither the
recorded patched nor the original text) is refused by patch and revert, since both would discard
the edit; ``force=True`` discards it.
"""

from __future__ import annotations

import contextlib
import os

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.apply import apply_plan, diff_configs
from ropepatch.formats.hf.config import read_rope
from ropepatch.formats.hf.json_doc import ConfigDoc, dump_config, parse_config
from ropepatch.formats.safetensors import SafetensorsHeader, pad_header, with_metadata_text
from ropepatch.patch.hf_checks import clear_leftovers
from ropepatch.patch.hf_model import HFModel, is_hf_path, link_target, nlink, resolve_model, sha256_hex
from ropepatch.patch.hf_out import check_out, other_files, write_out
from ropepatch.patch.hf_plan import method_notes, plan_from_state, plan_hf, plan_hf_snippets
from ropepatch.patch.hf_record import HfUndoRecord, layout_metadata, record_metadata
from ropepatch.patch.hf_results import (
    FileAction,
    HFInspectResult,
    HFPatchResult,
    HFRevertResult,
    ShardInfo,
)
from ropepatch.patch.hf_revert import inspect_hf, revert_hf
from ropepatch.patch.hf_state import ModelState, lock_all, read_state
from ropepatch.patch.hf_write import is_in_place, write_in_place
from ropepatch.rope.methods import DEFAULT_METHOD, Plan
from ropepatch.safeio.paths import shown
from ropepatch.version import __version__

RP_PREVIOUS_CONFIG_SHA256 = hk.RP_PREVIOUS_CONFIG_SHA256  # re-exported (tests, crash harness)

__all__ = [
    "FileAction", "HFInspectResult", "HFModel", "HFPatchResult", "HFRevertResult", "ShardInfo",
    "RP_PREVIOUS_CONFIG_SHA256", "inspect_hf", "is_hf_path", "layout_metadata", "patch_hf",
    "plan_hf", "plan_hf_snippets", "resolve_model", "revert_hf",
]


def _previous_sha(st: ModelState, orig_text: str, new_cfg: bytes, out_dir: str | None) -> str | None:
    """The sha256 of the config.json this run replaces, when ropepatch wrote it (recorded as
    RP_PREVIOUS_CONFIG_SHA256 while the re-patch runs); a re-run after a kill computes the same
    value, so it gives the uninterrupted result."""
    if out_dir is None and st.patched and new_cfg != st.config_bytes:
        cur_sha = sha256_hex(st.config_bytes)
        if cur_sha != sha256_hex(orig_text.encode("utf-8")):
            return cur_sha
    return None


def _record_text(st: ModelState, s: str, orig_text: str, rec_cfg_link: str | None,
                 out_dir: str | None) -> str:
    """The undo record shard ``s`` carries after this run."""
    rec = st.records.get(s)
    if rec is None:
        link = None if out_dir else link_target(s)
        return HfUndoRecord.of_shard(st.headers[s], orig_text, link, rec_cfg_link).to_json()
    if out_dir and (rec.link or rec.config_link):
        return rec.without_links().to_json()
    return st.raw_records[s]  # unchanged: the very text the shard holds


def _shard_headers(hdr: SafetensorsHeader, meta: dict, prev_sha: str | None) -> tuple[str, bytes | None]:
    """The header JSON to write first and, with ``prev_sha``, the padded header to write once
    config.json is final (without the RP_PREVIOUS_CONFIG_SHA256 entry)."""
    new_json = with_metadata_text(hdr, layout_metadata(meta))
    if prev_sha is None:
        return new_json, None
    first_json = with_metadata_text(hdr, layout_metadata({**meta, RP_PREVIOUS_CONFIG_SHA256: prev_sha}))
    first = pad_header(first_json, hdr.header_length)
    # the extra entry must not turn an in-place write into a rewrite of the shard
    if len(first) == len(pad_header(new_json, hdr.header_length)):
        return first_json, pad_header(new_json, len(first))
    return new_json, None


def _new_headers(model: HFModel, st: ModelState, plan: Plan, orig_text: str, new_cfg: bytes,
                 out_dir: str | None) -> tuple[dict[str, bytes | None], dict[str, bytes]]:
    """Every shard's new header (None: unchanged) and the headers to write after config.json."""
    cfg_link = link_target(model.config_path)
    rec_cfg_link = None if out_dir else (st.recorded_config_link() if st.patched else cfg_link)
    prev_sha = _previous_sha(st, orig_text, new_cfg, out_dir)
    entries = {hk.RP_VERSION: str(__version__), hk.RP_METHOD: plan.method, hk.RP_CTX: str(plan.ctx),
               hk.RP_ALPHA: repr(float(plan.alpha)), hk.RP_CONFIG_SHA256: sha256_hex(new_cfg)}
    new_headers: dict[str, bytes | None] = {}
    final_headers: dict[str, bytes] = {}
    for s in model.shards:
        hdr = st.headers[s]
        meta = record_metadata(hdr, st.records.get(s))
        meta = {hk.ST_FORMAT: hk.ST_FORMAT_PT} if meta is None else dict(meta)
        meta.update(entries)
        meta[hk.RP_ORIGINAL] = _record_text(st, s, orig_text, rec_cfg_link, out_dir)
        new_json, final = _shard_headers(hdr, meta, prev_sha)
        if final is not None:
            final_headers[s] = final
        if out_dir is None and new_json == hdr.json_text:
            new_headers[s] = None
        else:
            new_headers[s] = pad_header(new_json, hdr.header_length)
    return new_headers, final_headers


def _shard_action(st: ModelState, s: str, h: bytes | None, out_dir: str | None) -> FileAction:
    if h is None:
        return FileAction(s, "unchanged")
    if out_dir:
        return FileAction(os.path.join(out_dir, os.path.basename(s)), "rewrite", f"from {s}")
    if os.path.islink(s):
        return FileAction(s, "replaced-symlink", f"was a link to {os.readlink(s)}")
    if nlink(s) > 1:
        return FileAction(s, "replaced-hardlink", f"had {nlink(s)} hard links")
    return FileAction(s, "in-place" if is_in_place(st.headers[s], h, False) else "rewrite")


def _config_action(model: HFModel, cfg_dst: str, cfg_changed: bool, out_dir: str | None) -> FileAction:
    cfg_link = link_target(model.config_path)
    if not cfg_changed:
        return FileAction(cfg_dst, "unchanged")
    if out_dir:
        return FileAction(cfg_dst, "rewrite", f"from {model.config_path}")
    if cfg_link is not None:
        return FileAction(cfg_dst, "replaced-symlink", f"was a link to {cfg_link}")
    if nlink(model.config_path) > 1:
        return FileAction(cfg_dst, "replaced-hardlink", f"had {nlink(model.config_path)} hard links")
    return FileAction(cfg_dst, "rewrite")


def _messages(files: list[FileAction], plan: Plan, orig_doc: ConfigDoc, changed: bool) -> list[str]:
    messages: list[str] = []
    for fa in files:
        if fa.action == "replaced-symlink":
            messages.append(
                f"{shown(fa.path)}: {shown(fa.detail)} (a shared blob, e.g. the Hugging Face cache); replaced "
                f"the link with a patched regular file, the blob is untouched"
            )
        elif fa.action == "replaced-hardlink":
            messages.append(
                f"{shown(fa.path)}: {fa.detail}; wrote a new file so the other links keep the original"
            )
    messages.extend(method_notes(plan))
    if not orig_doc.round_trips:
        messages.append(
            f"{shown(orig_doc.path)}: re-serialised with the file's indent; values outside the "
            f"rope keys may be spelled differently (e.g. 1e-5 -> 1e-05); revert restores the "
            f"exact bytes"
        )
    if not changed:
        messages.append("already patched with these settings; nothing written")
    return messages


def patch_hf(
    path: str,
    ctx: int,
    method: str = DEFAULT_METHOD,
    alpha: float | None = None,
    out: str | None = None,
    dry_run: bool = False,
    replace_scaling: bool = False,
    force: bool = False,
) -> HFPatchResult:
    """Extend the HF model at ``path`` to ``ctx`` tokens with ``method`` (see module docstring)."""
    model = resolve_model(path)
    out_dir = check_out(model, out) if out is not None else None
    lock = contextlib.nullcontext() if (dry_run or out_dir) else lock_all(model)
    with lock:
        st = read_state(model)
        st.check_config_unchanged(force, "patching")
        if not (dry_run or out_dir):  # what a killed run left here: gone before anything is sized
            clear_leftovers(model.root)
        orig_doc, rope0, plan = plan_from_state(st, ctx, method, alpha, replace_scaling)
        new_data, _ = apply_plan(orig_doc, rope0, plan)
        new_text = dump_config(new_data, orig_doc.style)
        new_cfg = new_text.encode("utf-8")
        patched = read_rope(parse_config(new_text, shown(model.config_path)))
        new_headers, final_headers = _new_headers(model, st, plan, orig_doc.text, new_cfg, out_dir)
        cfg_changed = out_dir is not None or new_cfg != st.config_bytes
        changed = cfg_changed or any(h is not None for h in new_headers.values())

        dst = (lambda p: os.path.join(out_dir, os.path.basename(p))) if out_dir else (lambda p: p)
        copies = other_files(model) if out_dir else []
        files = [_shard_action(st, s, new_headers[s], out_dir) for s in model.shards]
        files.append(_config_action(model, dst(model.config_path), cfg_changed, out_dir))
        files += [FileAction(os.path.join(out_dir, n), "copied", f"from {os.path.join(model.root, n)}")
                  for n in copies]
        result = HFPatchResult(
            path=model.root, out=out_dir, config_path=dst(model.config_path),
            shards=tuple(dst(s) for s in model.shards), plan=plan, original=rope0, patched=patched,
            changes=tuple(diff_configs(st.config_doc.data, new_data)), files=tuple(files),
            changed=changed, dry_run=dry_run,
            messages=tuple(_messages(files, plan, orig_doc, changed)),
            snippets=plan_hf_snippets(plan),
        )
        if dry_run or not changed:
            return result
        if out_dir:
            write_out(model, st, out_dir, new_headers, new_cfg, copies)
        else:
            write_in_place(model, st, new_headers, new_cfg, cfg_changed, final_headers)
        return result
