"""A scoring session on llama.cpp: a loaded model (weights + vocabulary, tokenizer) and the
contexts made from it with explicit settings, each streaming a sequence through
``llama_decode`` and reducing every batch's logits to per-token negative log-likelihoods.

Built on :mod:`ropepatch.runtime.binding` (load, lock, log control, threads); the quality
measurements (:mod:`ropepatch.quality`) score through these classes and never touch llama.cpp
objects themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from typing import Callable, Mapping

import numpy as np

from ropepatch.errors import RopepatchError, UsageError
from ropepatch.runtime import binding

DEFAULT_N_BATCH = 512


class Model:
    """A loaded GGUF (weights + vocabulary) to score with; contexts are made per setting.

    ``n_gpu_layers``: -1 = all layers, 0 = CPU only, N = the first N (:func:`binding.gpu_layers`).
    While ``quiet``, llama.cpp's log is silenced for the model's whole life. Use as a context
    manager (or call :meth:`close`)."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_batch: int = DEFAULT_N_BATCH, quiet: bool = True, flash_attn: bool | None = None):
        if n_batch < 1:
            raise UsageError(f"--batch: expected a positive number, found {n_batch}")
        self.path = path
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads or binding.default_threads()
        self.n_batch = int(n_batch)
        self.quiet = quiet
        self.flash_attn = flash_attn  # None: llama.cpp's default (auto)
        self._ll = binding.llama()
        self._held = contextlib.ExitStack()  # the quiet log level and the loaded model
        self._held.enter_context(binding.quiet_log(quiet))
        try:
            self._loaded = self._held.enter_context(
                binding.load_model(path, n_gpu_layers=n_gpu_layers, quiet=quiet))
        except BaseException:
            self._held.close()
            raise
        self._vocab = self._ll.llama_model_get_vocab(self._loaded.ptr)
        self.n_vocab = int(self._ll.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(self._ll.llama_model_n_ctx_train(self._loaded.ptr))
        self.add_bos = bool(self._ll.llama_vocab_get_add_bos(self._vocab))
        self.bos = int(self._ll.llama_vocab_bos(self._vocab))

    # -- lifecycle
    def close(self) -> None:
        """Free the model and restore the log level (once)."""
        held = getattr(self, "_held", None)
        if held is not None:
            held.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    # -- tokenizer
    def tokenize(self, text: str | bytes, *, add_bos: bool = False) -> np.ndarray:
        """Token ids of ``text`` (int32), with the model's BOS prepended when ``add_bos`` and
        the model adds one. Special-token syntax in the text is NOT parsed."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cap = len(data) + 16
        buf = (self._ll.llama_token * cap)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, cap, False, False)
        if n < 0:  # pragma: no cover - cap is always enough for byte-level fallbacks
            cap = -n
            buf = (self._ll.llama_token * cap)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, cap, False, False)
        toks = np.frombuffer(buf, dtype=np.int32, count=n).copy()
        if add_bos and self.add_bos:
            toks = np.concatenate([np.array([self.bos], dtype=np.int32), toks])
        return toks

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (special tokens rendered)."""
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, int(token), buf, 64, 0, True)
        return buf.raw[:max(n, 0)]

    # -- contexts
    def context(self, settings: Mapping[str, object], *, n_batch: int | None = None,
                n_ubatch: int | None = None) -> "Context":
        """A new :class:`Context` with llama.cpp context ``settings`` (``n_ctx`` required)."""
        return Context(self, settings, n_batch or self.n_batch, n_ubatch)


def _context_params(model: Model, settings: Mapping[str, object], n_batch: int, n_ubatch: int | None):
    """``llama_context_params`` for one sequence of ``settings["n_ctx"]`` tokens."""
    cp = model._ll.llama_context_default_params()
    n_ctx = int(settings["n_ctx"])
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = min(n_batch, n_ctx)
    if n_ubatch:
        cp.n_ubatch = min(n_ubatch, cp.n_batch)
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = model.n_threads
    cp.no_perf = True
    if model.flash_attn is not None:
        cp.flash_attn_type = 1 if model.flash_attn else 0
    for k, v in settings.items():
        if k == "n_ctx":
            continue
        if not hasattr(cp, k):
            raise UsageError(f"unknown llama.cpp context setting {k!r}")
        setattr(cp, k, v)
    return cp


class Context:
    """A llama.cpp context with RoPE settings and a reusable batch; scores sequences."""

    def __init__(self, model: Model, settings: Mapping[str, object], n_batch: int,
                 n_ubatch: int | None = None):
        ll = model._ll
        self.model, self._ll = model, ll
        cp = _context_params(model, settings, n_batch, n_ubatch)
        self.n_ctx = int(cp.n_ctx)
        self.n_batch = nb = int(cp.n_batch)
        with binding.LOCK, binding.quiet_log(model.quiet):
            self._ctx = ll.llama_init_from_model(model._loaded.ptr, cp)
        if not self._ctx:
            raise RopepatchError(f"{model.path}: llama.cpp could not create a context of {self.n_ctx} tokens")
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = b = ll.llama_batch_init(nb, 0, 1)
        self._tok = np.ctypeslib.as_array(b.token, shape=(nb,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(nb,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(nb,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(nb,))
        self._nseq[:] = 1
        for i in range(nb):
            b.seq_id[i][0] = 0
        self.decode_seconds = 0.0
        self._work: np.ndarray | None = None  # scratch for token_nll (n_batch x n_vocab float32)

    def close(self) -> None:
        """Free the batch and the context (once)."""
        if getattr(self, "_ctx", None):
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def clear(self) -> None:
        """Empty the KV cache."""
        self._ll.llama_memory_clear(self._mem, True)

    def truncate(self, n: int) -> None:
        """Drop cached positions >= n of sequence 0."""
        self._ll.llama_memory_seq_rm(self._mem, 0, int(n), -1)

    def decode(self, tokens: np.ndarray, pos0: int, outputs: np.ndarray | None) -> np.ndarray | None:
        """Decode ``tokens`` at positions ``pos0 ..``; ``outputs`` a bool mask of which rows want
        logits. Returns a view of this decode's logits (n_outputs x n_vocab), valid until the
        next decode."""
        n = len(tokens)
        if n > self.n_batch:
            raise ValueError("batch larger than n_batch")
        self._tok[:n] = tokens
        self._pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        if outputs is None:
            self._out[:n] = 0
            n_out = 0
        else:
            self._out[:n] = outputs
            n_out = int(np.count_nonzero(outputs))
        self._batch.n_tokens = n
        t0 = time.perf_counter()
        rc = self._ll.llama_decode(self._ctx, self._batch)
        self._ll.llama_synchronize(self._ctx)
        self.decode_seconds += time.perf_counter() - t0
        if rc != 0:
            raise RopepatchError(f"llama_decode failed (code {rc}) at positions {pos0}..{pos0 + n - 1}")
        binding.decoded()
        if not n_out:
            return None
        ptr = self._ll.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.model.n_vocab))

    def feed(self, tokens: np.ndarray, start: int = 0,
             on_batch: Callable[[int], None] | None = None) -> None:
        """Decode ``tokens`` at positions ``start ..`` into the cache, no logits."""
        for p in range(0, len(tokens), self.n_batch):
            chunk = tokens[p:p + self.n_batch]
            self.decode(chunk, start + p, None)
            if on_batch:
                on_batch(len(chunk))

    def score(self, seq: np.ndarray, score_from: int = 1, *, start: int = 0,
              on_batch: Callable[[int], None] | None = None,
              stop: Callable[[int, np.ndarray], bool] | None = None,
              argmax: np.ndarray | None = None) -> np.ndarray:
        """Stream ``seq`` (decoded from position ``start``; the cache must hold positions
        ``< start`` of the same sequence) and return the NLL of ``seq[p]`` for every
        ``p >= score_from`` (NaN elsewhere). ``on_batch(n_decoded)`` after every batch;
        ``stop(p_end, nll)`` may end early once positions ``< p_end`` are scored (rest stays
        NaN); ``argmax``: an int array the size of ``seq`` that receives the greedy prediction
        for every scored position."""
        n = len(seq)
        nll = np.full(n, np.nan)
        score_from = max(int(score_from), 1)
        last = n - 1  # the last token's logits are never needed: decode up to n - 2
        p = start
        while p < last:
            q = min(p + self.n_batch, last)
            # row i (position p+i) predicts seq[p+i+1]; wanted when p+i+1 >= score_from
            want = (np.arange(p, q) + 1) >= score_from
            logits = self.decode(seq[p:q], p, want if want.any() else None)
            if logits is not None:
                tgt_pos = np.arange(p, q)[want] + 1
                if self._work is None:
                    self._work = np.empty(self.n_batch * self.model.n_vocab, dtype=np.float32)
                nll[tgt_pos] = token_nll(logits, seq[tgt_pos], self._work)
                if argmax is not None:
                    argmax[tgt_pos] = logits.argmax(axis=1)
            if on_batch:
                on_batch(q - p)
            p = q
            if stop is not None and stop(p + 1, nll):
                break
        return nll


def token_nll(logits: np.ndarray, targets: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """-log softmax(logits)[target] per row: exp in float32 (into ``work`` when given, a
    reusable buffer at least as large as ``logits``, to avoid fresh page faults per batch),
    row sums accumulated in float64, logs and differences in float64."""
    n, v = logits.shape
    m = logits.max(axis=1)
    buf = work.reshape(-1)[: n * v].reshape(n, v) if work is not None else np.empty_like(logits)
    np.subtract(logits, m[:, None], out=buf)
    np.exp(buf, out=buf)
    lse = np.log(buf.sum(axis=1, dtype=np.float64)) + m.astype(np.float64)
    return lse - logits[np.arange(n), targets].astype(np.float64)
