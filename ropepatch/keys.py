"""Every metadata key and enum ropepatch reads or writes, spelled exactly as on disk.

GGUF keys are templates over the architecture name (``"{arch}.rope.freq_base"``);
call :func:`k` to fill one in. Enum values are the on-disk values.
"""

from __future__ import annotations

from enum import Enum, IntEnum


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


class ScalingType(str, Enum):
    """Values of ``{arch}.rope.scaling.type`` that llama.cpp accepts (any other aborts the load)."""

    NONE = "none"
    LINEAR = "linear"
    YARN = "yarn"
    LONGROPE = "longrope"


class RopeLayout(str, Enum):
    """How rotary pairs are formed: NORM pairs (2i, 2i+1); NEOX pairs (i, i + d/2)."""

    NORM = "norm"
    NEOX = "neox"
    MROPE = "mrope"  # multi-section (vision-language), NEOX pairing
    UNKNOWN = "unknown"


# llama_rope_scaling_type in llama.h (the value llama-cpp-python's rope_scaling_type takes)
LLAMA_ROPE_SCALING_TYPE = {"none": 0, "linear": 1, "yarn": 2, "longrope": 3}

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

# The on-disk type llama.cpp requires for each key ropepatch writes (a wrong type fails the load).
KEY_TYPES = {
    CONTEXT_LENGTH: ValueType.UINT32,
    ROPE_DIMENSION_COUNT: ValueType.UINT32,
    ROPE_FREQ_BASE: ValueType.FLOAT32,
    ROPE_SCALING_TYPE: ValueType.STRING,
    ROPE_SCALING_FACTOR: ValueType.FLOAT32,
    ROPE_SCALING_ORIG_CTX: ValueType.UINT32,
    ROPE_SCALING_ATTN_FACTOR: ValueType.FLOAT32,
}

# Every architecture key a patch may change or add; their original state is recorded on the
# first patch so revert can restore it exactly, whichever methods later re-patches use.
TOUCHED_KEYS = (
    CONTEXT_LENGTH,
    ROPE_FREQ_BASE,
    ROPE_SCALING_TYPE,
    ROPE_SCALING_FACTOR,
    ROPE_SCALING_ORIG_CTX,
)

# ---- ropepatch provenance keys (llama.cpp loads and ignores unknown keys) -----------------
RP_VERSION = "ropepatch.version"  # STRING: ropepatch version that wrote the file
RP_METHOD = "ropepatch.method"  # STRING: method name from the registry
RP_CTX = "ropepatch.ctx"  # UINT32: target context
RP_ALPHA = "ropepatch.alpha"  # FLOAT64: the alpha / factor used
RP_ORIGINAL = "ropepatch.original"  # STRING: JSON undo record (see gguf_patch)
RP_RESERVED = "ropepatch.reserved"  # ARRAY[UINT8] of zeros: header slack for in-place re-patches
RP_PREFIX = "ropepatch."


def k(template: str, arch: str) -> str:
    """Fill an architecture key template: ``k(ROPE_FREQ_BASE, "llama") == "llama.rope.freq_base"``."""
    return template.format(arch=arch)


# ---- architectures ------------------------------------------------------------------------
# From llama_model_rope_type() in the llama.cpp bundled with llama-cpp-python 0.3.36.
# (glm4 and bailingmoe3 are NORM, glm4moe and hunyuan_vl NEOX, unless the file enables M-RoPE.)
NORM_ARCHS = frozenset(
    """arcee arctic baichuan bailingmoe bailingmoe3 chameleon chatglm cohere2 cohere2moe command-r
    deci deepseek deepseek2 deepseek2-ocr deepseek32 deepseek4 dots3note eagle3 ernie4_5
    ernie4_5-moe glm-dsa glm4 granite granite_swa granitehybrid granitemoe graniteswitch hy_v4
    internlm2 llada llama llama-embed llama4 maincoder minicpm mistral3 mistral4 muse-glimmer
    nanbeige neo-bert olmo plm pockettts smollm3 starcoder xverse""".split()
)
NEOX_ARCHS = frozenset(
    """afmoe apertus bailingmoe2 bert bitnet codeshell cogvlm dbrx dots1 dream eurobert exaone
    exaone-moe exaone4 falcon falcon-h1 gemma gemma-embedding gemma2 gemma3 gemma3n gemma4
    gemma4-assistant glm4moe gpt-oss gptneox grok grovemoe hrm_text hunyuan-dense hunyuan-moe
    hunyuan_vl hy_v3 jais2 jina-bert-v3 laguna lfm2 lfm2moe llada-moe maple mellum mimo2 minicpm3
    minimax-01 minimax-m2 minimax-m3 modern-bert nemotron nomic-bert nomic-bert-moe olmo2 olmoe
    openelm orion pangu-embedded phi2 phi3 phimoe plamo plamo2 plamo3 qwen qwen2 qwen2moe qwen3
    qwen3moe qwen3next rnd1 seed_oss smallthinker spark2_5 stablelm starcoder2 step35
    talkie""".split()
)
# Multi-section rotary (vision-language): NEOX pairing with per-section positions.
MROPE_ARCHS = frozenset(
    "dflash paddleocr qwen2vl qwen35 qwen35moe qwen3tts qwen3vl qwen3vlmoe qwen4exp".split()
)
# Architectures that do not use rotary embeddings at all.
NO_ROPE_ARCHS = frozenset(
    """arwkv7 bloom clip glm5-next gpt2 gptj jais jamba jina-bert-v2 kimi-k3 kimi-linear mamba
    mamba2 mpt nemotron_h nemotron_h_moe refact rwkv6 rwkv6qwen2 rwkv7 t5 t5encoder
    wavtokenizer-dec""".split()
)


def rope_layout(arch: str) -> RopeLayout:
    """The rotary pairing llama.cpp uses for ``arch`` (UNKNOWN for architectures not listed)."""
    if arch in NORM_ARCHS:
        return RopeLayout.NORM
    if arch in NEOX_ARCHS:
        return RopeLayout.NEOX
    if arch in MROPE_ARCHS:
        return RopeLayout.MROPE
    return RopeLayout.UNKNOWN
