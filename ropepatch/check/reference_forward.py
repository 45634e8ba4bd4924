"""A NumPy reference forward pass for llama, qwen2 and phi3 GGUF models (small models only).

In the style of llama2.c's model.py: the whole transformer as a few plain functions, a
comment per step, float64 throughout. Weights are read with ``gguf.GGUFReader`` and
dequantized with ``gguf.quants.dequantize``; the rotary embedding is
:func:`ropepatch.check.rope_reference.apply_rope` driven by the same op parameters llama.cpp
would use (:func:`ropepatch.check.ggml_args.ggml_rope_args`, optionally with runtime
overrides), so its logits can be compared with a runtime probe's -- including at
positions and distances beyond the training context.

Scope: dense llama / qwen2 / exaone / phi3 blocks (RMSNorm, attention with GQA and optional q/k/v
biases, SwiGLU MLP, output norm and head; tied embeddings when ``output.weight`` is absent; phi3's
fused attn_qkv and ffn_up are split into the separate tensors at load).
One sequence, decoded from an empty cache: a causal mask over the given positions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ropepatch.check.ggml_args import ggml_rope_args
from ropepatch.check.rope_reference import apply_rope_op
from ropepatch.errors import FormatError, UnsupportedModelError, UsageError
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import read_header
from ropepatch.formats.gguf.keys import k
from ropepatch.formats.gguf.params import params_from_kvs
from ropepatch.formats.gguf.tensors import header_factors_tensor
from ropepatch.rope.params import RopeLayout, RopeParams

# exaone: the qwen2 block (NEOX rope, optional q/k/v biases) that loads rope_freqs like llama;
# phi3: the qwen2 block without biases, q/k/v and gate/up fused (Phi-3-128k: LongRoPE factors)
SUPPORTED_ARCHS = ("llama", "qwen2", "exaone", "phi3")


@dataclass(frozen=True)
class ReferenceModel:
    """Hyperparameters, RoPE settings and float64 weights of a GGUF model (numpy layout:
    a GGUF matrix with ne = [n_in, n_out] is an array of shape (n_out, n_in))."""

    path: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope: RopeParams
    weights: Mapping[str, np.ndarray] = field(repr=False)
    weight_types: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> "F32", "Q8_0", ...
    freq_factors: np.ndarray | None = field(default=None, repr=False)  # rope_freqs.weight, if any

    @property
    def n_vocab(self) -> int:
        return int(self.weights["token_embd.weight"].shape[0])

    def w(self, name: str) -> np.ndarray | None:
        return self.weights.get(name)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _tensor_f64(t) -> np.ndarray:
    """One ReaderTensor as float64 in numpy layout (rows = ne1, cols = ne0)."""
    from gguf import GGMLQuantizationType  # noqa: PLC0415
    from gguf.quants import dequantize  # noqa: PLC0415

    shape = tuple(int(v) for v in reversed(list(t.shape)))  # ne reversed
    qtype = GGMLQuantizationType(int(t.tensor_type))
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.F64):
        arr = np.asarray(t.data)
    else:
        arr = dequantize(np.asarray(t.data), qtype)
    return np.asarray(arr, dtype=np.float64).reshape(shape)


def _reader(p: Path):
    """A ``gguf.GGUFReader`` over the file (FormatError when it is not a GGUF)."""
    try:
        import gguf  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise UnsupportedModelError(f"gguf-py is required for the reference forward: {exc}") from None
    try:
        return gguf.GGUFReader(str(p))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{p}: not a readable GGUF file ({exc})") from None


def load_model(path: str | os.PathLike) -> ReferenceModel:
    """Read a llama / qwen2 GGUF: hyperparameters, RoPE settings (as ropepatch reads them:
    :func:`params_from_kvs`) and all weights as float64."""
    from gguf import GGMLQuantizationType  # noqa: PLC0415

    p = Path(path)
    reader = _reader(p)
    arch = _field(reader, K.GENERAL_ARCHITECTURE)
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(f"{p}: reference forward supports {', '.join(SUPPORTED_ARCHS)}, not {arch!r}")

    def need(template):
        v = _field(reader, k(template, arch))
        if v is None:
            raise FormatError(f"{p}: missing key {k(template, arch)}")
        return v

    header = read_header(str(p))
    rope = params_from_kvs({kv.key: kv for kv in header.kvs}, [t.name for t in header.tensors], str(p))
    n_head = int(need(K.HEAD_COUNT))
    weights = {t.name: _tensor_f64(t) for t in reader.tensors}
    types = {t.name: GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors}
    n_head_kv = int(_field(reader, k(K.HEAD_COUNT_KV, arch), n_head))
    _split_fused(weights, types, n_head * rope.head_dim, n_head_kv * rope.head_dim)
    ff = weights.get(header_factors_tensor(header.kvs))  # LongRoPE: the long ones (decoded past orig ctx)
    return ReferenceModel(
        path=str(p),
        arch=arch,
        n_layer=int(need(K.BLOCK_COUNT)),
        n_embd=int(need(K.EMBEDDING_LENGTH)),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=rope.head_dim,
        rms_eps=float(need("{arch}.attention.layer_norm_rms_epsilon")),
        rope=rope,
        weights=weights,
        weight_types=types,
        freq_factors=None if ff is None else ff.reshape(-1),
    )


def _split_fused(weights: dict, types: dict, n_q: int, n_kv: int) -> None:
    """phi3's fused tensors as the separate ones the blocks read (a matmul's output rows are
    independent, so splitting the weight rows splits the product): attn_qkv -> attn_q/k/v (q rows,
    k rows, v rows: build_qkv's views), a 2*n_ff-row ffn_up -> ffn_gate, ffn_up (ggml_swiglu: silu of
    the first half times the second)."""
    for name in [n for n in weights if n.endswith(".attn_qkv.weight")]:
        b, qkv = name.removesuffix("attn_qkv.weight"), weights.pop(name)
        for part, rows in zip("qkv", np.split(qkv, [n_q, n_q + n_kv])):
            weights[f"{b}attn_{part}.weight"], types[f"{b}attn_{part}.weight"] = rows, types[name]
    for name in [n for n in weights if n.endswith(".ffn_up.weight")]:
        b = name.removesuffix("ffn_up.weight")
        if b + "ffn_gate.weight" not in weights:
            weights[b + "ffn_gate.weight"], weights[name] = np.split(weights[name], 2)
            types[b + "ffn_gate.weight"] = types[name]


# ---------------------------------------------------------------------------------------------
# the blocks
# ---------------------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ W^T (+ b): ggml_mul_mat(W, x) with W stored (n_out, n_in)."""
    y = x @ w.T
    return y if b is None else y + b


QK8_0 = 32


def quantize_q8_0_activations(x: np.ndarray) -> np.ndarray:
    """x as ggml's CPU backend feeds it to a matmul with Q8_0 weights: each row quantized
    to Q8_0 (blocks of 32: d = amax/127 stored as fp16, q = round(x * 127/amax)) and
    dequantized back, so ``quantize_q8_0_activations(x) @ W.T`` is the runtime's product up
    to float32 summation order (quantize_row_q8_0, x86 AVX path: round half to even)."""
    shape = x.shape
    if shape[-1] % QK8_0:
        raise UsageError(f"Q8_0 activations need a multiple of {QK8_0} columns, got {shape[-1]}")
    v = np.asarray(x, dtype=np.float32).reshape(-1, shape[-1] // QK8_0, QK8_0)
    amax = np.max(np.abs(v), axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(v * inv)  # _mm256_round_ps(_MM_ROUND_NEAREST): half to even
    d16 = d.astype(np.float16).astype(np.float64)  # y.d = fp16(d)
    return (q.astype(np.float64) * d16).reshape(shape)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, scale: float
) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads.

    q: (n_tokens, n_head, d), k/v: (n_tokens, n_head_kv, d); query head h reads KV head
    h // (n_head / n_head_kv) (ggml's broadcast). Token i sees token j iff pos_j <= pos_i.
    """
    n_tok, n_head, _ = q.shape
    group = n_head // k.shape[1]
    # expand KV heads to query heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    # scores (n_head, n_tokens_q, n_tokens_k)
    scores = np.einsum("ihd,jhd->hij", q, k) * scale
    mask = positions[None, :] > positions[:, None]  # key after query
    scores = np.where(mask[None, :, :], -np.inf, scores)
    probs = softmax(scores, axis=-1)
    # weighted values, back to (n_tokens, n_head * d)
    out = np.einsum("hij,jhd->ihd", probs, v)
    return out.reshape(n_tok, -1)


def forward(
    model: ReferenceModel,
    tokens: Iterable[int],
    positions: int | Iterable[int] = 0,
    *,
    rope_op: Mapping | None = None,
    rope_dtype=np.float64,
    ggml_q8_0_activations: bool = False,
    freq_factors="file",
    **overrides,
) -> np.ndarray:
    """Logits (n_tokens, n_vocab), float64, for ``tokens`` at ``positions`` (a start position
    or the positions themselves) of one sequence with an empty cache.

    The rotary uses ``rope_op`` if given (ggml op parameters, e.g. a probe's captured
    ``op.as_dict()``), else ``ggml_rope_args(model.rope, **overrides)`` where ``overrides``
    are llama_context_params RoPE fields (rope_freq_base, rope_freq_scale, rope_scaling_type,
    yarn_orig_ctx, ...).

    ``ggml_q8_0_activations``: mimic ggml's CPU matmul with Q8_0 weights, which quantizes the
    activations to Q8_0 first (:func:`quantize_q8_0_activations`). Off, the reference is the
    exact product with the dequantized weights.

    ``freq_factors``: the per-pair divisors of the rotary: ``"file"`` (default) the model's
    ``rope_freqs.weight``, None or () none, else the given values (e.g. a recorded plan's)."""
    toks, pos = _tokens_and_positions(model, tokens, positions)
    ff = model.freq_factors if isinstance(freq_factors, str) and freq_factors == "file" else freq_factors
    ff = None if ff is None or len(ff) == 0 else np.asarray(ff, dtype=np.float32).reshape(-1)
    op = dict(rope_op) if rope_op is not None else ggml_rope_args(model.rope, **overrides)
    if rope_op is not None and overrides:
        raise UsageError("reference forward: give rope_op or overrides, not both")
    if op["mode"] != (2 if model.rope.layout == RopeLayout.NEOX else 0) and rope_op is None:
        raise UsageError("reference forward: layout mismatch")  # pragma: no cover - defensive
    lin = _matmul(model, ggml_q8_0_activations)
    # token embeddings: rows of token_embd
    x = model.w("token_embd.weight")[toks]
    for il in range(model.n_layer):
        x = _block(model, x, f"blk.{il}.", pos, (op, ff), lin, rope_dtype)
    # output norm and head (tied to the embeddings when output.weight is absent)
    x = rms_norm(x, model.w("output_norm.weight"), model.rms_eps)
    return lin(x, "output.weight" if model.w("output.weight") is not None else "token_embd.weight")


def _tokens_and_positions(model: ReferenceModel, tokens, positions) -> tuple[np.ndarray, np.ndarray]:
    toks = np.asarray(list(tokens), dtype=np.int64).reshape(-1)
    if toks.size == 0:
        raise UsageError("reference forward: no tokens")
    if toks.min() < 0 or toks.max() >= model.n_vocab:
        raise UsageError(f"reference forward: token ids must lie in [0, {model.n_vocab})")
    if isinstance(positions, (int, np.integer)):
        pos = int(positions) + np.arange(toks.size, dtype=np.int64)
    else:
        pos = np.asarray(list(positions), dtype=np.int64).reshape(-1)
    if pos.size != toks.size:
        raise UsageError(f"reference forward: {pos.size} positions for {toks.size} tokens")
    return toks, pos


def _matmul(model: ReferenceModel, ggml_q8_0_activations: bool):
    """``lin(x, weight name, bias name=None)``: a weight matmul as the runtime does it (Q8_0
    activations if asked)."""

    def lin(x, name, bias=None):
        if ggml_q8_0_activations and model.weight_types.get(name) == "Q8_0":
            x = quantize_q8_0_activations(x)
        return linear(x, model.w(name), None if bias is None else model.w(bias))

    return lin


def _block(model: ReferenceModel, x: np.ndarray, b: str, pos: np.ndarray, rope: tuple, lin, rope_dtype) -> np.ndarray:
    """One transformer block (tensor names prefixed ``b``): attention, then the SwiGLU MLP;
    ``rope``: (ROPE op parameters, per-pair factors or None)."""
    n_tok, w = x.shape[0], model.w
    op, ff = rope
    # --- attention ---
    h = rms_norm(x, w(b + "attn_norm.weight"), model.rms_eps)
    q = lin(h, b + "attn_q.weight", b + "attn_q.bias").reshape(n_tok, model.n_head, model.head_dim)
    k = lin(h, b + "attn_k.weight", b + "attn_k.bias").reshape(n_tok, model.n_head_kv, model.head_dim)
    v = lin(h, b + "attn_v.weight", b + "attn_v.bias").reshape(n_tok, model.n_head_kv, model.head_dim)
    # rotary position embedding on q and k, exactly as the ROPE op
    q = apply_rope_op(q, pos, op, freq_factors=ff, dtype=rope_dtype).astype(np.float64)
    k = apply_rope_op(k, pos, op, freq_factors=ff, dtype=rope_dtype).astype(np.float64)
    att = attention(q, k, v, pos, 1.0 / np.sqrt(model.head_dim))
    x = x + lin(att, b + "attn_output.weight", b + "attn_output.bias")
    # --- SwiGLU MLP ---
    h = rms_norm(x, w(b + "ffn_norm.weight"), model.rms_eps)
    gate = silu(lin(h, b + "ffn_gate.weight"))
    up = lin(h, b + "ffn_up.weight")
    return x + lin(gate * up, b + "ffn_down.weight")


# ---------------------------------------------------------------------------------------------
# comparing logits
# ---------------------------------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


@dataclass(frozen=True)
class LogitsComparison:
    max_abs: float  # max |ref - runtime| over all logits
    p95_abs: float  # 95th percentile over tokens of each token's max |ref - runtime|
    top1_agreement: float  # fraction of tokens whose argmax agrees
    kl_max: float  # max over tokens of KL(p_ref || p_runtime), nats
    kl_mean: float


def compare_logits(ref: np.ndarray, runtime: np.ndarray) -> LogitsComparison:
    """Max abs error (overall and the 95th percentile of per-token maxima), top-1 agreement
    and KL(ref || runtime) of two (n_tokens, n_vocab) logit arrays."""
    ref = np.asarray(ref, dtype=np.float64)
    rt = np.asarray(runtime, dtype=np.float64)
    if ref.shape != rt.shape:
        raise UsageError(f"compare_logits: shapes differ {ref.shape} vs {rt.shape}")
    lp, lq = log_softmax(ref), log_softmax(rt)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    return LogitsComparison(
        max_abs=float(np.max(np.abs(ref - rt))),
        p95_abs=float(np.percentile(np.max(np.abs(ref - rt), axis=-1), 95)),
        top1_agreement=float(np.mean(np.argmax(ref, -1) == np.argmax(rt, -1))),
        kl_max=float(np.max(kl)),
        kl_mean=float(np.mean(kl)),
    )
