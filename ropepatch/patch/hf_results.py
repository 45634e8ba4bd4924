"""The results :func:`~ropepatch.patch.hf.patch_hf`, :func:`~ropepatch.patch.hf.revert_hf` and
:func:`~ropepatch.patch.hf.inspect_hf` return (each with ``to_dict()`` for ``--json``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ropepatch.formats.hf.apply import ConfigChange
from ropepatch.formats.hf.config import HFRope
from ropepatch.patch.hf_model import HFModel
from ropepatch.rope.methods import Plan
from ropepatch.rope.params import RopeParams


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
    """One shard as :func:`~ropepatch.patch.hf.inspect_hf` reports it."""

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
