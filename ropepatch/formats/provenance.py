"""The ``ropepatch.*`` provenance keys, spelled once for both formats.

A patched GGUF file carries them as metadata entries (typed values); a patched safetensors
shard carries them in its ``__metadata__`` (every value a string, as that format requires).
Runtimes load and ignore unknown keys. Format-specific keys and the undo record layouts are
described in :mod:`ropepatch.formats.gguf.keys` and :mod:`ropepatch.formats.hf.keys`.
"""

from __future__ import annotations

RP_PREFIX = "ropepatch."  # every key ropepatch writes starts with this
RP_VERSION = "ropepatch.version"  # ropepatch version that wrote the file (GGUF: STRING)
RP_METHOD = "ropepatch.method"  # method name from the registry (GGUF: STRING)
RP_CTX = "ropepatch.ctx"  # target context (GGUF: UINT32; HF: decimal)
RP_ALPHA = "ropepatch.alpha"  # alpha / factor used (GGUF: FLOAT64; HF: repr() of the float)
RP_OPTIONS = "ropepatch.options"  # the method's options besides alpha, JSON object (GGUF: STRING; only when
# the method has options, e.g. ntk-parts' beta_fast/beta_slow, factors' points)
RP_ORIGINAL = "ropepatch.original"  # JSON undo record (format-specific layout)
# Filler that keeps header slack for in-place re-patches (GGUF: ARRAY[UINT8] of zeros; HF: a
# string of spaces)
RP_RESERVED = "ropepatch.reserved"
