"""How evaluate, tune and passkey run: the options they share (the llama.cpp load and context
settings, the callbacks, an already-loaded model to reuse), given to each of them as keyword
arguments and collected here once."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from ropepatch.quality import factor_model
from ropepatch.quality.progress import ProgressFn, StepFn
from ropepatch.rope.params import RopeParams
from ropepatch.runtime.session import DEFAULT_N_BATCH, Model


@dataclass(frozen=True)
class RunOptions:
    """The keyword arguments evaluate, tune and passkey share."""

    n_batch: int = DEFAULT_N_BATCH  # tokens per llama_decode
    n_threads: int | None = None  # None: every CPU this process may use
    n_gpu_layers: int = 0  # -1 = all layers, 0 = CPU only, N = the first N
    flash_attn: bool | None = None  # None: llama.cpp's default (auto)
    progress: ProgressFn | None = None  # told after every decoded batch
    on_step: StepFn | None = None  # told when the load and each method's scoring start
    model: Model | None = None  # an already-loaded model to reuse (left open)
    original: RopeParams | None = None  # the file's original RoPE parameters, when already read

    def step(self, what: str) -> None:
        """Tell ``on_step`` (when given) that the phase ``what`` starts."""
        if self.on_step is not None:
            self.on_step(what)

    @contextlib.contextmanager
    def open(self, model_path: str) -> Iterator[Model]:
        """``model`` when given (left open), else the file at ``model_path`` loaded for the
        block and closed after it. Factor methods scored on it share one temporary patched
        copy for the block (:func:`ropepatch.quality.factor_model.scope`)."""
        if self.model is not None:
            with factor_model.scope(self.model):
                yield self.model
            return
        self.step(f"loading {os.path.basename(model_path)}")
        with Model(model_path, n_gpu_layers=self.n_gpu_layers, n_threads=self.n_threads,
                   n_batch=self.n_batch, flash_attn=self.flash_attn) as m, factor_model.scope(m):
            yield m
