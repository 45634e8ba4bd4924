"""Where a GGUF patch puts each header entry, and the header bytes that result.

The first patch adds keys, so it rewrites the file (kernel copy of the tensor bytes). It ends
the header with a ``ropepatch.reserved`` filler sized so the new data offset is the old one
plus a multiple of 4096 (block-aligned copies; reflinks where the filesystem can) and leaves at
least :data:`MIN_SLACK` bytes of slack. Later patches resize the filler and overwrite just the
changed header bytes in place.

Crash safety of those in-place writes (see docs/reliability.md). The first patch lays the
header out as (:func:`recorded_layout`): the original keys a patch never touches, in their
order; ``ropepatch.original`` (fixed from then on; its JSON is padded with spaces so what
follows starts on a 4 KiB page boundary); one slot per :data:`keys.TOUCHED_KEYS` entry, holding
the key or, where it is absent, a ``ropepatch.unset.*`` placeholder (so the entry count at
offset 16 never changes); the other ``ropepatch.*`` keys; the filler. The touched keys'
original positions are recorded (``"at"``) so revert puts them back. Every byte a re-patch
changes then lies in one run of a few hundred bytes inside one page, which the one commit rule
(:mod:`ropepatch.safeio.commit`) writes with one ``pwrite``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import KV, GGUFHeader, filler_kv, filler_overhead, make_kv, serialize_header
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.patch.gguf_record import FreqsRecord, Provenance, new_record, options_text, record_kv
from ropepatch.rope.methods import Plan
from ropepatch.version import __version__

MIN_SLACK = 1024  # bytes of filler left for later in-place patches
BLOCK = 4096  # a first patch moves the data by a multiple of this


@dataclass(frozen=True)
class Change:
    """One metadata entry a patch or revert changes."""

    key: str
    old: object  # None = absent
    new: object  # None = removed


def apply_params(kvs: list[KV], want: dict[str, tuple[ValueType, object]]) -> list[KV]:
    """``kvs`` with each ``want`` entry (key -> (type, value)) set: replaced where present,
    appended after every other key where absent (so a later re-patch that adds or drops one
    rewrites only the header's tail, never the tokenizer arrays)."""
    out = list(kvs)
    for key, spec in want.items():
        idx = next((i for i, kv in enumerate(out) if kv.key == key), None)
        new = make_kv(key, *spec)
        if idx is not None:
            out[idx] = new
        else:
            out.append(new)
    return out


def changed_entries(before: list[KV], after: list[KV]) -> tuple[Change, ...]:
    """The entries that differ, in ``before``'s order then ``after``'s new ones; the record,
    the filler and the placeholders of absent keys are not shown."""
    b = {kv.key: kv for kv in before}
    a = {kv.key: kv for kv in after}
    out = []
    for key in list(b) + [x for x in a if x not in b]:
        if key in (K.RP_RESERVED, K.RP_ORIGINAL) or key.startswith(K.RP_UNSET):
            continue
        kb, ka = b.get(key), a.get(key)
        if kb is None or ka is None or kb.raw != ka.raw:
            out.append(Change(key, kb.value if kb else None, ka.value if ka else None))
    return tuple(out)


def recorded_layout(h: GGUFHeader, prov: Provenance | None, plan: Plan, new_kvs: list[KV],
                    base_kvs: list[KV], link: str | None = None, freqs: FreqsRecord | None = None,
                    replaced: bool = False) -> list[KV]:
    """The entries of a patch with provenance, in the order the module docstring gives (the
    filler excluded). ``new_kvs``: the original entries ``base_kvs`` with the plan applied;
    ``link``: the symlink target the undo record names (a patch that replaces a symlink records
    it; a copy written with -o records none); ``freqs``: the original rope_freqs state, recorded
    once a factor method touches it. The record entry is kept byte for byte when it already
    says all that. ``replaced``: the plan's factors replace the file's own (recorded in
    ``ropepatch.options``)."""
    arch = plan.target.arch
    changes_attn = plan.target.attn_factor != plan.original.attn_factor  # recorded once a plan changes it
    lazy = [t for t in K.LAZY_TOUCHED_KEYS if changes_attn or (prov is not None and k(t, arch) in prov.record.keys)]
    touched = [(t, k(t, arch)) for t in K.TOUCHED_KEYS + tuple(lazy)]
    touched_keys = {key for _, key in touched}
    kept = [kv for kv in new_kvs if kv.key not in touched_keys]
    reuse = (prov is not None and prov.record.at is not None and prov.record.link == link
             and prov.record.rope_freqs == freqs and touched_keys <= set(prov.record.keys))
    rec_kv = h.entry(K.RP_ORIGINAL) if reuse else None
    if rec_kv is None:  # first patch, a file patched before keys moved, the link, rope_freqs or lazy keys change
        rec = new_record(h, arch) if prov is None else prov.record
        at = {kv.key: i for i, kv in enumerate(base_kvs) if kv.key in touched_keys}
        base = {kv.key: kv for kv in base_kvs}  # a lazy key not yet recorded: base_kvs hold its original state
        keys = {**{key: base.get(key) for _, key in touched}, **rec.keys}
        at = at if rec.at is None else {**{key: i for key, i in at.items() if key not in rec.keys}, **rec.at}
        rec = dataclasses.replace(rec, keys=keys, at=at, link=link, rope_freqs=freqs)
        rec_kv = record_kv(rec, 24 + sum(len(kv.raw) for kv in kept))
    by_key = {kv.key: kv for kv in new_kvs}
    slots = [by_key.get(key) or make_kv(K.RP_UNSET + t.replace("{arch}.", ""), ValueType.UINT8, 0)
             for t, key in touched]
    rp = [
        make_kv(K.RP_VERSION, ValueType.STRING, __version__),
        make_kv(K.RP_METHOD, ValueType.STRING, plan.method),
        make_kv(K.RP_CTX, ValueType.UINT32, plan.ctx),
        make_kv(K.RP_ALPHA, ValueType.FLOAT64, float(plan.alpha)),
    ]
    if plan.options:  # only methods with options write the key (the others' bytes stay as before)
        rp.append(make_kv(K.RP_OPTIONS, ValueType.STRING, options_text(plan.options, replaced)))
    return kept + [rec_kv] + slots + rp


def layout_header(h: GGUFHeader, kvs: list[KV], rewrite_layout: bool,
                  tensors: tuple[bytes, int] | None = None) -> tuple[bytes, int]:
    """Serialise ``kvs`` + a filler (+ the tensor infos ``tensors`` = (raw block, count);
    default ``h``'s); return (header bytes incl. padding, data offset). The data offset stays
    unless the entries outgrow it or ``rewrite_layout`` (a first patch) asks for
    :data:`MIN_SLACK` bytes of slack."""
    info_raw, n_t = tensors if tensors is not None else (h.tensor_info_raw, len(h.tensors))
    body0 = serialize_header(h.version, kvs, info_raw, n_t)
    h0 = len(body0) + filler_overhead(K.RP_RESERVED)
    if not rewrite_layout and h.data_offset - h0 >= 0:
        new_off = h.data_offset
    elif BLOCK % h.alignment == 0:
        new_off = h.data_offset
        while new_off - h0 < MIN_SLACK:
            new_off += BLOCK
    else:  # exotic alignment: just round up
        new_off = -(-(h0 + MIN_SLACK) // h.alignment) * h.alignment
    body = serialize_header(h.version, kvs + [filler_kv(K.RP_RESERVED, new_off - h0)], info_raw, n_t)
    assert len(body) == new_off
    return body, new_off
