"""evaluate / tune / passkey with crash isolation: the measurement runs in the runtime worker
(:func:`ropepatch.runtime.isolate.run_isolated`), so a native crash in llama.cpp (SIGSEGV on a
GPU build, an OOM kill) becomes one :class:`~ropepatch.runtime.isolate.RuntimeCrash` line naming
the step, the file and the device, instead of a dead process.

Each function takes the same arguments as the function it runs, except a loaded ``model`` or
tune's ``scorer`` (they cannot cross processes). The callbacks ``progress`` (tune: also ``log``)
and ``on_step`` are called in THIS process with what the worker reports; ``on_step`` is always
streamed, so a crash message names the step even when the caller passes none. Arguments and
results cross as pickles. ``tune_isolated(..., apply=True)`` searches in the worker and writes
the winner here, in the parent (:func:`ropepatch.quality.tune.apply_tune`).
"""

from __future__ import annotations

from typing import Any, Callable

from ropepatch.errors import UsageError
from ropepatch.quality import factor_model
from ropepatch.quality.passkey import PasskeyResult
from ropepatch.quality.results import EvalResult
from ropepatch.quality.tune import TuneAllResult, TuneResult, apply_tune
from ropepatch.runtime.isolate import STEP, Job, device_label, run_isolated

_LOCAL_ONLY = ("model", "scorer")  # objects that live in one process


def _run(target: str, kwargs: dict[str, Any], streamed: tuple[str, ...]) -> Any:
    """``target(**kwargs)`` in the runtime worker; ``streamed``: the callback names it may call
    (each forwarded to the caller's function of that name, when given)."""
    for name in _LOCAL_ONLY:
        if kwargs.get(name) is not None:
            raise UsageError(f"{target}: {name!r} cannot cross to the runtime worker; pass the model's path")
        kwargs.pop(name, None)
    local: dict[str, Callable[[Any], None]] = {}
    names = []
    for name in streamed:
        fn = kwargs.pop(name, None)
        if fn is not None:
            local[name] = fn
        if fn is not None or name == STEP:
            names.append(name)
    job = Job(f"ropepatch.quality.{target}", kwargs=kwargs, callbacks=tuple(names))
    try:
        return run_isolated(job, file=str(kwargs["model_path"]),
                            device=device_label(kwargs.get("n_gpu_layers", 0)), callbacks=local)
    finally:  # a worker killed mid-run (Ctrl-C, a crash) leaves its temporary patched copy
        factor_model.sweep()


def evaluate_isolated(model_path: str, ctx: int, text: str | bytes | None = None, **kw) -> EvalResult:
    """:func:`ropepatch.quality.evaluate.evaluate` in the runtime worker."""
    kwargs = dict(model_path=model_path, ctx=ctx, text=text, **kw)
    return _run("evaluate:evaluate", kwargs, ("progress", STEP))


def tune_isolated(model_path: str, ctx: int, text: str | bytes | None = None, *, apply: bool = False,
                  force: bool = False, **kw) -> TuneResult | TuneAllResult:
    """:func:`ropepatch.quality.tune.tune` in the runtime worker (the search only); with
    ``apply``, the winner is written here, after the worker is gone (``force``: even when the
    sliding window beats it)."""
    kwargs = dict(model_path=model_path, ctx=ctx, text=text, apply=False, **kw)
    result = _run("tune:tune", kwargs, ("progress", STEP, "log"))
    return apply_tune(model_path, result, force=force) if apply else result


def passkey_isolated(model_path: str, ctx: int, **kw) -> PasskeyResult:
    """:func:`ropepatch.quality.passkey.passkey` in the runtime worker."""
    kwargs = dict(model_path=model_path, ctx=ctx, **kw)
    return _run("passkey:passkey", kwargs, ("progress", STEP))
