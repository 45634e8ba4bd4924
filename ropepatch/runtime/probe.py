"""Runtime probe: ask llama.cpp (through llama-cpp-python's low-level API) what RoPE it applied.

:func:`probe` loads a GGUF, creates a context (optionally with RoPE overrides), decodes a
short prompt at chosen positions -- the first batch of an empty sequence may start at any
position, so positions far beyond the training context cost no long run -- and captures,
through the scheduler's eval callback (``cb_eval``), every ROPE node of the chosen layers:
its name, its decoded op parameters, its input ``src[0]`` (read *before* the op runs, since
ggml may compute ROPE in place), its output, its positions ``src[1]`` and its optional
frequency factors ``src[2]``; plus the logits of the decoded tokens.

How the un-rotated input is read: while the chosen layers are still being computed, the
callback asks to observe *every* node, so the scheduler computes them one node at a time
and synchronises after each. When the callback is then asked about a ROPE node, all of its
sources are computed and the node itself is not, so ``src[0]`` is read then (ask=True); the
output is read after the node ran (ask=False). Past the last chosen layer the callback
declines everything and the rest of the graph runs in one go.

Tensors are read with ``ggml_backend_tensor_get`` (works for CPU and GPU buffers) and the
``ggml_tensor`` struct is declared in ctypes from the ggml.h shipped with llama-cpp-python
0.3.36, checked at run time against ``ggml_tensor_overhead`` and ``ggml_get_name``.
Every resource (batch, context, model) is freed, also on error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ropepatch.errors import UsageError
from ropepatch.rope.params import LLAMA_ROPE_SCALING_TYPE
from ropepatch.runtime import binding
from ropepatch.runtime.capture import (  # noqa: F401 - ProbeError, RopeCapture, RopeOpParams: public here too
    GGML_TYPE_F16,
    GGML_TYPE_F32,
    ProbeError,
    Recorder,
    RopeCapture,
    RopeOpParams,
    frozen,
    ggml_lib,
)


@dataclass(frozen=True)
class ProbeResult:
    """What the runtime did for one decode."""

    model_path: str
    n_ctx: int  # llama_n_ctx of the context
    n_ctx_train: int  # llama_model_n_ctx_train after context creation (YaRN overrides change it)
    tokens: np.ndarray = field(repr=False)  # int32 (n_tokens,)
    positions: np.ndarray = field(repr=False)  # int32 (n_tokens,)
    ropes: tuple[RopeCapture, ...] = ()
    logits: np.ndarray | None = field(default=None, repr=False)  # float32 (n_tokens, n_vocab)

    def rope(self, name: str) -> RopeCapture:
        """The first captured ROPE node with this name (e.g. ``"Kcur-0"``)."""
        for cap in self.ropes:
            if cap.name == name:
                return cap
        raise KeyError(f"no ROPE node named {name!r} captured (have {[c.name for c in self.ropes]})")


# ---- the probe -------------------------------------------------------------------------------


def _batch_inputs(tokens, positions, n_batch: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens as int64, positions as int32, n_batch) for one batch, checked."""
    toks = np.asarray(list(tokens), dtype=np.int64).reshape(-1)
    if toks.size == 0:
        raise UsageError("probe: no tokens to decode")
    pos = _positions(positions, toks.size)
    n_batch = int(n_batch) if n_batch else max(int(toks.size), 1)
    if toks.size > n_batch:
        raise UsageError(f"probe: {toks.size} tokens do not fit one batch of n_batch={n_batch}")
    return toks, pos, n_batch


def _scaling_type(value: int | str) -> int:
    """``rope_scaling_type`` as llama.h's enum value (a name is looked up)."""
    if not isinstance(value, str):
        return int(value)
    if value not in LLAMA_ROPE_SCALING_TYPE:
        raise UsageError(f"probe: unknown rope_scaling_type {value!r}")
    return LLAMA_ROPE_SCALING_TYPE[value]


def _positions(positions, n_tokens: int) -> np.ndarray:
    if isinstance(positions, (int, np.integer)):
        pos = int(positions) + np.arange(n_tokens, dtype=np.int64)
    else:
        pos = np.asarray(list(positions), dtype=np.int64).reshape(-1)
    if pos.size != n_tokens:
        raise UsageError(f"probe: {pos.size} positions for {n_tokens} tokens")
    if pos.size and (pos[0] < 0 or np.any(np.diff(pos) != 1)):
        raise UsageError("probe: positions must be non-negative and consecutive (one sequence, one batch)")
    if pos.size and pos[-1] > np.iinfo(np.int32).max:
        raise UsageError(f"probe: position {pos[-1]} does not fit llama_pos (int32)")
    return pos.astype(np.int32)


def probe(
    model_path: str | os.PathLike,
    tokens: Iterable[int],
    positions: int | Iterable[int] = 0,
    *,
    n_ctx: int = 2048,
    n_batch: int | None = None,
    layers: Iterable[int] | None = (0,),
    rope_freq_base: float = 0.0,
    rope_freq_scale: float = 0.0,
    rope_scaling_type: int | str = -1,
    yarn_ext_factor: float = -1.0,
    yarn_attn_factor: float = -1.0,
    yarn_beta_fast: float = -1.0,
    yarn_beta_slow: float = -1.0,
    yarn_orig_ctx: int = 0,
    n_gpu_layers: int = 0,
    kv_overrides: Mapping[str, bool | int | float | str] | None = None,
    n_threads: int | None = None,
    logits: bool = True,
    kv_cache_type: str | None = None,
    flash_attn: bool | None = None,
    quiet: bool = True,
) -> ProbeResult:
    """Decode ``tokens`` at ``positions`` (a start position, or the consecutive positions
    themselves) in a fresh context and capture the ROPE nodes of ``layers`` (None: all).

    RoPE keyword arguments are ``llama_context_params`` fields with their "take it from the
    file" defaults (0 / -1, as ``llama_context_default_params``); ``rope_scaling_type`` may
    also be a name ("none", "linear", "yarn", "longrope"). ``n_gpu_layers`` (-1: all) and
    ``kv_overrides`` go to the model params. All tokens go in one batch and one ubatch, so
    each ROPE node is captured once per layer. ``kv_cache_type`` ("f32" / "f16"; None keeps
    the runtime default, f16) sets the K and V cache types; ``flash_attn`` forces flash
    attention on or off (None: the runtime's auto). ``quiet`` silences llama.cpp's
    info log for the call (llama-cpp-python's "llama-cpp-python" logger, restored after).
    """
    toks, pos, n_batch = _batch_inputs(tokens, positions, n_batch)
    rope_scaling_type = _scaling_type(rope_scaling_type)
    path = Path(model_path)
    if not path.is_file():
        raise UsageError(f"probe: no such model file: {path}")
    layer_set = None if layers is None else frozenset(int(v) for v in layers)
    kv_types = {None: None, "f32": GGML_TYPE_F32, "f16": GGML_TYPE_F16}
    if kv_cache_type not in kv_types:
        raise UsageError(f"probe: kv_cache_type must be 'f32' or 'f16', got {kv_cache_type!r}")
    rope = {"rope_freq_base": float(rope_freq_base), "rope_freq_scale": float(rope_freq_scale),
            "rope_scaling_type": int(rope_scaling_type), "yarn_ext_factor": float(yarn_ext_factor),
            "yarn_attn_factor": float(yarn_attn_factor), "yarn_beta_fast": float(yarn_beta_fast),
            "yarn_beta_slow": float(yarn_beta_slow), "yarn_orig_ctx": int(yarn_orig_ctx)}

    with binding.LOCK, binding.quiet_log(quiet):
        lib = ggml_lib()
        recorder = Recorder(lib, layer_set)
        cb = binding.llama().ggml_backend_sched_eval_callback(recorder)  # keep alive until freed
        with binding.load_model(path, n_gpu_layers=n_gpu_layers, kv_overrides=kv_overrides,
                                quiet=quiet) as model:
            cparams = _context_params(n_ctx, n_batch, n_threads, rope, kv_types[kv_cache_type], flash_attn, cb)
            return _decode(model, cparams, toks, pos, logits, recorder)


def _context_params(n_ctx: int, n_batch: int, n_threads: int | None, rope: Mapping[str, float | int],
                    kv_type: int | None, flash_attn: bool | None, cb):
    """``llama_context_params`` for one probe batch: RoPE fields as given (0 / -1: from the file)."""
    ll = binding.llama()
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = int(n_ctx)
    cparams.n_batch = cparams.n_ubatch = n_batch
    cparams.n_seq_max = 1
    cparams.n_threads = cparams.n_threads_batch = int(n_threads or binding.default_threads())
    for name, value in rope.items():
        setattr(cparams, name, value)
    if kv_type is not None:
        cparams.type_k = cparams.type_v = kv_type
    if flash_attn is not None:
        cparams.flash_attn_type = 1 if flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_*
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    return cparams


def _decode(model, cparams, toks: np.ndarray, pos: np.ndarray, logits: bool, recorder: "Recorder") -> ProbeResult:
    """Create the context, decode the one batch, collect the captures and logits; free all."""
    ll, path = binding.llama(), model.path
    n_vocab = int(ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model.ptr)))
    if toks.min() < 0 or toks.max() >= n_vocab:
        raise UsageError(f"probe: token ids must lie in [0, {n_vocab})")
    ctx = ll.llama_init_from_model(model.ptr, cparams)
    if not ctx:
        raise ProbeError(f"{path}: llama.cpp could not create a context (n_ctx={cparams.n_ctx}; see its log above)")
    batch = ll.llama_batch_init(int(toks.size), 0, 1)
    try:
        for i, (tok, p) in enumerate(zip(toks.tolist(), pos.tolist())):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, p, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if logits else 0
        if not logits:
            batch.logits[toks.size - 1] = 1
        batch.n_tokens = int(toks.size)
        rc = ll.llama_decode(ctx, batch)
        if recorder.error is not None:
            raise ProbeError(f"{path}: eval callback failed: {recorder.error}") from recorder.error
        if rc != 0:
            raise ProbeError(f"{path}: llama_decode returned {rc} (positions {pos[0]}..{pos[-1]}, "
                             f"n_ctx {cparams.n_ctx})")
        binding.decoded()
        out_logits = None
        if logits:
            ptr = ll.llama_get_logits(ctx)
            if not ptr:
                raise ProbeError(f"{path}: llama_get_logits returned NULL")
            out_logits = frozen(np.ctypeslib.as_array(ptr, shape=(int(toks.size), n_vocab)).copy())
        return ProbeResult(
            model_path=str(path), n_ctx=int(ll.llama_n_ctx(ctx)),
            n_ctx_train=int(ll.llama_model_n_ctx_train(model.ptr)),
            tokens=frozen(toks.astype(np.int32)), positions=frozen(pos),
            ropes=tuple(recorder.captures), logits=out_logits,
        )
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)


def gpu_available() -> bool:
    """True when the llama.cpp build can offload to a GPU (see :func:`binding.gpu_available`)."""
    return binding.gpu_available()
