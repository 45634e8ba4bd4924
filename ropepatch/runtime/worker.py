"""The runtime worker: ``python -m ropepatch.runtime.worker FD`` (started by
:func:`ropepatch.runtime.isolate.run_isolated`, never by hand).

It imports ``llama_cpp`` FIRST -- before numpy, hashlib or any ropepatch module that pulls them
in -- the import order of the processes that load models fine on a CUDA build. Then it reads one
pickled job from stdin, runs it, and streams pickled events and the result to file descriptor
FD. llama.cpp's log is hidden by the binding (:func:`ropepatch.runtime.binding.quiet_log`)
unless ``ROPEPATCH_WORKER_LOG=1``.

Test hook (tests/runtime, tools): ``ROPEPATCH_WORKER_CRASH=SIGNAL[:N]`` makes the worker send
itself SIGNAL (e.g. ``SEGV``) right after its Nth event (default 0: before the job starts), so a
test can kill a real run at a chosen step. Unset, it costs one environment lookup per event.
"""

try:  # before anything else: see the module docstring
    import llama_cpp  # noqa: F401
except Exception:  # noqa: BLE001 - the job reports a missing runtime with an install hint
    pass

import os  # noqa: E402
import pickle  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402


def _crash_hook() -> tuple[int, int] | None:
    spec = os.environ.get("ROPEPATCH_WORKER_CRASH")
    if not spec:
        return None
    name, _, n = spec.partition(":")
    sig = getattr(signal, "SIG" + name.upper().removeprefix("SIG"))
    return int(sig), int(n or 0)


class _Channel:
    """Pickled frames to the parent; the crash hook counts them."""

    def __init__(self, fd: int):
        self.stream = os.fdopen(fd, "wb")
        self.count = 0
        self.hook = _crash_hook()
        self._maybe_crash()

    def _maybe_crash(self) -> None:
        if self.hook and self.count == self.hook[1]:
            self.stream.flush()
            os.kill(os.getpid(), self.hook[0])

    def send(self, *msg) -> None:
        pickle.dump(msg, self.stream, protocol=pickle.HIGHEST_PROTOCOL)
        self.stream.flush()
        if msg[0] == "event":
            self.count += 1
            self._maybe_crash()

    def mark(self, name: str) -> None:
        """An internal event for the runner (not a callback's, not counted by the crash hook)."""
        pickle.dump(("mark", name), self.stream, protocol=pickle.HIGHEST_PROTOCOL)
        self.stream.flush()

    def sender(self, name: str):
        return lambda payload=None: self.send("event", name, payload)


def _run(chan: _Channel) -> None:
    import importlib  # noqa: PLC0415

    from ropepatch.errors import RopepatchError  # noqa: PLC0415
    from ropepatch.runtime.binding import DECODED, on_first_decode  # noqa: PLC0415

    job = pickle.load(sys.stdin.buffer)
    on_first_decode(lambda: chan.mark(DECODED))
    module, _, func = job.target.partition(":")
    kwargs = dict(job.kwargs)
    for name in job.callbacks:
        kwargs[name] = chan.sender(name)
    try:
        result = getattr(importlib.import_module(module), func)(*job.args, **kwargs)
    except RopepatchError as exc:
        chan.send("error", (type(exc).__module__, type(exc).__qualname__, str(exc)))
        return
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - one line for the parent
        import traceback  # noqa: PLC0415

        if os.environ.get("ROPEPATCH_WORKER_LOG"):
            traceback.print_exc()
        chan.send("failure", f"{type(exc).__name__}: {exc}")
        return
    chan.send("result", result)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chan = _Channel(int(argv[0]))
    try:
        _run(chan)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the parent is gone
        return 1
    finally:
        try:
            chan.stream.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
