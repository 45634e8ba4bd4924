"""Every GGUF metadata key ropepatch reads or writes, spelled exactly as on disk, and the
GGUF value types.

GGUF keys are templates over the architecture name (``"{arch}.rope.freq_base"``);
call :func:`k` to fill one in. Enum values are the on-disk values.
"""

from __future__ import annotations

from enum import IntEnum

# re-exported: the provenance keys both formats share
from ropepatch.formats.provenance import (  # noqa: F401
    RP_ALPHA,
    RP_CTX,
    RP_METHOD,
    RP_OPTIONS,
    RP_ORIGINAL,
    RP_PREFIX,
    RP_RESERVED,
    RP_VERSION,
)


class ValueType(IntEnum):
    """GGUF metadata value types (``gguf_type`` in ggml)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# ---- general keys -------------------------------------------------------------------------
GENERAL_ARCHITECTURE = "general.architecture"
GENERAL_ALIGNMENT = "general.alignment"
GENERAL_NAME = "general.name"

# ---- per-architecture keys (templates) ----------------------------------------------------
CONTEXT_LENGTH = "{arch}.context_length"
EMBEDDING_LENGTH = "{arch}.embedding_length"
BLOCK_COUNT = "{arch}.block_count"
HEAD_COUNT = "{arch}.attention.head_count"
HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
KEY_LENGTH = "{arch}.attention.key_length"
ROPE_DIMENSION_COUNT = "{arch}.rope.dimension_count"
ROPE_FREQ_BASE = "{arch}.rope.freq_base"
ROPE_SCALE_LINEAR = "{arch}.rope.scale_linear"  # legacy; read only when scaling.factor is absent
ROPE_SCALING_TYPE = "{arch}.rope.scaling.type"
ROPE_SCALING_FACTOR = "{arch}.rope.scaling.factor"
ROPE_SCALING_ORIG_CTX = "{arch}.rope.scaling.original_context_length"
ROPE_SCALING_ATTN_FACTOR = "{arch}.rope.scaling.attn_factor"
ROPE_SCALING_FINETUNED = "{arch}.rope.scaling.finetuned"

# Every architecture key a patch may change or add; their original state is recorded on the
# first patch so revert can restore it exactly, whichever methods later re-patches use.
TOUCHED_KEYS = (
    CONTEXT_LENGTH,
    ROPE_FREQ_BASE,
    ROPE_SCALING_TYPE,
    ROPE_SCALING_FACTOR,
    ROPE_SCALING_ORIG_CTX,
)
# Touched only by a plan that changes it (factors --attn-factor): recorded, and given a slot, from the
# first patch that does (so the bytes of every other patch stay as they were); revert restores it.
LAZY_TOUCHED_KEYS = (ROPE_SCALING_ATTN_FACTOR,)

# ---- ropepatch provenance keys (llama.cpp loads and ignores unknown keys) -----------------
# RP_VERSION (STRING), RP_METHOD (STRING), RP_CTX (UINT32), RP_ALPHA (FLOAT64), RP_ORIGINAL
# (STRING: JSON undo record), RP_RESERVED (ARRAY[UINT8] of zeros: header slack), RP_PREFIX:
# imported above from formats/provenance.py.
# Placeholder slot of a touched key the file lacks (+ a TOUCHED_KEYS template minus "{arch}."):
# keeps the entry count fixed across re-patches (patch/gguf_layout.py).
RP_UNSET = "ropepatch.unset."


def k(template: str, arch: str) -> str:
    """Fill an architecture key template: ``k(ROPE_FREQ_BASE, "llama") == "llama.rope.freq_base"``."""
    return template.format(arch=arch)
