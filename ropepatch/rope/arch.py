"""Per-architecture tables: the RoPE layout llama.cpp uses for each architecture."""

from __future__ import annotations

from ropepatch.rope.params import RopeLayout

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
