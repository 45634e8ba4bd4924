"""Run llama.cpp work in a child process, so a native crash becomes one line, not a dead CLI.

:func:`run_isolated` starts ``python -m ropepatch.runtime.worker`` (which imports ``llama_cpp``
before anything else: the load path that works on CUDA builds), sends it a :class:`Job` -- a
function named ``"module:function"`` with its arguments -- and streams back what the function
reports through its callback arguments (progress, finished checks, the current step) until it
returns or raises. The parent never loads llama.cpp itself.

If the child dies without an answer (SIGSEGV, SIGABRT, an OOM kill), :class:`RuntimeCrash` says
which step, which file, which device and which signal, in one line; whatever the callbacks
already received (e.g. validate's finished checks) is the caller's to report. A crash on the CPU
(SIGSEGV, SIGILL, SIGBUS) before the first ``llama_decode`` returned (the worker marks it) is
tried once more with llama.cpp's weight repacking off (``ROPEPATCH_NO_REPACK``, see
:mod:`.binding`): some CPUs' repacked kernels crash at the first decode (AMX in some VMs) where
the plain ones run. The retry runs the same job; the events the first try already delivered
(e.g. validate's check a) are not delivered again, step names aside.

Protocol (child -> parent, over an inherited pipe): pickled tuples ``("event", name, payload)``,
then exactly one of ``("result", value)``, ``("error", (module, class, message))``,
``("failure", "Type: message")``. Parent -> child: one pickled :class:`Job` on the child's stdin.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ropepatch.errors import RopepatchError
from ropepatch.runtime.binding import DECODED, NO_REPACK_ENV, repack_off

STEP = "on_step"  # the callback name whose payload (a string) names the step now running
_PKG_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ropepatch package


class RuntimeCrash(RopepatchError):
    """The llama.cpp runtime child died without an answer (a signal or an abrupt exit)."""

    exit_code = 1
    rc: int = 0  # the child's exit status (negative: the signal)


@dataclass(frozen=True)
class Job:
    """What the worker runs: ``target(*args, **kwargs)``, each kwarg in ``callbacks`` replaced by
    a function that streams its argument back to the parent as an event of that name."""

    target: str  # "package.module:function"
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    callbacks: tuple[str, ...] = ()


@dataclass
class Outcome:
    """Bookkeeping of one isolated run (for the overhead figures and the crash message)."""

    step: str = "starting the runtime"
    events: int = 0
    started: float = 0.0
    first_event_s: float | None = None  # seconds from spawn to the child's first event
    results: int = 0  # events other than steps delivered to the callbacks
    decoded: bool = False  # the worker marked its first successful llama_decode
    repack_off: bool = False  # the run that answered had llama.cpp's weight repacking off


def device_label(n_gpu_layers: int) -> str:
    """How a crash message names the device: ``cpu``, or ``gpu (n_gpu_layers=N)`` when layers
    were asked for (the parent does not load llama.cpp, so it names what was asked for)."""
    return "cpu" if int(n_gpu_layers) == 0 else f"gpu (n_gpu_layers={n_gpu_layers})"


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def crash_line(rc: int, file: str, device: str, step: str, retried: bool = False) -> str:
    if rc < 0:
        how = f"crashed with {_signal_name(rc)}"
        if -rc == signal.SIGKILL:
            how += " (killed: out of memory?)"
    else:
        how = f"exited with status {rc} without an answer"
    if retried:  # the retry without weight repacking crashed too
        how += " (also with its weight repacking off)"
    retry = "try --gpu-layers 0, or run" if device != "cpu" else "run"
    return (f"{file}: the llama.cpp runtime {how} while {step} on {device}; the parent process is "
            f"intact and wrote nothing; {retry} the same command with ROPEPATCH_WORKER_LOG=1 to "
            f"see llama.cpp's log")


def _rebuild_error(payload) -> RopepatchError:
    module, cls_name, message = payload
    cls = RopepatchError
    try:
        import importlib  # noqa: PLC0415

        found = getattr(importlib.import_module(module), cls_name)
        if isinstance(found, type) and issubclass(found, RopepatchError):
            cls = found
    except Exception:  # noqa: BLE001 - fall back to the base class
        pass
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def _spawn(write_fd: int, extra_env: Mapping[str, str]) -> subprocess.Popen:
    env = {**os.environ, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        out = sys.stderr.fileno()
        os.fstat(out)
    except (AttributeError, ValueError, OSError):
        out = subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "ropepatch.runtime.worker", str(write_fd)],
        stdin=subprocess.PIPE, stdout=out, stderr=None, pass_fds=(write_fd,), env=env,
        close_fds=True,
    )


def run_isolated(job: Job, *, file: str, device: str = "cpu",
                 callbacks: Mapping[str, Callable[[Any], None]] | None = None,
                 outcome: Outcome | None = None) -> Any:
    """Run ``job`` in a runtime worker; return its result or raise its :class:`RopepatchError`.

    ``callbacks`` receive the events of the same names (every name in ``job.callbacks`` may have
    one). ``file`` and ``device`` name the model and the device in a crash message. A CPU crash
    before the first decode returned is retried once with weight repacking off (module docstring)."""
    callbacks = dict(callbacks or {})
    outcome = outcome if outcome is not None else Outcome()
    try:
        return _run_once(job, file, device, callbacks, outcome, {})
    except RuntimeCrash as crash:
        if not _repack_may_be_at_fault(crash.rc, device, outcome):
            raise
    outcome.repack_off = True
    return _run_once(job, file, device, callbacks, outcome, {NO_REPACK_ENV: "1"}, skip=outcome.results)


def _repack_may_be_at_fault(rc: int, device: str, outcome: Outcome) -> bool:
    """A CPU run killed by a fault signal before its first decode returned, repacking still on."""
    faults = {signal.SIGSEGV, signal.SIGILL, signal.SIGBUS}
    return device == "cpu" and rc < 0 and -rc in faults and not outcome.decoded and not repack_off()


def _run_once(job: Job, file: str, device: str, callbacks, outcome: Outcome, env: Mapping[str, str],
              skip: int = 0) -> Any:
    outcome.started = time.perf_counter()
    read_fd, write_fd = os.pipe()
    try:
        proc = _spawn(write_fd, env)
    except OSError as exc:
        os.close(read_fd)
        raise RopepatchError(f"{file}: cannot start the runtime worker ({exc.strerror or exc})") from None
    finally:
        os.close(write_fd)
    try:
        try:
            pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the child died at once: reported below from its exit status
        with os.fdopen(read_fd, "rb") as stream:
            return _receive(stream, proc, callbacks, outcome, file, device, skip)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def _receive(stream, proc, callbacks, outcome: Outcome, file: str, device: str, skip: int = 0) -> Any:
    while True:
        try:
            msg = pickle.load(stream)
        except EOFError:
            break
        except Exception as exc:  # noqa: BLE001 - a torn frame: the child died mid-write
            if proc.wait() != 0:
                break
            raise RopepatchError(f"{file}: garbled answer from the runtime worker ({exc})") from None
        kind = msg[0]
        if kind == "mark":
            outcome.decoded = outcome.decoded or msg[1] == DECODED
            continue
        if kind == "event":
            _, name, payload = msg
            outcome.events += 1
            if outcome.first_event_s is None:
                outcome.first_event_s = time.perf_counter() - outcome.started
            if name == STEP:
                outcome.step = str(payload)
            elif skip:  # delivered by the first try (a retry's repeat)
                skip -= 1
                continue
            else:
                outcome.results += 1
            cb = callbacks.get(name)
            if cb is not None:
                cb(payload)
            continue
        proc.wait()
        if kind == "result":
            return msg[1]
        if kind == "error":
            raise _rebuild_error(msg[1])
        raise RopepatchError(f"{file}: the runtime worker failed while {outcome.step}: {msg[1]}")
    rc = proc.wait()
    crash = RuntimeCrash(crash_line(rc, file, device, outcome.step, outcome.repack_off))
    crash.rc = rc
    raise crash
