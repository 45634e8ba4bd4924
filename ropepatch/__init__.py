"""ropepatch: extend a model's context by patching its RoPE settings, safely and reversibly.

Public API (everything else is private):

    inspect_gguf(path) -> ModelInfo
    make_plan(original: RopeParams, ctx, method="ntk", alpha=None) -> Plan
    patch_gguf(path, ctx, method="ntk", alpha=None, out=None, dry_run=False, record=True) -> PatchResult
    revert_gguf(path, out=None) -> RevertResult
    METHODS, RopeParams, RopepatchError

The package is layered; imports go one way only (checked by import-linter in CI):

    cli -> quality -> check -> patch | runtime -> formats | safeio -> rope -> errors | version

The names above are loaded on first use, so importing ``ropepatch`` (or any of its
subpackages, e.g. the runtime worker, which must import llama_cpp first) loads nothing else.
"""

from ropepatch.version import __version__

_PUBLIC = {
    "METHODS": "ropepatch.rope.methods",
    "make_plan": "ropepatch.rope.methods",
    "RopeParams": "ropepatch.rope.params",
    "RopepatchError": "ropepatch.errors",
    "inspect_gguf": "ropepatch.patch.gguf",
    "patch_gguf": "ropepatch.patch.gguf",
    "revert_gguf": "ropepatch.patch.gguf",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    """Load a public name from its layer on first use (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ropepatch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
