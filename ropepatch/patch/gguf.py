"""Patch, revert and inspect the RoPE settings of GGUF files.

Provenance. The first patch of a file records, under ``ropepatch.original``, an undo record:
the original on-disk value bytes (or absence) of every key a patch may touch
(:data:`keys.TOUCHED_KEYS`), the original data offset, any non-zero padding and the sha256 of
the original header. Revert rebuilds the original header from it, checks the hash, and puts
the tensor bytes back behind it: the result is the original file, byte for byte. Re-patches
start from the recorded originals, so patching a patched file never compounds.

Layout. The first patch adds keys, so it rewrites the file (kernel copy of the tensor bytes).
It ends the header with a ``ropepatch.reserved`` filler sized so the new data offset is the
old one plus a multiple of 4096 (block-aligned copies; reflinks where the filesystem can) and
leaves at least :data:`MIN_SLACK` bytes of slack. Later patches resize the filler and
overwrite just the changed header bytes in place.

Crash safety of those in-place writes (see docs/reliability.md). The first patch lays the
header out as: the original keys a patch never touches, in their order; ``ropepatch.original``
(fixed from then on; its JSON is padded with spaces so what follows starts on a 4 KiB page
boundary); one slot per :data:`keys.TOUCHED_KEYS` entry, holding the key or, where it is absent,
a ``ropepatch.unset.*`` placeholder (so the entry count at offset 16 never changes); the other
``ropepatch.*`` keys; the filler. The touched keys' original positions are recorded (``"at"``)
so revert puts them back. Every byte a re-patch changes then lies in one run of a few hundred
bytes inside one page, written by one ``pwrite``: a kill -9 leaves either the old or the new
header, never a mix (the kernel only gives up on a write for a fatal signal between pages).
Any in-place change that is not one run inside one page is done as an atomic rewrite instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field

from ropepatch.version import __version__
from ropepatch.formats.gguf import keys as K
from ropepatch.errors import (
    RopepatchError,
    FormatError,
    NotPatchedError,
    UsageError,
    WriteError,
)
from ropepatch.safeio.commit import Commit, changed_run, commit_header, page_local_run
from ropepatch.safeio.files import check_can_replace, locked
from ropepatch.formats.gguf.header import (
    KV,
    ArrayValue,
    GGUFHeader,
    filler_kv,
    filler_overhead,
    kv_from_value_raw,
    make_kv,
    read_header,
    serialize_header,
)
from ropepatch.formats.gguf.params import params_from_kvs, params_to_kvs
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.rope.methods import DEFAULT_METHOD, Plan, make_plan
from ropepatch.rope.params import RopeParams

MIN_SLACK = 1024  # bytes of filler left for later in-place patches
BLOCK = 4096
RECORD_FORMAT = 1
_F32_MAX = 3.4028234663852886e38
PAGE = 4096  # the re-patchable tail of the header starts on a page boundary
RP_UNSET = "ropepatch.unset."  # + a TOUCHED_KEYS template minus "{arch}.": slot of an absent key
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


# ---- provenance -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """What ropepatch recorded in a file it patched."""

    version: str
    method: str
    ctx: int
    alpha: float
    record: dict  # the undo record (ropepatch.original)


def _provenance(h: GGUFHeader) -> Provenance | None:
    raw = h.get(K.RP_ORIGINAL)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        if record.get("format") != RECORD_FORMAT:
            raise ValueError("format")
        if not (isinstance(record["keys"], dict) and type(record["data_offset"]) is int
                and record["data_offset"] >= 0 and isinstance(record["header_sha256"], str)
                and isinstance(record.get("padding", ""), str)):
            raise ValueError("field types")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise FormatError(
            f"{h.path}: key {K.RP_ORIGINAL!r}: expected a ropepatch undo record (JSON, format "
            f"{RECORD_FORMAT}), found something else; the provenance is damaged"
        ) from None
    return Provenance(
        version=str(h.get(K.RP_VERSION, "?")),
        method=str(h.get(K.RP_METHOD, "?")),
        ctx=int(_finite(h.get(K.RP_CTX))),
        alpha=float(_finite(h.get(K.RP_ALPHA))),
        record=record,
    )


def _finite(v) -> float | int:
    """A provenance number as written, or 0 when the key is absent or not a finite number (the
    informational keys may be damaged without making the undo record unusable)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return v if ok else 0


def _arch_of(h: GGUFHeader) -> str:
    arch = h.get(K.GENERAL_ARCHITECTURE)
    if not isinstance(arch, str):
        raise FormatError(
            f"{h.path}: missing key {K.GENERAL_ARCHITECTURE!r}; not a model file (for split models "
            f"pass the first split, *-00001-of-*.gguf)"
        )
    return arch


def _original_kvs(h: GGUFHeader, prov: Provenance | None) -> list[KV]:
    """The metadata entries as they were before ropepatch touched the file."""
    if prov is None:
        return list(h.kvs)
    recorded = prov.record["keys"]
    out: list[KV] = []
    for kv in h.kvs:
        if kv.key.startswith(K.RP_PREFIX):
            continue
        if kv.key in recorded:
            orig = recorded[kv.key]
            if orig is None:
                continue  # added by ropepatch
            try:
                kv = kv_from_value_raw(kv.key, ValueType(orig["type"]), bytes.fromhex(orig["raw"]))
            except (KeyError, ValueError, TypeError, FormatError):
                raise FormatError(
                    f"{h.path}: key {K.RP_ORIGINAL!r}: the recorded original of {kv.key!r} is "
                    f"damaged; the provenance cannot be used"
                ) from None
        out.append(kv)
    at = prov.record.get("at")
    if at is None:  # written before touched keys were moved to the tail: they never moved
        return out
    if not isinstance(at, dict) or not all(type(i) is int and i >= 0 for i in at.values()):
        raise FormatError(
            f"{h.path}: key {K.RP_ORIGINAL!r}: the recorded key positions are damaged; the "
            f"provenance cannot be used"
        )
    # the first patch moved the touched keys to the header's tail: put them back where they were
    moved = sorted(((at[kv.key], kv) for kv in out if kv.key in at), key=lambda p: p[0])
    out = [kv for kv in out if kv.key not in at]
    for i, kv in moved:
        out.insert(i, kv)
    return out


def _make_record(h: GGUFHeader, arch: str) -> dict:
    present = {kv.key: kv for kv in h.kvs}
    rec_keys = {}
    for template in K.TOUCHED_KEYS:
        key = k(template, arch)
        kv = present.get(key)
        rec_keys[key] = None if kv is None else {"type": int(kv.type), "raw": kv.value_raw.hex()}
    record = {
        "format": RECORD_FORMAT,
        "keys": rec_keys,
        "data_offset": h.data_offset,
        "header_sha256": _header_sha(h),
    }
    if any(h.padding):
        record["padding"] = h.padding.hex()
    return record


def _record_kv(record: dict, offset: int) -> KV:
    """The ``ropepatch.original`` entry for an undo record placed at header ``offset``, its JSON
    padded with spaces so the entry ends on a page boundary."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    end = offset + len(make_kv(K.RP_ORIGINAL, ValueType.STRING, text).raw)
    return make_kv(K.RP_ORIGINAL, ValueType.STRING, text + " " * (-end % PAGE))


def _header_sha(h: GGUFHeader) -> str:
    body = serialize_header(h.version, h.kvs, h.tensor_info_raw, len(h.tensors))
    return hashlib.sha256(body + h.padding).hexdigest()


# ---- inspect --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
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
            f"{path}: this is split {sp[0]} of {sp[1]}; llama.cpp reads hyperparameters from the "
            f"first split: pass {first} (the other splits need no change)"
        )


def _load(path: str) -> tuple[GGUFHeader, Provenance | None, RopeParams, RopeParams]:
    _check_first_split(path)
    h = read_header(path)
    prov = _provenance(h)
    names = [t.name for t in h.tensors]
    current = params_from_kvs({kv.key: kv for kv in h.kvs}, names, path)
    orig_kvs = _original_kvs(h, prov)
    original = params_from_kvs({kv.key: kv for kv in orig_kvs}, names, path)
    return h, prov, current, original


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
class Change:
    key: str
    old: object  # None = absent
    new: object  # None = removed


@dataclass(frozen=True)
class PatchResult:
    path: str
    out: str
    plan: Plan | None
    mode: str  # "in-place" | "rewrite" | "no-op" | "dry-run"
    changes: tuple[Change, ...]
    warnings: tuple[str, ...] = field(default=())
    bytes_written: int = 0


def _apply_desired(kvs: list[KV], want) -> list[KV]:
    out = list(kvs)
    for key, spec in want.items():
        idx = next((i for i, kv in enumerate(out) if kv.key == key), None)
        new = make_kv(key, *spec)
        if idx is not None:
            out[idx] = new
            continue
        # new keys go after every original key (before ropepatch's own), so a later re-patch
        # that adds or drops one rewrites only the header's tail, never the tokenizer arrays
        out.append(new)
    return out


def _changes(before: list[KV], after: list[KV]) -> tuple[Change, ...]:
    b = {kv.key: kv for kv in before}
    a = {kv.key: kv for kv in after}
    out = []
    for key in list(b) + [x for x in a if x not in b]:
        if key in (K.RP_RESERVED, K.RP_ORIGINAL) or key.startswith(RP_UNSET):
            continue
        kb, ka = b.get(key), a.get(key)
        if kb is None or ka is None or kb.raw != ka.raw:
            out.append(Change(key, kb.value if kb else None, ka.value if ka else None))
    return tuple(out)


def _layout(h: GGUFHeader, kvs: list[KV], rewrite_layout: bool) -> tuple[bytes, int]:
    """Serialise ``kvs`` + a filler; return (header bytes incl. padding, data offset)."""
    n_t = len(h.tensors)
    body0 = serialize_header(h.version, kvs, h.tensor_info_raw, n_t)
    h0 = len(body0) + filler_overhead(K.RP_RESERVED)
    if not rewrite_layout and h.data_offset - h0 >= 0:
        new_off = h.data_offset
    elif BLOCK % h.alignment == 0:
        new_off = h.data_offset
        while new_off - h0 < MIN_SLACK:
            new_off += BLOCK
    else:  # exotic alignment: just round up
        new_off = -(-(h0 + MIN_SLACK) // h.alignment) * h.alignment
    body = serialize_header(h.version, kvs + [filler_kv(K.RP_RESERVED, new_off - h0)], h.tensor_info_raw, n_t)
    assert len(body) == new_off
    return body, new_off


def _read_prefix(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _check_out(path: str, out: str | None) -> str:
    if out is None:
        return path
    if os.path.abspath(out) == os.path.abspath(path) or (
        os.path.exists(out) and os.path.samefile(out, path)
    ):
        raise UsageError(
            f"{path}: -o/--output names the input file itself; drop -o to patch in place, or name "
            f"a different output file"
        )
    if os.path.isdir(out):
        raise UsageError(f"{out}: -o/--output is a directory; name the output file")
    return out


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
) -> PatchResult:
    """Extend the GGUF model at ``path`` to ``ctx`` tokens with ``method``.

    Writes in place (or to ``out``); ``record=False`` edits existing same-size values in place
    without provenance (no revert, no protection against compounding).
    """
    target = _check_out(path, out)
    h, prov, current, original = _load(path)
    arch = current.arch
    warnings: list[str] = []
    if not record:
        if prov is not None:
            raise UsageError(
                f"{path}: the file already carries ropepatch provenance, so a normal patch is "
                f"written in place already; drop --no-record"
            )
        warnings.append(
            "--no-record: no provenance is written, so 'ropepatch revert' cannot undo this patch "
            "and a later patch will treat these values as the originals (scaling would compound)"
        )
        original = current
    try:
        plan = make_plan(original, ctx, method, alpha, replace_scaling)
    except RopepatchError as e:
        raise type(e)(f"{path}: {e}") from None
    for what, v in (("rope.freq_base", plan.target.freq_base), ("rope.scaling.factor", plan.target.scaling_factor)):
        if not (math.isfinite(v) and abs(v) <= _F32_MAX):  # struct.pack("<f") would overflow
            raise UsageError(
                f"{path}: {plan.method} with alpha {plan.alpha:g} gives {what} {v:g}, beyond the "
                f"largest GGUF float32 ({_F32_MAX:.4g}); use a smaller --alpha or --ctx"
            )
    if plan.method == "dynamic":
        warnings.append(
            f"dynamic: llama.cpp has no dynamic NTK mode; the file gets the base dynamic NTK would "
            f"use at {ctx} tokens ({plan.target.freq_base:.6g}), and the runtime will use it at "
            f"EVERY length, short prompts included"
        )
    want = params_to_kvs(plan)
    base_kvs = _original_kvs(h, prov)
    new_kvs = _apply_desired(base_kvs, want)

    if not record:
        changes = _changes(list(h.kvs), new_kvs)
        return _patch_no_record(h, new_kvs, plan, target, dry_run, warnings, changes, progress)

    if prov is None and any(kv.key.startswith(K.RP_PREFIX) for kv in h.kvs):
        raise FormatError(
            f"{path}: has ropepatch.* keys but no undo record ({K.RP_ORIGINAL!r}); the provenance "
            f"is damaged, so ropepatch cannot tell the original values"
        )
    # tail layout (module docstring): untouched originals, the record, the touched-key slots,
    # ropepatch's keys, the filler
    touched = [(t, k(t, arch)) for t in K.TOUCHED_KEYS]
    touched_keys = {key for _, key in touched}
    kept = [kv for kv in new_kvs if kv.key not in touched_keys]
    record_kv = h.entry(K.RP_ORIGINAL) if prov is not None and "at" in prov.record else None
    if record_kv is None:  # first patch (or a file patched before keys moved): new record
        rec = _make_record(h, arch) if prov is None else dict(prov.record)
        rec["at"] = {kv.key: i for i, kv in enumerate(base_kvs) if kv.key in touched_keys}
        record_kv = _record_kv(rec, 24 + sum(len(kv.raw) for kv in kept))
    by_key = {kv.key: kv for kv in new_kvs}
    slots = [by_key.get(key) or make_kv(RP_UNSET + t.replace("{arch}.", ""), ValueType.UINT8, 0)
             for t, key in touched]
    rp = [
        make_kv(K.RP_VERSION, ValueType.STRING, __version__),
        make_kv(K.RP_METHOD, ValueType.STRING, plan.method),
        make_kv(K.RP_CTX, ValueType.UINT32, ctx),
        make_kv(K.RP_ALPHA, ValueType.FLOAT64, float(plan.alpha)),
    ]
    layout_kvs = kept + [record_kv] + slots + rp
    changes = _changes(list(h.kvs), layout_kvs)
    header, new_off = _layout(h, layout_kvs, rewrite_layout=prov is None)
    if header == h.raw and out is None:
        return PatchResult(path, target, plan, "no-op", (), tuple(warnings))
    if dry_run:
        return PatchResult(path, target, plan, "dry-run", changes, tuple(warnings))
    done = _commit(h, header, target, progress)
    return PatchResult(path, target, plan, done.mode, changes, tuple(warnings), done.bytes_written)


def _patch_no_record(h, new_kvs, plan, target, dry_run, warnings, changes, progress) -> PatchResult:
    old = {kv.key: kv for kv in h.kvs}
    for c in changes:
        kv_old = old.get(c.key)
        kv_new = next(kv for kv in new_kvs if kv.key == c.key) if c.new is not None else None
        if kv_old is None or kv_new is None or len(kv_old.raw) != len(kv_new.raw):
            raise UsageError(
                f"{h.path}: --no-record can only change existing values of the same size, but "
                f"{c.key!r} would be {'added' if kv_old is None else 'resized'}; drop --no-record "
                f"(the file is then rewritten once, with provenance)"
            )
    body = serialize_header(h.version, new_kvs, h.tensor_info_raw, len(h.tensors)) + h.padding
    assert len(body) == h.data_offset
    if not changes:
        return PatchResult(h.path, target, plan, "no-op", (), tuple(warnings))
    if target == h.path and page_local_run(h.raw, body) is None:
        # in place: a kill is all-or-nothing only for one pwrite inside one page
        first, end = changed_run(h.raw, body)
        last = end - 1
        pages = last // PAGE - first // PAGE + 1
        if pages > 1:
            raise UsageError(
                f"{h.path}: --no-record: the changed values span {pages} pages of the header "
                f"(bytes {first}-{last}), so an interrupted write could leave a mix of old and new "
                f"values; drop --no-record so ropepatch can rewrite the file (free disk space "
                f"first if it is full); nothing written"
            )
    if dry_run:
        return PatchResult(h.path, target, plan, "dry-run", changes, tuple(warnings))
    # in place: one pwrite from the first changed byte to the last (all inside one page,
    # checked above), so a kill cannot land between two changed values
    done = _commit(h, body, target, progress)
    mode = "no-op" if done.mode == "in-place" and not done.bytes_written else done.mode
    return PatchResult(h.path, target, plan, mode, changes, tuple(warnings), done.bytes_written)


def _commit(h: GGUFHeader, header: bytes, target: str, progress) -> Commit:
    """Under the file's lock, and only if nobody changed the header since it was read: write
    ``header`` over ``h``'s (into ``target``) by the one commit rule (:mod:`safeio.commit`)."""
    with locked(h.path):
        _recheck(h.path, h)
        return commit_header(h.path, h.raw, header, h.data_offset, h.data_length, h.file_size,
                             dst=target, progress=progress)


def _recheck(path: str, h: GGUFHeader) -> None:
    """Under the lock: make sure nobody changed the header since we read it."""
    if os.path.getsize(path) != h.file_size or _read_prefix(path, h.data_offset) != h.raw:
        raise WriteError(f"{path}: the file changed while ropepatch was preparing the patch; run again")


# ---- revert ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevertResult:
    path: str
    out: str
    mode: str  # "in-place" | "rewrite"
    sha256_header: str
    changes: tuple[Change, ...]


def revert_gguf(path: str, out: str | None = None, dry_run: bool = False, progress=None) -> RevertResult:
    """Restore the exact original bytes of a GGUF file ropepatch patched."""
    target = _check_out(path, out)
    _check_first_split(path)
    h = read_header(path)
    prov = _provenance(h)
    if prov is None:
        raise NotPatchedError(
            f"{path}: no ropepatch provenance (key {K.RP_ORIGINAL!r} is absent): the file was "
            f"not patched by ropepatch, or was patched with --no-record; nothing to revert"
        )
    rec = prov.record
    kvs = _original_kvs(h, prov)
    body = serialize_header(h.version, kvs, h.tensor_info_raw, len(h.tensors))
    data_off = rec["data_offset"]
    if data_off > h.data_offset:  # a first patch only ever grows the header
        raise FormatError(
            f"{path}: key {K.RP_ORIGINAL!r}: recorded original data offset {data_off} is past the "
            f"current one ({h.data_offset}); the provenance is damaged"
        )
    try:
        pad = bytes.fromhex(rec.get("padding", "")) or bytes(max(0, data_off - len(body)))
    except ValueError:
        raise FormatError(f"{path}: key {K.RP_ORIGINAL!r}: the recorded padding is not hex; the provenance is damaged") from None
    header = body + pad
    sha = hashlib.sha256(header).hexdigest()
    if len(header) != data_off or sha != rec["header_sha256"]:
        raise WriteError(
            f"{path}: cannot reproduce the original header (sha256 {sha[:12]}..., recorded "
            f"{str(rec['header_sha256'])[:12]}...): the file was changed outside ropepatch after "
            f"patching; nothing written"
        )
    changes = _changes(list(h.kvs), kvs)
    if dry_run:
        return RevertResult(path, target, "dry-run", sha, changes)
    check_can_replace(target)
    done = _commit(h, header, target, progress)
    return RevertResult(path, target, done.mode, sha, changes)
