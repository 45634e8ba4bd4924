"""Every Hugging Face name ropepatch reads or writes, spelled exactly as on disk.

Three groups:

* ``config.json`` keys (transformers v4 ``rope_scaling`` and v5 ``rope_parameters`` spellings),
* ``rope_type`` values, and which of them ropepatch may stack a method on,
* safetensors ``__metadata__`` keys ropepatch writes (``ropepatch.*``; every value is a string,
  as the safetensors format requires), plus the safetensors format limits.
"""

from __future__ import annotations

from ropepatch.formats.provenance import (  # noqa: F401 - re-exported: the keys both formats share
    RP_ALPHA,
    RP_CTX,
    RP_METHOD,
    RP_ORIGINAL,
    RP_PREFIX,
    RP_RESERVED,
    RP_VERSION,
)
from ropepatch.rope.methods import METHODS

# ---- files in a model directory -----------------------------------------------------------
CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_WEIGHT_MAP = "weight_map"  # index.json: {"weight_map": {tensor name: shard file name}}
# the most bytes ropepatch reads of a config.json / an index (real ones are kilobytes)
CONFIG_MAX_BYTES = 16 * 2**20
INDEX_MAX_BYTES = 64 * 2**20

# ---- config.json keys ---------------------------------------------------------------------
MODEL_TYPE = "model_type"
TEXT_CONFIG = "text_config"  # multimodal configs keep the language model's settings here
ROPE_THETA = "rope_theta"
MAX_POSITION_EMBEDDINGS = "max_position_embeddings"
HEAD_DIM = "head_dim"
HIDDEN_SIZE = "hidden_size"
NUM_ATTENTION_HEADS = "num_attention_heads"
PARTIAL_ROTARY_FACTOR = "partial_rotary_factor"
ROPE_SCALING = "rope_scaling"  # transformers v4 block
ROPE_PARAMETERS = "rope_parameters"  # transformers v5 block (carries rope_theta inside)
# GPT-NeoX-style legacy spellings (transformers maps them onto rope_theta / partial_rotary_factor)
ROTARY_EMB_BASE = "rotary_emb_base"
ROTARY_PCT = "rotary_pct"

# keys inside the rope block
RS_ROPE_TYPE = "rope_type"
RS_TYPE_LEGACY = "type"  # transformers < 4.43 spelling of rope_type
RS_FACTOR = "factor"
RS_ORIG_MAX_POS = "original_max_position_embeddings"
RS_ATTENTION_FACTOR = "attention_factor"
RS_BETA_FAST = "beta_fast"
RS_BETA_SLOW = "beta_slow"
RS_MSCALE = "mscale"
RS_MSCALE_ALL_DIM = "mscale_all_dim"
RS_TRUNCATE = "truncate"
RS_LOW_FREQ_FACTOR = "low_freq_factor"
RS_HIGH_FREQ_FACTOR = "high_freq_factor"
RS_SHORT_FACTOR = "short_factor"
RS_LONG_FACTOR = "long_factor"
RS_MROPE_SECTION = "mrope_section"

# Keys that describe a scaling: dropped from the rope block when a method writes a new one.
# Every other key in the block (rope_theta, partial_rotary_factor, ...) is kept.
SCALING_BLOCK_KEYS = frozenset(
    {
        RS_ROPE_TYPE,
        RS_TYPE_LEGACY,
        RS_FACTOR,
        RS_ORIG_MAX_POS,
        RS_ATTENTION_FACTOR,
        RS_BETA_FAST,
        RS_BETA_SLOW,
        RS_MSCALE,
        RS_MSCALE_ALL_DIM,
        RS_TRUNCATE,
        RS_LOW_FREQ_FACTOR,
        RS_HIGH_FREQ_FACTOR,
        RS_SHORT_FACTOR,
        RS_LONG_FACTOR,
    }
)

# ---- rope_type values ---------------------------------------------------------------------
RT_DEFAULT = "default"
RT_LINEAR = "linear"
RT_DYNAMIC = "dynamic"
RT_YARN = "yarn"
RT_LLAMA3 = "llama3"
RT_LONGROPE = "longrope"
RT_SU = "su"  # old Phi-3 name of longrope
RT_MROPE = "mrope"  # Qwen2-VL multimodal rotary (v4 spelling; later "default" + mrope_section)

# Scalings a ropepatch method may replace when the user asks (replace_scaling=True). Others
# (mrope, proportional, axial, 2d, unknown) are refused outright: dropping them breaks the model.
REPLACEABLE_ROPE_TYPES = frozenset({RT_LINEAR, RT_DYNAMIC, RT_YARN, RT_LLAMA3, RT_LONGROPE, RT_SU})

# The rope_type each ropepatch method writes into an HF config, and the method a written
# rope_type stands for: registry data (Method.hf.rope_type; None there means "default").
METHOD_ROPE_TYPE = {name: m.hf.rope_type or RT_DEFAULT for name, m in METHODS.items()}
ROPE_TYPE_METHOD = {m.hf.rope_type: name for name, m in METHODS.items() if m.hf.rope_type}

# Model types whose transformers config class accepts only some rope types (it raises on the
# others, or silently turns "yarn" into "longrope"): from transformers 5.23 configuration_*.py.
MODEL_ROPE_TYPES = {
    "phi3": frozenset({RT_DEFAULT, RT_LONGROPE}),
    "phi4_multimodal": frozenset({RT_DEFAULT, RT_LONGROPE}),
}

# partial_rotary_factor that transformers assumes when config.json omits it (default 1.0).
MODEL_PARTIAL_ROTARY_DEFAULT = {
    "phi": 0.5,
    "persimmon": 0.5,
    "stablelm": 0.25,
    "gpt_neox": 0.25,
    "glm": 0.5,
    "glm4": 0.5,
    "glm4_moe": 0.5,
    "nemotron": 0.5,
    "recurrent_gemma": 0.5,
    "qwen3_next": 0.25,
    "qwen3_5": 0.25,
    "qwen3_5_moe": 0.25,
}

# ---- safetensors ----------------------------------------------------------------------------
ST_METADATA = "__metadata__"
ST_FORMAT = "format"
ST_FORMAT_PT = "pt"  # transformers refuses files whose format is not pt/tf/flax/mlx
ST_MAX_HEADER = 100_000_000  # safetensors' MAX_HEADER_SIZE
# Spare bytes (spaces) ropepatch leaves after the header JSON when it has to rewrite a file, so
# that every later re-patch or revert of the metadata fits in place.
ST_HEADER_SLACK = 1024

# ---- ropepatch provenance in every shard's __metadata__ (values are strings) ---------------
# RP_PREFIX, RP_VERSION, RP_METHOD, RP_CTX (decimal), RP_ALPHA (repr() of the float),
# RP_ORIGINAL and RP_RESERVED: imported above from formats/provenance.py.
RP_CONFIG_SHA256 = "ropepatch.config_sha256"  # sha256 of the config.json bytes ropepatch wrote
# JSON undo record for THIS shard's header plus the original config.json text:
#   {"v": 1, "header_length": N0, "pad": "<bytes after the JSON>", "metadata": "<exact original
#    __metadata__ value text>" | null, "config": "<original config.json text>",
#    "config_link": "<symlink target>" | null, "link": "<symlink target of this shard>" | null,
#    "header_sha256": "<sha256 of the original 8 + N0 bytes>", "config_sha256": "<sha256 of the
#    original config.json>"}
# is the value of RP_ORIGINAL (records written before the two hashes existed lack them).
# sha256 of the config.json a re-patch replaces (one ropepatch wrote). Present in the shards
# only while that re-patch runs (ropepatch.patch.hf docstring): the shards are written before
# config.json, so a re-patch killed in between leaves shards that name the new config next to
# the old config.json, and this key lets the re-run (or a revert) accept that config.json.
RP_PREVIOUS_CONFIG_SHA256 = "ropepatch.previous_config_sha256"
# RP_RESERVED holds filler (a string of spaces) between the entries a re-patch changes and
# RP_ORIGINAL, sized so the __metadata__ value text has the same length for every
# method/ctx/alpha: a re-patch then changes one short run of bytes near the start of the
# metadata, written in place when it lies inside one 4 KiB page (see
# ropepatch.patch.hf_record.layout_metadata).
# Bytes of __metadata__ text reserved for the values a re-patch changes (version, method, ctx,
# alpha, config_sha256 and the transient previous_config_sha256 entry, about 230 bytes at most);
# the rest of it is the RP_RESERVED filler.
RP_VALUE_BUDGET = 256
RP_RECORD_VERSION = 1
