"""``ropepatch validate`` in a runtime worker process, so a native crash of llama.cpp becomes a
report, not a dead CLI.

:func:`validate_isolated` runs :func:`ropepatch.check.validate.validate` in the worker
(:func:`ropepatch.runtime.isolate.run_isolated`), which streams each finished check back. When
the worker dies, the report holds the checks that finished, the check that was running as
FAILED with the crash line as its reason, the rest skipped, and the crash line in ``crash``.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Mapping

from ropepatch.check.expectation import expectation, read_model
from ropepatch.check.report import FAILED, NAMES, CheckResult, ValidationReport, skipped
from ropepatch.check.validate import make_report
from ropepatch.errors import RopepatchError
from ropepatch.runtime.isolate import Job, RuntimeCrash, device_label, run_isolated
from ropepatch.version import __version__

TARGET = "ropepatch.check.validate:validate"
NOT_RUN = "not run: the runtime crashed"


def crash_report(path: str, crash: str, finished: Mapping[str, CheckResult], *, ctx: int | None = None,
                 gpu_layers: int = 0, expect: Mapping[str, object] | None = None,
                 seconds: float = 0.0) -> ValidationReport:
    """The report of a validation whose runtime crashed with the one-line message ``crash``:
    the ``finished`` checks (by id), the first unfinished one FAILED with ``crash`` as its reason,
    the others skipped. The file's expectation is read again here (pure Python)."""
    try:
        exp = expectation(read_model(path), ctx, expect)
    except RopepatchError:
        exp = None
    checks, crashed = [], False
    for cid in NAMES:
        if cid in finished:
            checks.append(finished[cid])
        elif not crashed:
            checks.append(CheckResult(cid, NAMES[cid], FAILED, crash))
            crashed = True
        else:
            checks.append(skipped(cid, NOT_RUN))
    versions = {"ropepatch": __version__, "llama_cpp_python": "unknown (the runtime crashed)"}
    return make_report(path, exp, ctx, device_label(gpu_layers), gpu_layers, checks,
                       exp.notes if exp is not None else (), seconds, versions, crash=crash)


def validate_isolated(
    path: str | os.PathLike,
    ctx: int | None = None,
    gpu_layers: int = 0,
    positions: Iterable[int] | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    on_check: Callable[[CheckResult], None] | None = None,
    **kwargs,
) -> ValidationReport:
    """:func:`ropepatch.check.validate.validate` (same arguments) run in a runtime worker.

    Returns the worker's report; when the runtime crashes, :func:`crash_report` (``crash`` holds
    the one-line :class:`RuntimeCrash` message naming the signal, the step, the file and the
    device). A :class:`RopepatchError` the worker raises is raised here, with its class."""
    path = str(path)
    finished: dict[str, CheckResult] = {}

    def collect(check: CheckResult) -> None:
        finished[check.id] = check  # a check amended later replaces its first version
        if on_check is not None:
            on_check(check)

    kw = dict(kwargs, ctx=ctx, gpu_layers=gpu_layers, positions=None if positions is None else list(positions))
    job = Job(TARGET, args=(path,), kwargs=kw, callbacks=("on_step", "on_check"))
    callbacks = {"on_check": collect, **({"on_step": on_step} if on_step is not None else {})}
    t0 = time.perf_counter()
    try:
        return run_isolated(job, file=path, device=device_label(gpu_layers), callbacks=callbacks)
    except RuntimeCrash as exc:
        return crash_report(path, str(exc), finished, ctx=ctx, gpu_layers=gpu_layers,
                            expect=kwargs.get("expect"), seconds=time.perf_counter() - t0)
