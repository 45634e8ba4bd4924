"""Revert a ropepatch-patched HF model byte-identically, and inspect an HF model.

    revert_hf(path, dry_run=False, force=False) -> HFRevertResult
    inspect_hf(path) -> HFInspectResult
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Any

from ropepatch.errors import NotPatchedError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.config import read_rope
from ropepatch.formats.hf.json_doc import parse_config
from ropepatch.patch.hf_checks import Remedy, check_room, check_writable, clear_leftovers
from ropepatch.patch.hf_model import HFModel, is_linked, link_target, nlink, resolve_model
from ropepatch.patch.hf_out import check_out, other_files, write_out
from ropepatch.patch.hf_results import FileAction, HFInspectResult, HFRevertResult, ShardInfo
from ropepatch.patch.hf_state import ModelState, lock_all, read_state
from ropepatch.patch.hf_write import is_in_place, write_shard_header
from ropepatch.safeio import files as fileio
from ropepatch.safeio.paths import shown

# (kind, argument): ("config", None), ("link", (path, target)), ("shard", (path, hdr, header, in_place_ok))
_Op = tuple[str, Any]


def _blob_matches(link_path: str, target: str, prefix: bytes, size: int) -> bool:
    p = os.path.join(os.path.dirname(os.path.abspath(link_path)), target)
    try:
        if not os.path.isfile(p) or os.path.getsize(p) != size:
            return False
        with open(p, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def _config_ops(model: HFModel, st: ModelState, orig_cfg: bytes,
                files: list[FileAction], messages: list[str]) -> list[_Op]:
    cfg_link = st.recorded_config_link()
    cur_cfg_link = link_target(model.config_path)
    if cfg_link and cur_cfg_link != cfg_link and _blob_matches(
        model.config_path, cfg_link, orig_cfg, len(orig_cfg)
    ):
        files.append(FileAction(model.config_path, "restored-symlink", f"-> {cfg_link}"))
        return [("link", (model.config_path, cfg_link))]
    if st.config_bytes != orig_cfg:
        files.append(FileAction(model.config_path, "rewrite"))
        if cfg_link and cur_cfg_link != cfg_link:
            messages.append(f"{shown(model.config_path)}: its former link target {shown(cfg_link)} no "
                            f"longer holds the original; restored the bytes as a regular file")
        return [("config", None)]
    files.append(FileAction(model.config_path, "unchanged"))
    return []


def _shard_ops(st: ModelState, s: str, files: list[FileAction], messages: list[str]) -> list[_Op]:
    hdr, rec = st.headers[s], st.records.get(s)
    if rec is None:
        files.append(FileAction(s, "unchanged", "not patched"))
        return []
    h0 = st.originals[s]  # rebuilt and verified by read_state
    link = rec.link
    prefix = len(h0).to_bytes(8, "little") + h0
    if link and link_target(s) != link and _blob_matches(s, link, prefix, 8 + len(h0) + hdr.data_length):
        files.append(FileAction(s, "restored-symlink", f"-> {link}"))
        return [("link", (s, link))]
    if link:
        messages.append(f"{shown(s)}: its former link target {shown(link)} no longer holds the "
                        f"original; restored the bytes as a regular file")
    linked = is_linked(s)
    files.append(FileAction(s, "in-place" if is_in_place(hdr, h0, linked) else "rewrite"))
    return [("shard", (s, hdr, h0, not linked))]


def _preflight(model: HFModel, ops: list[_Op], orig_cfg: bytes) -> None:
    """Refuse before the first write when any step could not be done: a file or directory
    that cannot be written, or too little room for every rewrite at once."""
    sizes = []
    for kind, arg in ops:
        if kind == "config":
            check_writable(model.config_path, Remedy.REVERT)
            sizes.append(len(orig_cfg))
        elif kind == "link":
            check_writable(arg[0], Remedy.REVERT, replace=True)
        else:
            s, hdr, h0, ok = arg
            in_place = ok and is_in_place(hdr, h0, False)
            check_writable(s, Remedy.REVERT, in_place=in_place)
            if not in_place:
                sizes.append(8 + len(h0) + hdr.data_length)
    if sizes:
        check_room(model.root, sizes, shown(model.root), Remedy.REVERT)


def _carry_out(model: HFModel, ops: list[_Op], orig_cfg: bytes) -> None:
    for kind, arg in ops:  # config (first), then shards
        if kind == "config":
            fileio.rewrite(model.config_path, model.config_path, orig_cfg, 0, 0)
        elif kind == "link":
            fileio.replace_with_symlink(*arg)
        else:
            s, hdr, h0, ok = arg
            write_shard_header(hdr, h0, in_place_ok=ok)


def _revert_out(model: HFModel, st: ModelState, out: str, orig_cfg: bytes, dry_run: bool,
                restored) -> HFRevertResult:
    """``revert -o OUTDIR``: the original model (config.json and every shard with its original
    header, the other files copied) written into a new directory; the patched model is left as
    it is. Every original header was rebuilt and verified by ``read_state``."""
    out_dir = check_out(model, out)
    headers = {s: st.originals.get(s, st.headers[s].header_bytes) for s in model.shards}
    copies = other_files(model)
    files = [FileAction(os.path.join(out_dir, os.path.basename(s)), "rewrite", "original header")
             for s in model.shards]
    files.append(FileAction(os.path.join(out_dir, hk.CONFIG_NAME), "rewrite", "original config.json"))
    files += [FileAction(os.path.join(out_dir, n), "copied", f"from {os.path.join(model.root, n)}") for n in copies]
    if not dry_run:
        write_out(model, st, out_dir, headers, orig_cfg, copies)
    return HFRevertResult(out_dir, os.path.join(out_dir, hk.CONFIG_NAME), tuple(files), True, dry_run,
                          (f"the patched model in {shown(model.root)} is left as it is",), restored)


def revert_hf(path: str, dry_run: bool = False, force: bool = False, out: str | None = None) -> HFRevertResult:
    """Restore config.json and every shard of a ropepatch-patched model byte-identically.

    ``out``: write the original model into that new directory instead (the patched one stays).
    Every record is verified and every step checked (files writable, room for all rewrites at
    once) before the first write, so revert writes nothing unless it can finish. config.json is
    restored first and the shards after it (their records stay until then), so a revert
    interrupted by a kill can be re-run. Symlinks that patch replaced are put back when their
    target still holds the original bytes; otherwise the original bytes go into a regular file.
    NotPatchedError when no shard carries a ropepatch record.
    """
    model = resolve_model(path)
    lock = contextlib.nullcontext() if dry_run else lock_all(model)
    with lock:
        st = read_state(model)
        if not st.patched:
            raise NotPatchedError(
                f"{shown(model.root)}: no shard carries a {hk.RP_ORIGINAL} record; nothing to revert "
                f"(not patched by ropepatch)"
            )
        st.check_config_unchanged(force, "reverting")
        orig_text = st.original_config_text()
        orig_cfg = orig_text.encode("utf-8")
        restored = read_rope(parse_config(orig_text, shown(model.config_path)))
        if out is not None:
            return _revert_out(model, st, out, orig_cfg, dry_run, restored)
        files: list[FileAction] = []
        messages: list[str] = []
        ops = _config_ops(model, st, orig_cfg, files, messages)
        for s in model.shards:
            ops += _shard_ops(st, s, files, messages)
        result = HFRevertResult(model.root, model.config_path, tuple(files), bool(ops), dry_run,
                                tuple(messages), restored)
        if not dry_run:
            clear_leftovers(model.root)
        _preflight(model, ops, orig_cfg)
        if not dry_run:
            _carry_out(model, ops, orig_cfg)
        return result


_DECIMAL = re.compile(r"[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?")


def _int_or(v: Any) -> Any:
    """``v`` as an int when it is plain ASCII decimal (not "²", "١٢" or 5,000 digits), else as is."""
    return int(v) if isinstance(v, str) and _DECIMAL.fullmatch(v) else v


def _float_or(v: Any) -> Any:
    """``v`` as a finite float when it is a plain ASCII number, else as is."""
    if isinstance(v, str) and _FLOAT.fullmatch(v):
        f = float(v)
        return f if math.isfinite(f) else v
    return v


def _shard_info(st: ModelState, s: str) -> ShardInfo:
    h = st.headers[s]
    meta = None if h.metadata is None else {k: v for k, v in h.metadata.items()
                                            if k not in (hk.RP_ORIGINAL, hk.RP_RESERVED)}
    return ShardInfo(s, h.file_size, h.header_length, len(h.tensors), meta,
                     s in st.records, link_target(s), nlink(s))


def inspect_hf(path: str) -> HFInspectResult:
    """The rope settings, shards and ropepatch provenance of the HF model at ``path``."""
    model = resolve_model(path)
    st = read_state(model)
    rope = read_rope(st.config_doc)
    shards = [_shard_info(st, s) for s in model.shards]
    record = original = None
    messages: list[str] = []
    if st.patched:
        first = next(s for s in model.shards if s in st.records)
        m = st.headers[first].metadata or {}
        record = {
            "method": m.get(hk.RP_METHOD),
            "ctx": _int_or(m.get(hk.RP_CTX)),
            "alpha": _float_or(m.get(hk.RP_ALPHA)),
            "version": m.get(hk.RP_VERSION),
        }
        original = read_rope(parse_config(st.original_config_text(), shown(model.config_path)))
        unpatched = [s for s in model.shards if s not in st.records]
        if unpatched:
            messages.append(
                f"only {len(st.records)} of {len(model.shards)} shards carry ropepatch records "
                f"(an interrupted run?): run the patch again or revert"
            )
        try:
            st.check_config_unchanged(False, "patching or reverting")
        except UsageError as e:
            messages.append(str(e))
    return HFInspectResult(model, rope, rope.to_params(), tuple(shards), st.patched, record,
                           original, tuple(messages))
