"""Patch, revert and inspect the RoPE settings of GGUF files (the public GGUF module).

Provenance. The first patch of a file records, under ``ropepatch.original``, an undo record
(:mod:`ropepatch.patch.gguf_record`): the original on-disk value bytes (or absence) of every
key a patch may touch (:data:`keys.TOUCHED_KEYS`), the original data offset, any non-zero
padding and the sha256 of the original header. Revert rebuilds the original header from it,
checks the hash, and puts the tensor bytes back behind it: the result is the original file,
byte for byte. Re-patches start from the recorded originals, so patching a patched file never
compounds.

Per-pair factor methods (ntk-parts, factors) also write the ``rope_freqs.weight`` tensor
(:mod:`ropepatch.patch.gguf_tensors`): the first patch appends it (a rewrite), a re-patch
changes its bytes in place with one pwrite after the header (:func:`safeio.commit.commit_model`),
any other method and revert put it back as it was (absent, or a llama3 file's own bytes, kept
in the undo record). The method's options go to ``ropepatch.options``.

Layout and crash safety (:mod:`ropepatch.patch.gguf_layout`): the first patch rewrites the
file once, laying the header out so that every later re-patch changes one run of bytes inside
one 4 KiB page. Every write goes through the one commit rule (:mod:`ropepatch.safeio.commit`):
one ``pwrite`` inside one page - a kill -9 leaves either the old or the new header, never a
mix - else an atomic rewrite.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ropepatch.errors import FormatError, NotPatchedError, RopepatchError, UsageError, WriteError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import ArrayValue, GGUFHeader, parse_header, read_header, serialize_header
from ropepatch.formats.gguf.params import params_from_kvs, params_to_kvs
from ropepatch.formats.gguf.tensors import ROPE_FREQS, header_factors_tensor, rope_freqs_data
from ropepatch.patch.gguf_layout import (  # noqa: F401 - MIN_SLACK, Change: part of this module's API
    MIN_SLACK,
    Change,
    apply_params,
    changed_entries,
    layout_header,
    recorded_layout,
)
from ropepatch.patch.gguf_links import holds_original, linked, patch_note, refuse_no_record, revert_notes, symlink_of
from ropepatch.patch.gguf_record import Provenance, original_kvs, read_provenance
from ropepatch.patch.gguf_tensors import TensorLayout, freqs_layout, original_freqs, wanted_bytes
from ropepatch.patch.gguf_write import check_out, commit, commit_with_data, gguf_input, no_record_header, relink
from ropepatch.rope.methods import DEFAULT_METHOD, Plan, get_method, make_plan, method_note
from ropepatch.rope.params import RopeParams
from ropepatch.safeio.files import check_can_replace, remove_stale_temps
from ropepatch.safeio.paths import shown

_F32_MAX = 3.4028234663852886e38
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


# ---- inspect --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A GGUF file's RoPE settings and provenance (:func:`inspect_gguf`)."""

    path: str
    format: str
    current: RopeParams  # what the runtime reads from the file now
    original: RopeParams  # before ropepatch (== current when not patched)
    provenance: Provenance | None
    split: tuple[int, int] | None
    file_size: int
    n_tensors: int
    n_kv: int
    slack: int  # bytes of reserved header space for in-place re-patches


def _split_of(path: str) -> tuple[int, int] | None:
    m = _SPLIT_RE.search(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _check_first_split(path: str) -> None:
    sp = _split_of(path)
    if sp and sp[0] != 1:
        first = _SPLIT_RE.sub(f"-00001-of-{sp[1]:05d}.gguf", os.path.basename(path))
        raise UsageError(
            f"{shown(path)}: this is split {sp[0]} of {sp[1]}; llama.cpp reads hyperparameters from the "
            f"first split: pass {first} (the other splits need no change)"
        )


def _load(path: str) -> tuple[GGUFHeader, Provenance | None, RopeParams, RopeParams]:
    gguf_input(path)
    _check_first_split(path)
    h = read_header(path, shown(path))
    prov = read_provenance(h)
    names = [t.name for t in h.tensors]
    cur_freqs = rope_freqs_data(path, h, shown(path), header_factors_tensor(h.kvs))
    current = params_from_kvs({kv.key: kv for kv in h.kvs}, names, shown(path), cur_freqs and cur_freqs[1])
    orig_kvs = original_kvs(h, prov)
    rec = prov.record.rope_freqs if prov is not None else None
    if rec is None:  # the tensor is the original's (a patch keeps the type that says which one it is)
        orig_freqs = rope_freqs_data(path, h, shown(path), header_factors_tensor(orig_kvs))
        orig_names, orig_freqs = names, orig_freqs and orig_freqs[1]
    elif rec.raw is None:  # ropepatch added it
        orig_names, orig_freqs = [n for n in names if n != ROPE_FREQS], None
    else:
        orig_names, orig_freqs = names, rec.raw
    original = params_from_kvs({kv.key: kv for kv in orig_kvs}, orig_names, shown(path), orig_freqs)
    return h, prov, current, original


def _check_header(h: GGUFHeader, header: bytes, what: str, tensors: TensorLayout | None = None) -> None:
    """Refuse, before anything is written, a header ``header`` (to go in front of ``h``'s tensor
    data, or the data ``tensors`` lays out) that ropepatch's own reader would reject: it must
    parse, end where the data starts, place every tensor inside the data and carry RoPE values
    of the right type and range for each key."""
    name = shown(h.path)
    length = h.data_length if tensors is None else tensors.keep + len(tensors.trailing)
    try:
        new = parse_header(header, h.path, len(header) + length, name)
        if new.data_offset != len(header):
            raise FormatError(f"{name}: tensor data would start at {new.data_offset}, not {len(header)}")
        params_from_kvs({kv.key: kv for kv in new.kvs}, [t.name for t in new.tensors], name)
    except RopepatchError as e:
        detail = str(e).removeprefix(f"{name}: ")
        raise FormatError(f"{name}: {what} is not a GGUF header ropepatch accepts ({detail}); "
                          f"nothing written") from None


def inspect_gguf(path: str) -> ModelInfo:
    """Read a GGUF file's RoPE settings and ropepatch provenance."""
    h, prov, current, original = _load(path)
    filler = h.entry(K.RP_RESERVED)
    return ModelInfo(
        path=path,
        format="gguf",
        current=current,
        original=original,
        provenance=prov,
        split=_split_of(path),
        file_size=h.file_size,
        n_tensors=len(h.tensors),
        n_kv=len(h.kvs),
        slack=filler.value.count if filler is not None and isinstance(filler.value, ArrayValue) else 0,
    )


# ---- patch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchResult:
    """What :func:`patch_gguf` did (or would do, for a dry run)."""

    path: str
    out: str
    plan: Plan | None
    mode: str  # "in-place" | "rewrite" | "no-op" | "dry-run"
    changes: tuple[Change, ...]
    warnings: tuple[str, ...] = field(default=())
    bytes_written: int = 0
    tensor_change: str = ""  # what happens to rope_freqs.weight ("" = nothing)
    data_bytes: int = 0  # in place: bytes of the one tensor-data pwrite


def _no_record_warning(path: str, prov: Provenance | None) -> str:
    if prov is not None:
        raise UsageError(
            f"{shown(path)}: the file already carries ropepatch provenance, so a normal patch is "
            f"written in place already; drop --no-record"
        )
    return ("--no-record: no provenance is written, so 'ropepatch revert' cannot undo this patch "
            "and a later patch will treat these values as the originals (scaling would compound)")


def _checked_plan(path: str, original: RopeParams, ctx: int, method: str, alpha: float | None,
                  replace_scaling: bool, options: Mapping[str, Any] | None = None) -> Plan:
    """The plan, refused (errors prefixed with ``path``) when a value leaves GGUF's float32."""
    try:
        plan = make_plan(original, ctx, method, alpha, replace_scaling, options)
    except RopepatchError as e:
        raise type(e)(f"{shown(path)}: {e}") from None
    for what, v in (("rope.freq_base", plan.target.freq_base), ("rope.scaling.factor", plan.target.scaling_factor)):
        if not (math.isfinite(v) and abs(v) <= _F32_MAX):  # struct.pack("<f") would overflow
            raise UsageError(
                f"{shown(path)}: {plan.method} with alpha {plan.alpha:g} gives {what} {v:g}, beyond the "
                f"largest GGUF float32 ({_F32_MAX:.4g}); use a smaller --alpha or --ctx"
            )
    return plan


def patch_gguf(
    path: str,
    ctx: int,
    method: str = DEFAULT_METHOD,
    alpha: float | None = None,
    *,
    out: str | None = None,
    dry_run: bool = False,
    record: bool = True,
    replace_scaling: bool = False,
    progress=None,
    force: bool = False,
    options: Mapping[str, Any] | None = None,
) -> PatchResult:
    """Extend the GGUF model at ``path`` to ``ctx`` tokens with ``method`` (``options``: the
    method's parameters besides alpha, e.g. ``{"beta_fast": 16}`` for ntk-parts).

    Writes in place (or to ``out``: a file that already exists is replaced only with
    ``force``); ``record=False`` edits existing same-size values in place without provenance
    (no revert, no protection against compounding; refused for per-pair factor methods).
    """
    target = check_out(path, out)
    if out is not None and not force and os.path.lexists(out):
        raise UsageError(f"-o {shown(out)}: exists; give --force to replace it, or a new file name")
    if not record and get_method(method).writes_factors:
        raise UsageError(f"{shown(path)}: --no-record cannot write the per-pair factors of {method}: without "
                         f"an undo record the original {ROPE_FREQS} state cannot be restored; drop --no-record")
    h, prov, current, original = _load(path)
    if prov is not None and record:
        _recorded_original(h, prov)  # the record must still restore the original before it is built on
    warnings: list[str] = []
    if not record:
        warnings.append(_no_record_warning(path, prov))
        if out is None:
            refuse_no_record(path)
        original = current
    plan = _checked_plan(path, original, ctx, method, alpha, replace_scaling, options)
    if note := method_note(plan, "gguf_note"):
        warnings.append(note)
    warnings.extend(plan.warnings)
    base_kvs = original_kvs(h, prov)
    new_kvs = apply_params(base_kvs, params_to_kvs(plan))
    if not record:
        return _patch_no_record(h, new_kvs, plan, target, dry_run, tuple(warnings), progress)
    if prov is None and any(kv.key.startswith(K.RP_PREFIX) for kv in h.kvs):
        raise FormatError(
            f"{shown(path)}: has ropepatch.* keys but no undo record ({K.RP_ORIGINAL!r}); the "
            f"provenance is damaged, so ropepatch cannot tell the original values"
        )
    replaced = replace_scaling and bool(plan.original.freq_factors) and get_method(plan.method).writes_factors
    return _patch_recorded(h, prov, plan, (new_kvs, base_kvs, replaced), out, target, dry_run, warnings, progress)


def _patch_recorded(h: GGUFHeader, prov: Provenance | None, plan: Plan, kvs, out: str | None,
                    target: str, dry_run: bool, warnings: list[str], progress) -> PatchResult:
    """A patch with provenance: lay out the header (and rope_freqs), then commit it. ``kvs``:
    (the original entries with the plan applied, the original entries, whether the plan's
    factors replace the file's own)."""
    path, (new_kvs, base_kvs, replaced) = h.path, kvs
    freqs = original_freqs(path, h, prov, plan)
    tensors = freqs_layout(path, h, freqs, wanted_bytes(plan, freqs) if freqs is not None else None)
    infos = (tensors.info_raw, tensors.n_tensors)
    keep = prov.record.link if prov is not None and out is None else None  # a copy has no link
    layout_kvs = recorded_layout(h, prov, plan, new_kvs, base_kvs, keep, freqs, replaced)
    header, _ = layout_header(h, layout_kvs, rewrite_layout=prov is None, tensors=infos)
    if header == h.raw and tensors.data_unchanged(h) and out is None:
        _tidy(path, dry_run)
        return PatchResult(path, target, plan, "no-op", (), tuple(warnings))
    link = (keep or symlink_of(path)) if out is None else None
    if link != keep:  # a symlink replaced now: record its target so revert restores it
        layout_kvs = recorded_layout(h, prov, plan, new_kvs, base_kvs, link, freqs, replaced)
        header, _ = layout_header(h, layout_kvs, rewrite_layout=prov is None, tensors=infos)
    changes = changed_entries(list(h.kvs), layout_kvs)
    _check_header(h, header, "the patched header", tensors)
    if out is None and (note := patch_note(path)):
        warnings.append(note)
    what = tensors.describe()
    if dry_run:
        return PatchResult(path, target, plan, "dry-run", changes, tuple(warnings), tensor_change=what)
    done = commit_with_data(h, header, tensors, target, progress, _space_remedy(prov, out, path))
    return PatchResult(path, target, plan, done.mode, changes, tuple(warnings), done.bytes_written, what,
                       done.data_bytes)


def _tidy(path: str, dry_run: bool) -> None:
    """A run that writes nothing still clears the temp files killed runs left next to ``path``
    (a dry run changes nothing at all)."""
    if not dry_run:
        remove_stale_temps(os.path.dirname(os.path.abspath(path)))


def _space_remedy(prov: Provenance | None, out: str | None, path: str) -> str:
    """What a patch can do when the disk lacks room for its rewrite (only options it has)."""
    if out is not None:
        return "free some space or choose another -o directory"
    if prov is None and not linked(path):
        return "free some space, write elsewhere with -o OUT, or use --no-record to patch in place"
    return "free some space or write a patched copy elsewhere with -o OUT"


def _patch_no_record(h: GGUFHeader, new_kvs, plan: Plan, target: str, dry_run: bool,
                     warnings: tuple[str, ...], progress) -> PatchResult:
    changes = changed_entries(list(h.kvs), new_kvs)
    body = no_record_header(h, new_kvs, changes, target)
    if not changes:
        _tidy(target, dry_run)
        return PatchResult(h.path, target, plan, "no-op", (), warnings)
    _check_header(h, body, "the edited header")
    if dry_run:
        return PatchResult(h.path, target, plan, "dry-run", changes, warnings)
    # in place: one pwrite from the first changed byte to the last (all inside one page,
    # checked above), so a kill cannot land between two changed values
    done = commit(h, body, target, progress, "free some space or choose another -o directory")
    mode = "no-op" if done.mode == "in-place" and not done.bytes_written else done.mode
    return PatchResult(h.path, target, plan, mode, changes, warnings, done.bytes_written)


# ---- revert ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevertResult:
    """What :func:`revert_gguf` did (or would do, for a dry run)."""

    path: str
    out: str
    mode: str  # "in-place" | "rewrite" | "restored-symlink" | "dry-run"
    sha256_header: str
    changes: tuple[Change, ...]
    messages: tuple[str, ...] = ()  # notes for the user (links restored or replaced)
    tensor_change: str = ""  # what happens to rope_freqs.weight ("" = nothing)


def _original_header(h: GGUFHeader, prov: Provenance, tensors: TensorLayout) -> tuple[bytes, str]:
    """The original header bytes the undo record describes (with the original tensor infos
    ``tensors`` gives), and their sha256; refused (one line, before anything is written) when
    they cannot be reproduced exactly or would not be a header ropepatch itself accepts (a
    forged or damaged record)."""
    rec = prov.record
    body = serialize_header(h.version, original_kvs(h, prov), tensors.info_raw, tensors.n_tensors)
    if rec.data_offset > h.data_offset:  # a first patch only ever grows the header
        raise FormatError(
            f"{shown(h.path)}: key {K.RP_ORIGINAL!r}: recorded original data offset "
            f"{rec.data_offset} is past the current one ({h.data_offset}); the provenance is damaged"
        )
    header = body + rec.original_padding(len(body))
    sha = hashlib.sha256(header).hexdigest()
    if len(header) != rec.data_offset or sha != rec.header_sha256:
        raise WriteError(
            f"{shown(h.path)}: cannot reproduce the original header ({len(header)} bytes, sha256 "
            f"{sha[:12]}...; recorded {rec.data_offset} bytes, {rec.header_sha256[:12]}...): the file "
            f"was changed outside ropepatch after patching, or its undo record is damaged; nothing "
            f"written"
        )
    _check_header(h, header, f"the original header rebuilt from the undo record ({K.RP_ORIGINAL!r})", tensors)
    return header, sha


def _recorded_original(h: GGUFHeader, prov: Provenance) -> tuple[TensorLayout, bytes, str]:
    """What the undo record restores: the tensor layout, the original header bytes and their
    sha256, refused (one line) unless the record reproduces the recorded header exactly. Revert
    writes it; a re-patch checks it first, so a forged or damaged record is refused before the
    patch builds on it (not only later, by revert)."""
    freqs = prov.record.rope_freqs
    tensors = freqs_layout(h.path, h, freqs, freqs.raw if freqs is not None else None)
    header, sha = _original_header(h, prov, tensors)
    return tensors, header, sha


def revert_gguf(path: str, out: str | None = None, dry_run: bool = False, progress=None) -> RevertResult:
    """Restore the exact original bytes of a GGUF file ropepatch patched. A file that was a
    symlink when it was patched becomes that symlink again when its target still holds the
    original bytes; a linked file is never written through."""
    target = check_out(path, out)
    _check_first_split(path)
    h = read_header(path, shown(path))
    prov = read_provenance(h, options=False)
    if prov is None:
        raise NotPatchedError(
            f"{shown(path)}: no ropepatch provenance (key {K.RP_ORIGINAL!r} is absent): the file "
            f"was not patched by ropepatch, or was patched with --no-record; nothing to revert"
        )
    tensors, header, sha = _recorded_original(h, prov)
    changes = changed_entries(list(h.kvs), original_kvs(h, prov))
    recorded = prov.record.link if out is None else None
    size = len(header) + tensors.keep + len(tensors.trailing)
    back = recorded is not None and holds_original(path, recorded, header, size)
    notes = tuple(revert_notes(path, recorded, back)) if out is None else ()
    if dry_run:
        return RevertResult(path, target, "dry-run", sha, changes, notes)
    check_can_replace(target, "write the original elsewhere with -o OUT")
    if back:
        relink(h, recorded)
        return RevertResult(path, target, "restored-symlink", sha, changes, notes)
    remedy = ("free some space or choose another -o directory" if out is not None
              else "free some space or write the original elsewhere with -o OUT")
    done = commit_with_data(h, header, tensors, target, progress, remedy)
    return RevertResult(path, target, done.mode, sha, changes, notes, tensors.describe())
