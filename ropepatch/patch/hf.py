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
repeat with the same arguments writes nothing. What is written (see :mod:`ropepatch.hf_config`
for the config keys per method):

* every shard's ``__metadata__`` gets ``ropepatch.version``, ``.method``, ``.ctx``, ``.alpha``,
  ``.config_sha256`` (of the config.json written), a ``.reserved`` filler (spaces) and
  ``.original`` (a JSON undo record: the shard's original ``__metadata__`` text and header
  length, the original config.json text and any symlink targets), in that order after the
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

``force``: config.json edited by hand after ropepatch patched it (its sha256 matches neither the
recorded patched nor the original text) is refused by patch and revert, since both would discard
the edit; ``force=True`` discards it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ropepatch.safeio import files as fileio
from ropepatch.formats.hf import keys as hk
from ropepatch.errors import FormatError, NotPatchedError, RopepatchError, UsageError, WriteError
from ropepatch.formats.hf.config import (
    ConfigChange,
    ConfigDoc,
    HFRope,
    apply_plan,
    check_composable_hf,
    diff_configs,
    dump_config,
    parse_config,
    read_rope,
    rope_block,
    unscaled_params,
)
from ropepatch.rope.methods import DEFAULT_METHOD, Plan, make_plan
from ropepatch.rope.params import RopeParams
from ropepatch.formats.safetensors import (
    SafetensorsHeader,
    metadata_json,
    pad_header,
    page_local_run,
    read_header,
    with_metadata_text,
    write_header,
)

RP_PREVIOUS_CONFIG_SHA256 = hk.RP_PREVIOUS_CONFIG_SHA256  # re-exported (tests, crash harness)

# The __metadata__ entries a re-patch may change, in the order layout_metadata writes them.
_RP_CHANGING = (hk.RP_VERSION, hk.RP_METHOD, hk.RP_CTX, hk.RP_ALPHA, hk.RP_CONFIG_SHA256,
                RP_PREVIOUS_CONFIG_SHA256)

# weight files skipped when copying a model directory to ``out``
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")


def ropepatch_version() -> str:
    """The installed ropepatch version (``ropepatch.__version__``, else package metadata)."""
    try:
        from ropepatch.version import __version__

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return version("ropepatch")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "0+unknown"


def layout_metadata(meta: Mapping[str, str]) -> str:
    """The ``__metadata__`` value text ropepatch writes for the entries of ``meta``.

    Order: the other entries (``"format"`` and whatever the file had) in their order; the
    entries a re-patch changes (:data:`_RP_CHANGING`, those present); the
    :data:`~ropepatch.hf_keys.RP_RESERVED` filler; the undo record
    :data:`~ropepatch.hf_keys.RP_ORIGINAL`. The filler (spaces; any filler in ``meta`` is
    ignored) is sized so the text has the same length whatever the changing values are, as long
    as they fit in :data:`~ropepatch.hf_keys.RP_VALUE_BUDGET` bytes. A re-patch then changes
    only the bytes from the first changed value to the filler, and the same entries always give
    the same bytes (patching twice equals patching once).
    """
    skip = {*_RP_CHANGING, hk.RP_RESERVED, hk.RP_ORIGINAL}
    base = {k: v for k, v in meta.items() if k not in skip}
    changing = {k: meta[k] for k in _RP_CHANGING if k in meta}
    tail = {hk.RP_ORIGINAL: meta[hk.RP_ORIGINAL]} if hk.RP_ORIGINAL in meta else {}
    skeleton = {**base, **{k: "" for k in _RP_CHANGING[:-1]}, hk.RP_RESERVED: "", **tail}
    target = len(metadata_json(skeleton).encode("utf-8")) + hk.RP_VALUE_BUDGET
    bare = len(metadata_json({**base, **changing, hk.RP_RESERVED: "", **tail}).encode("utf-8"))
    return metadata_json({**base, **changing, hk.RP_RESERVED: " " * max(0, target - bare), **tail})


def _in_place(hdr: SafetensorsHeader, header: bytes, linked: bool) -> bool:
    """Whether :func:`write_header` writes ``header`` over ``hdr`` in place (one pwrite inside
    one page) rather than as an atomic rewrite."""
    return not linked and page_local_run(hdr, header) is not None


# ---- locating the model -------------------------------------------------------------------


@dataclass(frozen=True)
class HFModel:
    """The files one HF model path stands for."""

    root: str  # the model directory
    config_path: str
    index_path: str | None
    shards: tuple[str, ...]  # shard paths, sorted by name

    def to_dict(self) -> dict:
        return {"root": self.root, "config": self.config_path, "index": self.index_path,
                "shards": list(self.shards)}


def is_hf_path(path: str) -> bool:
    """True for a directory holding config.json, a .safetensors file or a config.json path."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, hk.CONFIG_NAME))
    return path.endswith(hk.SAFETENSORS_SUFFIX) or os.path.basename(path) == hk.CONFIG_NAME


def _read_index(index: str) -> list[str]:
    try:
        with open(index, "rb") as f:
            raw = f.read()
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise FormatError(f"{index}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{index}: malformed JSON ({str(e).splitlines()[0]}); fix or re-download it") from None
    wm = data.get(hk.INDEX_WEIGHT_MAP) if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise FormatError(
            f"{index}: expected {{\"weight_map\": {{tensor: shard file}}}}, found "
            f"{type(wm).__name__ if wm is not None else 'no weight_map'}"
        )
    names = sorted(set(wm.values()))
    for n in names:
        if os.path.basename(n) != n or n in ("", ".", ".."):
            raise FormatError(f"{index}: shard name {n!r} is not a plain file name")
    if not names:
        raise FormatError(f"{index}: weight_map lists no shards")
    return names


def resolve_model(path: str) -> HFModel:
    """The config.json and safetensors shards ``path`` stands for (FormatError/UsageError)."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    if os.path.isfile(path) and os.path.basename(path) == hk.CONFIG_NAME:
        path = os.path.dirname(os.path.abspath(path))
    single = None
    if os.path.isdir(path):
        root = os.path.abspath(path)
    elif path.endswith(hk.SAFETENSORS_SUFFIX):
        root = os.path.dirname(os.path.abspath(path))
        single = os.path.join(root, os.path.basename(path))
    else:
        raise UsageError(
            f"{path}: expected a Hugging Face model directory (config.json + *.safetensors) or a "
            f".safetensors file with config.json beside it"
        )
    config = os.path.join(root, hk.CONFIG_NAME)
    if not os.path.isfile(config):
        raise FormatError(f"{root}: no config.json (expected it next to the safetensors weights)")
    index = os.path.join(root, hk.INDEX_NAME)
    index_path = index if os.path.isfile(index) else None
    if index_path:
        names = _read_index(index_path)
        missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
        if missing:
            raise FormatError(
                f"{index_path}: lists {len(missing)} shard(s) missing from {root}: "
                f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; download them "
                f"or fix the index"
            )
        if single is not None:
            if os.path.basename(single) not in names:
                raise UsageError(f"{single}: not listed in {index_path}; pass the directory {root}")
            if len(names) > 1:
                raise UsageError(
                    f"{single}: one shard of a {len(names)}-shard model; pass the directory "
                    f"{root} so config.json and every shard stay consistent"
                )
        shards = [os.path.join(root, n) for n in names]
    elif single is not None:
        if not os.path.isfile(single):
            raise UsageError(f"{single}: not a regular file")
        shards = [single]
    else:
        shards = sorted(
            os.path.join(root, n)
            for n in os.listdir(root)
            if n.endswith(hk.SAFETENSORS_SUFFIX) and not n.startswith(".")
            and os.path.isfile(os.path.join(root, n))
        )
        if not shards:
            raise FormatError(
                f"{root}: no *.safetensors weights next to config.json; ropepatch records its "
                f"undo data in safetensors headers"
            )
    return HFModel(root, config, index_path, tuple(shards))


# ---- reading the current state ------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link_target(path: str) -> str | None:
    return os.readlink(path) if os.path.islink(path) else None


def _nlink(path: str) -> int:
    return os.lstat(path).st_nlink


def _parse_record(shard: str, raw: str) -> dict:
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


@dataclass
class _State:
    model: HFModel
    config_bytes: bytes
    config_doc: ConfigDoc
    headers: dict[str, SafetensorsHeader]
    records: dict[str, dict]  # shard -> parsed undo record (patched shards only)
    raw_records: dict[str, str]

    @property
    def patched(self) -> bool:
        return bool(self.records)

    def original_config_text(self) -> str:
        texts = {r["config"] for r in self.records.values()}
        if len(texts) > 1:
            raise FormatError(
                f"{self.model.root}: the shards record different original config.json texts; "
                f"the files come from different patch runs: restore them from their source"
            )
        return texts.pop() if texts else self.config_doc.text

    def recorded_config_link(self) -> str | None:
        links = {r.get("config_link") for r in self.records.values()}
        return links.pop() if len(links) == 1 else None

    def check_config_unchanged(self, force: bool, what: str) -> None:
        """Refuse when config.json was edited after ropepatch patched it."""
        if not self.patched or force:
            return
        cur = _sha(self.config_bytes)
        known = {h.metadata.get(k) for h in self.headers.values() if h.metadata
                 for k in (hk.RP_CONFIG_SHA256, RP_PREVIOUS_CONFIG_SHA256)}
        known.add(_sha(self.original_config_text().encode("utf-8")))
        if cur not in known:
            raise UsageError(
                f"{self.model.config_path}: changed since ropepatch patched it (sha256 "
                f"{cur[:12]} matches neither the patched nor the original text); {what} would "
                f"discard that change: undo it, or pass --force (force=True) to discard it"
            )


def _read_state(model: HFModel) -> _State:
    try:
        with open(model.config_path, "rb") as f:
            cbytes = f.read()
    except OSError as e:
        raise FormatError(f"{model.config_path}: cannot read: {e.strerror or e}") from None
    try:
        ctext = cbytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{model.config_path}: not UTF-8 text (byte {e.start}); expected a JSON config") from None
    doc = parse_config(ctext, model.config_path)
    headers, records, raws = {}, {}, {}
    for s in model.shards:
        h = read_header(s)
        headers[s] = h
        if h.metadata and hk.RP_ORIGINAL in h.metadata:
            raws[s] = h.metadata[hk.RP_ORIGINAL]
            records[s] = _parse_record(s, raws[s])
    return _State(model, cbytes, doc, headers, records, raws)


@contextlib.contextmanager
def _lock_all(model: HFModel) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for p in (model.config_path, *model.shards):
            stack.enter_context(fileio.locked(p))
        yield


# ---- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileAction:
    """What happened (or, on a dry run, would happen) to one file."""

    path: str
    action: str  # in-place | rewrite | replaced-symlink | replaced-hardlink | copied | unchanged | restored-symlink
    detail: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class HFPatchResult:
    """The outcome of :func:`patch_hf`."""

    path: str  # the model directory
    out: str | None  # the output directory, or None when patched in place
    config_path: str  # the config.json written (or that would be)
    shards: tuple[str, ...]  # the shard files written (or that would be)
    plan: Plan  # plan.original: the UNSCALED original model (L, b, d); plan.target: GGUF terms
    original: HFRope  # the original settings (from the recorded originals when re-patching)
    patched: HFRope  # the settings the new config.json states
    changes: tuple[ConfigChange, ...]  # config keys that differ from the CURRENT file
    files: tuple[FileAction, ...]
    changed: bool  # False: already patched exactly so, nothing written
    dry_run: bool
    messages: tuple[str, ...]  # notes for the user (symlinks replaced, dynamic caveats, ...)
    snippets: dict = field(hash=False, compare=False)  # plan_hf_snippets(plan)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "out": self.out,
            "config": self.config_path,
            "shards": list(self.shards),
            "method": self.plan.method,
            "ctx": self.plan.ctx,
            "alpha": self.plan.alpha,
            "original": self.original.to_dict(),
            "patched": self.patched.to_dict(),
            "changes": [c.to_dict() for c in self.changes],
            "files": [f.to_dict() for f in self.files],
            "changed": self.changed,
            "dry_run": self.dry_run,
            "messages": list(self.messages),
            "snippets": self.snippets,
        }


@dataclass(frozen=True)
class HFRevertResult:
    """The outcome of :func:`revert_hf`."""

    path: str
    config_path: str
    files: tuple[FileAction, ...]
    changed: bool
    dry_run: bool
    messages: tuple[str, ...]
    restored: HFRope  # the settings of the restored (original) config.json

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "config": self.config_path,
            "files": [f.to_dict() for f in self.files],
            "changed": self.changed,
            "dry_run": self.dry_run,
            "messages": list(self.messages),
            "restored": self.restored.to_dict(),
        }


@dataclass(frozen=True)
class ShardInfo:
    path: str
    size: int
    header_length: int
    n_tensors: int
    metadata: dict | None  # without the bulky ropepatch.original record and the filler
    patched: bool
    symlink: str | None  # link target when the file is a symlink
    nlink: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class HFInspectResult:
    """The outcome of :func:`inspect_hf`."""

    model: HFModel
    rope: HFRope  # the settings config.json states now
    params: RopeParams  # the same in GGUF terms (rope.to_params())
    shards: tuple[ShardInfo, ...]
    patched: bool
    record: dict | None  # {"method", "ctx", "alpha", "version"} from the first patched shard
    original: HFRope | None  # the settings before ropepatch (from the record)
    messages: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "rope": self.rope.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
            "patched": self.patched,
            "record": self.record,
            "original": self.original.to_dict() if self.original else None,
            "messages": list(self.messages),
        }


# ---- plans and snippets -------------------------------------------------------------------


def _plan_from_state(st: _State, ctx: int, method: str, alpha: float | None,
                     replace_scaling: bool) -> tuple[ConfigDoc, HFRope, Plan]:
    orig_doc = parse_config(st.original_config_text(), st.model.config_path)
    rope0 = read_rope(orig_doc)
    check_composable_hf(rope0, method, replace_scaling)
    plan = make_plan(unscaled_params(rope0), ctx, method, alpha)
    return orig_doc, rope0, plan


def plan_hf(path: str, ctx: int, method: str = DEFAULT_METHOD, alpha: float | None = None,
            replace_scaling: bool = False) -> Plan:
    """The plan :func:`patch_hf` would carry out (from the recorded originals), touching nothing."""
    st = _read_state(resolve_model(path))
    return _plan_from_state(st, ctx, method, alpha, replace_scaling)[2]


def plan_hf_snippets(plan: Plan) -> dict:
    """The HF spellings of ``plan`` (``plan.original`` = the unscaled model: L, b, d).

    Returns ``{"method", "ctx", "rope_theta", "max_position_embeddings", "rope_scaling"
    (v4 block or None), "transformers_v4" (keys to set in config.json), "transformers_v5"
    (the same with ``rope_parameters``), "vllm_hf_overrides" (JSON string for
    ``--hf-overrides``), "vllm_hf_overrides_v5", "vllm_args" (a command-line fragment),
    "notes"}``.
    """
    rb = rope_block(plan)
    v4 = {hk.ROPE_THETA: rb.rope_theta, hk.ROPE_SCALING: rb.scaling,
          hk.MAX_POSITION_EMBEDDINGS: rb.max_position_embeddings}
    params = {hk.RS_ROPE_TYPE: hk.RT_DEFAULT} if rb.scaling is None else dict(rb.scaling)
    params[hk.ROPE_THETA] = rb.rope_theta
    v5 = {hk.ROPE_PARAMETERS: params, hk.MAX_POSITION_EMBEDDINGS: rb.max_position_embeddings}
    overrides = json.dumps(v4, separators=(", ", ": "))
    notes = []
    if plan.method == "dynamic":
        notes.append(
            f"transformers rescales the base only for sequences longer than "
            f"max_position_embeddings ({rb.max_position_embeddings}) and does not re-rotate "
            f"cached keys; vLLM computes it once, statically, for "
            f"{int(rb.max_position_embeddings * plan.alpha)} tokens"
        )
    if plan.method == "yarn":
        notes.append("attention factor defaults to 0.1*ln(factor)+1 (not written)")
    return {
        "method": plan.method,
        "ctx": plan.ctx,
        "rope_theta": rb.rope_theta,
        "max_position_embeddings": rb.max_position_embeddings,
        "rope_scaling": rb.scaling,
        "transformers_v4": v4,
        "transformers_v5": v5,
        "vllm_hf_overrides": overrides,
        "vllm_hf_overrides_v5": json.dumps(v5, separators=(", ", ": ")),
        "vllm_args": f"--hf-overrides '{overrides}' --max-model-len {plan.ctx}",
        "notes": notes,
    }


# ---- patch --------------------------------------------------------------------------------


def _check_out(model: HFModel, out: str) -> str:
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UsageError(f"-o {out}: exists and is not a directory; give a new or empty directory")
        if os.path.samefile(out, model.root):
            raise UsageError(f"-o {out}: is the model directory itself; omit -o to patch in place")
        entries = os.listdir(out)
        # what a killed -o run into this directory leaves (its staging directory, and the files
        # it had moved in) is cleared by _write_out; anything else makes the directory not ours
        stale = set(_stale_stages(out))
        ours = {hk.CONFIG_NAME, *(os.path.basename(s) for s in model.shards), *_others(model)}
        if entries and (not stale or any(n not in stale and n not in ours for n in entries)):
            raise UsageError(f"-o {out}: directory is not empty; give a new or empty directory")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise WriteError(f"-o {out}: {parent} is read-only; choose another output directory")
    return out


def _others(model: HFModel) -> list[str]:
    """Top-level files copied verbatim to an out directory."""
    skip = {os.path.basename(p) for p in (model.config_path, *model.shards)}
    names = []
    for n in sorted(os.listdir(model.root)):
        p = os.path.join(model.root, n)
        if n in skip or n.startswith(".") or not os.path.isfile(p):
            continue
        if n.endswith(_OTHER_WEIGHTS):
            continue
        names.append(n)
    return names


def _record(hdr: SafetensorsHeader, config_text: str, link: str | None, config_link: str | None) -> str:
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


def _original_metadata(hdr: SafetensorsHeader, rec: dict | None) -> dict | None:
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
    out_dir = _check_out(model, out) if out is not None else None
    lock = contextlib.nullcontext() if (dry_run or out_dir) else _lock_all(model)
    with lock:
        st = _read_state(model)
        st.check_config_unchanged(force, "patching")
        orig_doc, rope0, plan = _plan_from_state(st, ctx, method, alpha, replace_scaling)
        new_data, _ = apply_plan(orig_doc, rope0, plan)
        new_text = dump_config(new_data, orig_doc.style)
        new_cfg = new_text.encode("utf-8")
        new_doc = parse_config(new_text, model.config_path)
        patched = read_rope(new_doc)
        changes = tuple(diff_configs(st.config_doc.data, new_data))

        messages: list[str] = []
        cfg_link = _link_target(model.config_path)
        rec_cfg_link = st.recorded_config_link() if st.patched else cfg_link
        if out_dir:
            rec_cfg_link = None

        # the config.json this run replaces, when ropepatch wrote it (RP_PREVIOUS_CONFIG_SHA256);
        # a re-run after a kill computes the same value, so it gives the uninterrupted result
        prev_sha = None
        if out_dir is None and st.patched and new_cfg != st.config_bytes:
            cur_sha = _sha(st.config_bytes)
            if cur_sha != _sha(orig_doc.text.encode("utf-8")):
                prev_sha = cur_sha

        # new headers
        new_headers: dict[str, bytes | None] = {}
        final_headers: dict[str, bytes] = {}  # written after config.json (prev_sha only)
        for s in model.shards:
            hdr = st.headers[s]
            rec = st.records.get(s)
            if rec is not None:
                raw_rec = st.raw_records[s]
                if out_dir and (rec.get("link") or rec.get("config_link")):
                    rec2 = dict(rec, link=None, config_link=None)
                    raw_rec = json.dumps(rec2, separators=(",", ":"), ensure_ascii=False)
            else:
                link = None if out_dir else _link_target(s)
                raw_rec = _record(hdr, orig_doc.text, link, rec_cfg_link)
            meta = _original_metadata(hdr, rec)
            meta = {hk.ST_FORMAT: hk.ST_FORMAT_PT} if meta is None else dict(meta)
            meta.update({
                hk.RP_VERSION: ropepatch_version(),
                hk.RP_METHOD: plan.method,
                hk.RP_CTX: str(plan.ctx),
                hk.RP_ALPHA: repr(float(plan.alpha)),
                hk.RP_CONFIG_SHA256: _sha(new_cfg),
            })
            new_json = with_metadata_text(hdr, layout_metadata({**meta, hk.RP_ORIGINAL: raw_rec}))
            if prev_sha is not None:
                meta[RP_PREVIOUS_CONFIG_SHA256] = prev_sha
                first_json = with_metadata_text(hdr, layout_metadata({**meta, hk.RP_ORIGINAL: raw_rec}))
                first = pad_header(first_json, hdr.header_length)
                # the extra entry must not turn an in-place write into a rewrite of the shard
                if len(first) == len(pad_header(new_json, hdr.header_length)):
                    final_headers[s] = pad_header(new_json, len(first))
                    new_json = first_json
            if out_dir is None and new_json == hdr.json_text:
                new_headers[s] = None
            else:
                new_headers[s] = pad_header(new_json, hdr.header_length)

        cfg_changed = out_dir is not None or new_cfg != st.config_bytes
        changed = cfg_changed or any(h is not None for h in new_headers.values())

        # the actions
        files: list[FileAction] = []
        dst = (lambda p: os.path.join(out_dir, os.path.basename(p))) if out_dir else (lambda p: p)
        for s in model.shards:
            h = new_headers[s]
            hdr = st.headers[s]
            if h is None:
                files.append(FileAction(s, "unchanged"))
            elif out_dir:
                files.append(FileAction(dst(s), "rewrite", f"from {s}"))
            elif os.path.islink(s):
                files.append(FileAction(s, "replaced-symlink", f"was a link to {os.readlink(s)}"))
            elif _nlink(s) > 1:
                files.append(FileAction(s, "replaced-hardlink", f"had {_nlink(s)} hard links"))
            else:
                files.append(FileAction(s, "in-place" if _in_place(hdr, h, False) else "rewrite"))
        cfg_dst = dst(model.config_path)
        if not cfg_changed:
            files.append(FileAction(cfg_dst, "unchanged"))
        elif out_dir:
            files.append(FileAction(cfg_dst, "rewrite", f"from {model.config_path}"))
        elif cfg_link is not None:
            files.append(FileAction(cfg_dst, "replaced-symlink", f"was a link to {cfg_link}"))
        elif _nlink(model.config_path) > 1:
            files.append(FileAction(cfg_dst, "replaced-hardlink", f"had {_nlink(model.config_path)} hard links"))
        else:
            files.append(FileAction(cfg_dst, "rewrite"))
        copies = _others(model) if out_dir else []
        for n in copies:
            files.append(FileAction(os.path.join(out_dir, n), "copied", f"from {os.path.join(model.root, n)}"))

        for fa in files:
            if fa.action == "replaced-symlink":
                messages.append(
                    f"{fa.path}: {fa.detail} (a shared blob, e.g. the Hugging Face cache); replaced "
                    f"the link with a patched regular file, the blob is untouched"
                )
            elif fa.action == "replaced-hardlink":
                messages.append(
                    f"{fa.path}: {fa.detail}; wrote a new file so the other links keep the original"
                )
        messages.extend(_method_notes(plan, rope0, patched))
        if not orig_doc.round_trips:
            messages.append(
                f"{model.config_path}: re-serialised with the file's indent; values outside the "
                f"rope keys may be spelled differently (e.g. 1e-5 -> 1e-05); revert restores the "
                f"exact bytes"
            )
        if not changed:
            messages.append("already patched with these settings; nothing written")

        result = HFPatchResult(
            path=model.root,
            out=out_dir,
            config_path=cfg_dst,
            shards=tuple(dst(s) for s in model.shards),
            plan=plan,
            original=rope0,
            patched=patched,
            changes=changes,
            files=tuple(files),
            changed=changed,
            dry_run=dry_run,
            messages=tuple(messages),
            snippets=plan_hf_snippets(plan),
        )
        if dry_run or not changed:
            return result
        if out_dir:
            _write_out(model, st, out_dir, new_headers, new_cfg, copies)
        else:
            _write_in_place(model, st, new_headers, new_cfg, cfg_changed, final_headers)
        return result


def _method_notes(plan: Plan, rope0: HFRope, patched: HFRope) -> list[str]:
    L, N = plan.original.n_ctx_train, plan.ctx
    if plan.method == "dynamic":
        return [
            f"dynamic: max_position_embeddings stays at the original {L}; transformers raises the "
            f"base only for sequences longer than that and does not re-rotate cached keys "
            f"(transformers #25104); vLLM applies it statically for {int(L * plan.alpha)} tokens"
        ]
    if plan.method == "ntk":
        return [f"ntk: rope_theta {rope0.rope_theta:g} -> {patched.rope_theta:.6g}, "
                f"max_position_embeddings {L} -> {N}"]
    if plan.method == "linear":
        return [f"linear: max_position_embeddings stays at {L}; runtimes scale positions by "
                f"1/{plan.alpha:g} (vLLM allows {int(L * plan.alpha)} tokens)"]
    return []


def _space_needed(paths_sizes: list[tuple[str, int, bool]]) -> int:
    """Bytes the rewrites need at once: linked files keep their old data, others free it."""
    linked = sum(sz for _, sz, keep in paths_sizes if keep)
    other = max((sz for _, sz, keep in paths_sizes if not keep), default=0)
    return linked + other


def _write_in_place(model: HFModel, st: _State, new_headers: dict[str, bytes | None],
                    new_cfg: bytes, cfg_changed: bool, final_headers: dict[str, bytes]) -> None:
    # checks before any write
    todo = [s for s in model.shards if new_headers[s] is not None]
    rewrites = []
    for s in todo:
        fileio.check_can_replace(s)
        hdr, h = st.headers[s], new_headers[s]
        linked = os.path.islink(s) or _nlink(s) > 1
        if not _in_place(hdr, h, linked):
            rewrites.append((s, 8 + len(h) + hdr.data_length, linked))
    if cfg_changed:
        fileio.check_can_replace(model.config_path)
    need = _space_needed(rewrites) + len(new_cfg)
    fileio.check_space(model.root, need, model.config_path if not rewrites else rewrites[0][0])

    done: list[tuple[str, SafetensorsHeader, str | None]] = []
    try:
        for s in todo:
            hdr, h = st.headers[s], new_headers[s]
            link = _link_target(s)
            linked = link is not None or _nlink(s) > 1
            write_header(hdr, h, in_place_ok=not linked)
            done.append((s, hdr, link))
        if cfg_changed:
            fileio.rewrite(model.config_path, model.config_path, new_cfg, 0, 0)
    except RopepatchError as e:
        restored = _rollback(done)
        raise type(e)(f"{e}; {restored}") from None
    # config.json is final: drop RP_PREVIOUS_CONFIG_SHA256 from the shards (same length, in place)
    try:
        for s, h in final_headers.items():
            write_header(read_header(s), h)
    except RopepatchError as e:
        raise type(e)(f"{e}; the model is patched, run the same command again to finish") from None


def _rollback(done: list[tuple[str, SafetensorsHeader, str | None]]) -> str:
    bad = []
    for s, old, link in reversed(done):
        try:
            if link is not None:
                _replace_with_symlink(s, link)
            else:
                cur = read_header(s)
                write_header(cur, old.header_bytes)
        except (RopepatchError, OSError):
            bad.append(s)
    if not done:
        return "nothing was written"
    if bad:
        return f"could not restore {', '.join(bad)}: run ropepatch revert on it"
    return f"the {len(done)} shard(s) already written were restored"


def _replace_with_symlink(path: str, target: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".ropepatch-{os.getpid()}-{os.path.basename(path)}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_STAGE_PREFIX, _STAGE_SUFFIX = ".ropepatch-", ".tmp"


def _stale_stages(d: str) -> list[str]:
    """Names of the ``-o`` staging directories in ``d`` that a killed run left behind. A live
    run holds an flock on its staging directory, which the kernel drops when the process dies."""
    found = []
    try:
        names = os.listdir(d)
    except OSError:
        return found
    for n in names:
        if not (n.startswith(_STAGE_PREFIX) and n.endswith(_STAGE_SUFFIX)):
            continue
        try:
            fd = os.open(os.path.join(d, n), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # not a directory (fileio's temp files are handled there), or gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found.append(n)
        except OSError:
            pass  # a live run's
        finally:
            os.close(fd)
    return found


def _write_out(model: HFModel, st: _State, out_dir: str, new_headers: dict[str, bytes | None],
               new_cfg: bytes, copies: list[str]) -> None:
    """Write the patched copy into ``out_dir``: every file goes into a locked staging directory
    inside it first, then the finished files are renamed into ``out_dir`` (config.json last) and
    the staging directory is removed. A re-run after a kill finds that staging directory without
    a live owner and clears what the killed run left before writing again."""
    sizes = sum(8 + len(new_headers[s]) + st.headers[s].data_length for s in model.shards)
    sizes += len(new_cfg) + sum(os.path.getsize(os.path.join(model.root, n)) for n in copies)
    parent = out_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    fileio.check_space(parent, sizes, out_dir)
    created = not os.path.exists(out_dir)
    names = [os.path.basename(s) for s in model.shards] + copies + [hk.CONFIG_NAME]
    try:
        os.makedirs(out_dir, exist_ok=True)
        stale = _stale_stages(out_dir)
        for n in stale:  # an interrupted -o run into this directory (checked by _check_out)
            shutil.rmtree(os.path.join(out_dir, n))
        if stale:
            for n in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(out_dir, n))
        while True:
            stage = os.path.join(out_dir, f"{_STAGE_PREFIX}{secrets.token_hex(4)}{_STAGE_SUFFIX}")
            try:
                os.mkdir(stage, 0o700)
                break
            except FileExistsError:
                continue
        stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(stage_fd, fcntl.LOCK_EX)  # held until the end: tells a re-run it is alive
        except OSError:
            os.close(stage_fd)
            os.rmdir(stage)
            raise
    except OSError as e:
        raise WriteError(f"-o {out_dir}: cannot create: {e.strerror or e}") from None
    moved: list[str] = []
    try:
        fileio.crash_point()
        for s in model.shards:
            write_header(st.headers[s], new_headers[s], dst=os.path.join(stage, os.path.basename(s)))
        for n in copies:
            src = os.path.join(model.root, n)
            fileio.rewrite(src, os.path.join(stage, n), b"", 0, os.path.getsize(src))
        fileio.rewrite(model.config_path, os.path.join(stage, hk.CONFIG_NAME), new_cfg, 0, 0)
        try:
            for n in names:  # config.json last: until then out_dir holds no loadable model
                os.rename(os.path.join(stage, n), os.path.join(out_dir, n))
                moved.append(n)
                fileio.crash_point()
            fileio.fsync_dir(out_dir)
            os.rmdir(stage)
            fileio.crash_point()
            fileio.fsync_dir(out_dir)
        except OSError as e:
            raise WriteError(f"-o {out_dir}: cannot move the written files into place: {e.strerror or e}") from None
    except RopepatchError as e:
        shutil.rmtree(stage, ignore_errors=True)
        for n in moved:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out_dir, n))
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise type(e)(f"{e}; removed the partial output in {out_dir}") from None
    finally:
        os.close(stage_fd)


# ---- revert -------------------------------------------------------------------------------


def _original_header(hdr: SafetensorsHeader, rec: dict) -> bytes:
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


def _blob_matches(link_path: str, target: str, prefix: bytes, size: int) -> bool:
    p = os.path.join(os.path.dirname(os.path.abspath(link_path)), target)
    try:
        if not os.path.isfile(p) or os.path.getsize(p) != size:
            return False
        with open(p, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def revert_hf(path: str, dry_run: bool = False, force: bool = False) -> HFRevertResult:
    """Restore config.json and every shard of a ropepatch-patched model byte-identically.

    config.json is restored first and the shards after it (their records stay until then), so an
    interrupted revert can be re-run. Symlinks that patch replaced are put back when their
    target still holds the original bytes; otherwise the original bytes go into a regular file.
    NotPatchedError when no shard carries a ropepatch record.
    """
    model = resolve_model(path)
    lock = contextlib.nullcontext() if dry_run else _lock_all(model)
    with lock:
        st = _read_state(model)
        if not st.patched:
            raise NotPatchedError(
                f"{model.root}: no shard carries a {hk.RP_ORIGINAL} record; nothing to revert "
                f"(not patched by ropepatch)"
            )
        st.check_config_unchanged(force, "reverting")
        orig_text = st.original_config_text()
        orig_cfg = orig_text.encode("utf-8")
        restored = read_rope(parse_config(orig_text, model.config_path))
        files: list[FileAction] = []
        messages: list[str] = []
        ops: list[tuple[str, Any]] = []

        cfg_link = st.recorded_config_link()
        cur_cfg_link = _link_target(model.config_path)
        if cfg_link and cur_cfg_link != cfg_link and _blob_matches(
            model.config_path, cfg_link, orig_cfg, len(orig_cfg)
        ):
            files.append(FileAction(model.config_path, "restored-symlink", f"-> {cfg_link}"))
            ops.append(("link", (model.config_path, cfg_link)))
        elif st.config_bytes != orig_cfg:
            files.append(FileAction(model.config_path, "rewrite"))
            ops.append(("config", None))
            if cfg_link and cur_cfg_link != cfg_link:
                messages.append(f"{model.config_path}: its former link target {cfg_link} no longer "
                                f"holds the original; restored the bytes as a regular file")
        else:
            files.append(FileAction(model.config_path, "unchanged"))

        for s in model.shards:
            hdr, rec = st.headers[s], st.records.get(s)
            if rec is None:
                files.append(FileAction(s, "unchanged", "not patched"))
                continue
            h0 = _original_header(hdr, rec)
            link = rec.get("link")
            prefix = len(h0).to_bytes(8, "little") + h0
            if link and _link_target(s) != link and _blob_matches(s, link, prefix, 8 + len(h0) + hdr.data_length):
                files.append(FileAction(s, "restored-symlink", f"-> {link}"))
                ops.append(("link", (s, link)))
                continue
            if link:
                messages.append(f"{s}: its former link target {link} no longer holds the original; "
                                f"restored the bytes as a regular file")
            linked = os.path.islink(s) or _nlink(s) > 1
            act = "in-place" if _in_place(hdr, h0, linked) else "rewrite"
            files.append(FileAction(s, act))
            ops.append(("shard", (s, hdr, h0, not linked)))

        result = HFRevertResult(model.root, model.config_path, tuple(files), bool(ops), dry_run,
                                tuple(messages), restored)
        if dry_run:
            return result
        for s, hdr, h0, ok in (a for k, a in ops if k == "shard"):
            fileio.check_can_replace(s)
        for kind, arg in ops:  # config (first), then shards
            if kind == "config":
                fileio.rewrite(model.config_path, model.config_path, orig_cfg, 0, 0)
            elif kind == "link":
                try:
                    _replace_with_symlink(*arg)
                except OSError as e:
                    raise WriteError(f"{arg[0]}: cannot restore the symlink: {e.strerror or e}") from None
            else:
                s, hdr, h0, ok = arg
                write_header(hdr, h0, in_place_ok=ok)
        return result


# ---- inspect ------------------------------------------------------------------------------


def inspect_hf(path: str) -> HFInspectResult:
    """The rope settings, shards and ropepatch provenance of the HF model at ``path``."""
    model = resolve_model(path)
    st = _read_state(model)
    rope = read_rope(st.config_doc)
    shards = []
    for s in model.shards:
        h = st.headers[s]
        meta = None if h.metadata is None else {k: v for k, v in h.metadata.items()
                                                if k not in (hk.RP_ORIGINAL, hk.RP_RESERVED)}
        shards.append(ShardInfo(s, h.file_size, h.header_length, len(h.tensors), meta,
                                s in st.records, _link_target(s), _nlink(s)))
    record = original = None
    messages: list[str] = []
    if st.patched:
        first = next(s for s in model.shards if s in st.records)
        m = st.headers[first].metadata or {}
        record = {
            "method": m.get(hk.RP_METHOD),
            "ctx": int(m[hk.RP_CTX]) if str(m.get(hk.RP_CTX, "")).isdigit() else m.get(hk.RP_CTX),
            "alpha": _float_or(m.get(hk.RP_ALPHA)),
            "version": m.get(hk.RP_VERSION),
        }
        original = read_rope(parse_config(st.original_config_text(), model.config_path))
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


def _float_or(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
