"""The tiny fixture models' shape, vocabulary and weight scales (tools/make_fixtures.py writes
the files; tests read these to know what to expect)."""

from __future__ import annotations

import numpy as np
from gguf import TokenType

SEED = 1234

# Hyperparameters (shared by every fixture).
N_CTX_TRAIN = 128
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
HEAD_DIM = N_EMBD // N_HEAD  # 16
N_ROT = HEAD_DIM  # rope.dimension_count
ROPE_THETA = 10000.0
RMS_EPS = 1e-5

SPACE_PIECE = "\u2581"  # SentencePiece whitespace marker

# Llama-3-style per-pair frequency factors of tiny-exaone (HF rope_type "llama3", as
# convert_hf_to_gguf.py turns it into rope_freqs.weight), for the training context N_CTX_TRAIN.
LLAMA3_FACTOR = 4.0
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0

# tiny-llama-longrope: LongRoPE keys and tensors on the tiny-llama model, Phi-3-128k style: trained
# (context_length) at N_CTX_TRAIN with long factors from an original context LONGROPE_ORIG_CTX,
# attention factor sqrt(1 + ln(s) / ln(orig)) for s = N_CTX_TRAIN / LONGROPE_ORIG_CTX.
LONGROPE_ORIG_CTX = 32
LONGROPE_TOP = 4.0  # the long factors run 1 .. 4
LONGROPE_SHORT_TOP = 1.25  # the short ones 1 .. 1.25
LONGROPE_ATTN_FACTOR = float(np.float32(np.sqrt(
    1 + np.log(N_CTX_TRAIN / LONGROPE_ORIG_CTX) / np.log(LONGROPE_ORIG_CTX))))


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TokenType.BYTE)
    tokens.append(SPACE_PIECE)
    types.append(TokenType.NORMAL)
    scores = [0.0] * len(tokens)
    scores[-1] = -1.0
    return tokens, scores, [int(t) for t in types]


TOKENS, SCORES, TOKEN_TYPES = build_vocab()
N_VOCAB = len(TOKENS)  # 260
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Standard deviations of the random weights. Chosen so that the models are
# numerically meaningful: after RMSNorm the activations have unit RMS, so a
# q/k std of 0.2 gives per-element q, k of std ~1.6 and a scaled per-head
# q.k/sqrt(16) of std ~2.5 -> attention visibly depends on (relative) position.
STD_EMBED = 1.0
STD_QK = 0.2
STD_V = 0.125
STD_O = 0.125
STD_BIAS = 0.2
STD_FF_IN = 0.125
STD_FF_DOWN = 1.0 / np.sqrt(N_FF)
STD_NORM = 0.1  # norm weights = 1 + STD_NORM * N(0, 1)
STD_LM_HEAD = 0.5
