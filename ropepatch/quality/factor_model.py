"""Per-pair factor methods in eval / tune / passkey: a temporary patched copy of the model.

``ntk-parts`` and ``factors`` write their per-pair divisors into the ``rope_freqs.weight``
tensor; no llama.cpp context setting can apply them. To measure one, ropepatch patches a COPY
of the model (:func:`ropepatch.patch.gguf.patch_gguf` with ``out=``: the first patch adds the
tensor) in a private temporary directory, loads that copy and scores it with the unscaled
context settings at ``ctx`` (base unchanged, scaling none: the factors are in the file). The
copy then serves every later plan of the same run: it is re-patched IN PLACE (one ``pwrite``
of the factor data) and reloaded, so a search over many candidates costs one copy. The user's
file is only read (and flock-ed while the copy is written).

Cost: one copy of the model on disk for the length of the run, in ``$TMPDIR`` (else the
system's temporary directory); the free space is checked before anything is written (one line
naming the directory when it is short). One extra model load per plan, and while a factor plan
is scored the copy's weights are loaded next to the original's.

Cleanup: the directory goes when the run ends, on an error or Ctrl-C too. A run killed outright
(kill -9, an OOM kill) cannot clean up; the live run holds an flock on its directory, so the
next run (or the parent of a runtime worker, :func:`sweep`) removes directories nobody holds.

The same mechanism covers a file whose ``rope_freqs`` already differs from what a plan needs (a
file patched with ``ntk-parts``, measured with ``none`` or ``window``): the copy is patched
with that plan, so every method is measured relative to the ORIGINAL model, as eval promises.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import weakref
from typing import Any, Iterator, Mapping, Sequence

from ropepatch.errors import RopepatchError, UsageError
from ropepatch.patch.gguf import PatchResult, inspect_gguf, patch_gguf
from ropepatch.quality.specs import UNSCALED, WINDOW, MethodSpec
from ropepatch.rope.factors import f32
from ropepatch.rope.methods import Plan, alpha_for, get_method, make_plan
from ropepatch.rope.params import RopeParams
from ropepatch.runtime.session import DEFAULT_N_BATCH, Model
from ropepatch.safeio.files import orphans
from ropepatch.safeio.paths import shown

PREFIX, SUFFIX = "ropepatch-copy-", ".d"  # the temporary directories' names
MARGIN = 64 << 20  # bytes asked for beyond the model's size (the added tensor, header slack)

_SCOPES: dict[int, "PatchedCopy"] = {}  # id(model) -> the run's copy of that model (see scope)
_COPIES: "weakref.WeakSet[Model]" = weakref.WeakSet()  # models loaded from a temporary copy


def writes_factors(method: str) -> bool:
    """Does ``method`` (a registry name or ``window``) write per-pair factors?"""
    return method != WINDOW and get_method(method).writes_factors


def temp_root(tmp_dir: str | None = None) -> str:
    """Where the temporary copies go: ``tmp_dir``, else ``$TMPDIR``, else the system's."""
    return tmp_dir or tempfile.gettempdir()


def sweep(tmp_dir: str | None = None) -> int:
    """Remove the temporary copies of runs that are gone (their directory's flock is free);
    return how many."""
    n = 0
    for p in orphans(temp_root(tmp_dir), PREFIX, SUFFIX, directories=True):
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def check_space(model_path: str, tmp_dir: str | None = None) -> None:
    """Refuse (one line) when the temporary directory cannot hold a copy of the model."""
    root = temp_root(tmp_dir)
    size = os.path.getsize(model_path)
    try:
        free = shutil.disk_usage(root).free
    except OSError as e:
        raise UsageError(f"{shown(root)}: cannot use it for the temporary patched copy ({e.strerror or e}); "
                         f"set TMPDIR to a writable directory") from None
    if free < size + MARGIN:
        raise UsageError(
            f"{shown(model_path)}: factor methods are measured on a temporary patched copy of the model "
            f"({size / 2**20:.0f} MiB), but {shown(root)} has only {free / 2**20:.0f} MiB free; set TMPDIR to "
            f"a directory with room, or leave out ntk-parts and factors; nothing written")


class PatchedCopy:
    """One temporary patched copy of ``source``, loaded as a :class:`Model` per plan.

    The first :meth:`load` writes the copy (``patch_gguf(source, ..., out=copy)``); later ones
    re-patch it in place and reload it. :meth:`close` (or leaving the ``with`` block) frees the
    model and removes the directory. ``n_gpu_layers`` ... ``quiet``: how the copy is loaded
    (:class:`Model`'s arguments; :meth:`like` takes them from a loaded model)."""

    def __init__(self, source: str, *, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_batch: int = DEFAULT_N_BATCH, flash_attn: bool | None = None, quiet: bool = True,
                 tmp_dir: str | None = None):
        self.source = source
        self.load_args = dict(n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_batch=n_batch,
                              flash_attn=flash_attn, quiet=quiet)
        self.tmp_dir = tmp_dir
        self.dir: str | None = None
        self.path: str | None = None
        self.model: Model | None = None
        self.result: PatchResult | None = None  # the last patch written
        self.loads = 0
        self._lock_fd: int | None = None

    @classmethod
    def like(cls, model: Model, tmp_dir: str | None = None) -> "PatchedCopy":
        """A copy of ``model``'s file, loaded the way ``model`` was."""
        return cls(model.path, n_gpu_layers=model.n_gpu_layers, n_threads=model.n_threads,
                   n_batch=model.n_batch, flash_attn=model.flash_attn, quiet=model.quiet, tmp_dir=tmp_dir)

    def __enter__(self) -> "PatchedCopy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make_dir(self) -> None:
        sweep(self.tmp_dir)
        check_space(self.source, self.tmp_dir)
        self.dir = tempfile.mkdtemp(prefix=PREFIX, suffix=SUFFIX, dir=temp_root(self.tmp_dir))
        self._lock_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live: see sweep
        self.path = os.path.join(self.dir, os.path.basename(self.source))

    def patch(self, ctx: int, method: str, alpha: float | None,
              options: Mapping[str, Any] | None = None) -> PatchResult:
        """Write ``method`` into the copy (the first time: a patched copy of the source; later:
        an in-place re-patch of the copy). Errors name the user's file, not the copy."""
        self.unload()
        first = self.dir is None
        if first:
            self._make_dir()
        try:
            if first:
                self.result = patch_gguf(self.source, ctx, method, alpha, out=self.path, options=options)
            else:
                self.result = patch_gguf(self.path, ctx, method, alpha, options=options)
        except RopepatchError as e:
            msg = str(e).replace(shown(self.path), shown(self.source)).replace(self.path, self.source)
            raise type(e)(msg) from None
        return self.result

    def load(self, ctx: int, method: str, alpha: float | None, options: Mapping[str, Any] | None = None
             ) -> Model:
        """Patch the copy with the plan and load it (the previous model is closed first)."""
        self.patch(ctx, method, alpha, options)
        self.model = Model(self.path, **self.load_args)
        _COPIES.add(self.model)
        self.loads += 1
        return self.model

    def unload(self) -> None:
        """Close the loaded copy (if any); the file stays for the next plan."""
        if self.model is not None:
            m, self.model = self.model, None
            m.close()

    def close(self) -> None:
        """Free the model and remove the temporary directory (once)."""
        try:
            self.unload()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = self.path = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def is_copy(model: Model) -> bool:
    """Was ``model`` loaded from a temporary patched copy (so it already carries its plan)?"""
    return model in _COPIES


def copy_plan(original: RopeParams, ctx: int, method: str, alpha: float | None = None,
              options: Mapping[str, Any] | None = None) -> Plan:
    """The plan a measurement of ``method`` writes into a copy (``window``: the unscaled model)."""
    name = UNSCALED if method == WINDOW else method
    return make_plan(original, ctx, name, alpha_for(name, alpha), options=options)


def needed_factors(original: RopeParams, ctx: int, method: str, alpha: float | None = None,
                   options: Mapping[str, Any] | None = None) -> tuple[float, ...]:
    """The per-pair factors the runtime must apply to measure ``method``: the plan's (the
    original file's for ``window`` and the methods that write none)."""
    if method == WINDOW:
        return tuple(original.freq_factors)
    return tuple(copy_plan(original, ctx, method, alpha, options).target.freq_factors)


@contextlib.contextmanager
def scope(model: Model, tmp_dir: str | None = None) -> Iterator[None]:
    """For the block, every :func:`scoring_model` of ``model`` shares ONE temporary copy
    (made at the first plan that needs it, removed at the end). Nested scopes share the outer."""
    if id(model) in _SCOPES:
        yield
        return
    _SCOPES[id(model)] = copy = PatchedCopy.like(model, tmp_dir)
    try:
        yield
    finally:
        del _SCOPES[id(model)]
        copy.close()


def _file_carries(path: str, original: RopeParams, ctx: int, method: str, alpha: float | None,
                  options: Mapping[str, Any] | None) -> bool:
    """The file holds the factors and the attn_factor (factors --attn-factor) the plan needs."""
    cur = inspect_gguf(path).current
    attn = (original.attn_factor if method == WINDOW
            else copy_plan(original, ctx, method, alpha, options).target.attn_factor)
    return (tuple(cur.freq_factors) == needed_factors(original, ctx, method, alpha, options)
            and f32(cur.attn_factor) == f32(attn))


@contextlib.contextmanager
def scoring_model(model: Model, original: RopeParams, ctx: int, method: str, alpha: float | None = None,
                  options: Mapping[str, Any] | None = None) -> Iterator[Model]:
    """The model to score ``method`` with: ``model`` itself when context settings can apply the
    plan, else a temporary copy patched with it (the :func:`scope`'s, re-patched in place, or a
    copy for this block alone): when the per-pair factors the plan needs (:func:`needed_factors`)
    are not the ones the file holds now. A model that is already a copy is used as it is."""
    if is_copy(model) or _file_carries(model.path, original, ctx, method, alpha, options):
        yield model  # context settings apply the plan (or the copy already carries it)
        return
    name = UNSCALED if method == WINDOW else method
    shared = _SCOPES.get(id(model))
    with contextlib.ExitStack() as held:
        copy = shared if shared is not None else held.enter_context(PatchedCopy.like(model))
        try:
            yield copy.load(ctx, name, alpha_for(name, alpha), options)
        finally:
            copy.unload()


def refusal(original: RopeParams, ctx: int, method: str) -> str | None:
    """Why ``method`` cannot be measured on this model (e.g. a factor method on an architecture
    that does not load rope_freqs), in one line; None when it can (``tune --method all`` skips
    such a method with this reason)."""
    try:
        copy_plan(original, ctx, method)
    except RopepatchError as e:
        return str(e)
    return None


def check_specs(model_path: str, original: RopeParams, ctx: int, specs: Sequence[MethodSpec],
                tmp_dir: str | None = None) -> None:
    """Before any scoring: plan every factor spec (a refusal, e.g. an architecture that does not
    load rope_freqs, is one line naming the file) and check the room for the temporary copy."""
    factor = [s for s in specs if writes_factors(s.method)]
    for s in factor:
        try:
            copy_plan(original, ctx, s.method, s.alpha)
        except RopepatchError as e:
            raise type(e)(f"{shown(model_path)}: {s.label}: {e}") from None
    if factor:
        check_space(model_path, tmp_dir)
