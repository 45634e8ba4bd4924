"""The one llama.cpp binding: import, backend init, lock, log control, gpu-layers mapping,
thread policy and model loading. Every other runtime module goes through these names; no
other module in ropepatch imports ``llama_cpp``.

The load follows the path llama-cpp-python's own high-level ``Llama`` takes, which is the path
measured to work on a CUDA build (``../shared/gpu/README.md``): ``llama_cpp`` imported before
numpy-heavy modules (the runtime worker imports it first thing, see :mod:`.worker`), one
``llama_backend_init`` per process, model params from ``llama_model_default_params`` with an
explicit load mode (mmap, as ``Llama(use_mmap=True)``) and ``n_gpu_layers=-1`` mapped to INT32_MAX
("all layers", as ``Llama`` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from typing import Iterator, Mapping

from ropepatch.errors import FormatError, RopepatchError, UsageError
from ropepatch.safeio.paths import regular_input

INSTALL_HINT = "pip install 'ropepatch[validate]' (builds llama-cpp-python; needs a C/C++ compiler)"
INT32_MAX = 0x7FFFFFFF  # n_gpu_layers: llama.cpp clamps it to the model's layer count
SHOW_LOG_ENV = "ROPEPATCH_WORKER_LOG"  # set: llama.cpp's log is shown even when quiet
# 1: load without llama.cpp's extra CPU buffer types (weight repacking for AMX / AVX-512 / AVX2
# kernels), as llama-server --no-repack; 0: with them. Unset: off on a CPU with AMX, on elsewhere.
# llama.cpp's AMX kernels crash at the first decode on some hosts (llama.cpp issue #20824, PR
# #26954 open): measured 2026-12-02 on a Xeon VM with amx_int8, SmolLM2 Q4_1 and the Q8_0
# fixtures SIGSEGV with them and run without. The isolated runner also retries once with 1 when
# a first CPU try crashes before its first decode returns (:mod:`.isolate`).
NO_REPACK_ENV = "ROPEPATCH_NO_REPACK"
DECODED = "decoded"  # the worker's mark once this process's first llama_decode has returned
LOCK = threading.RLock()  # llama_backend_init, the log level and the eval callback are process-global
_state: dict[str, object] = {}


class RuntimeUnavailable(RopepatchError):
    """llama-cpp-python is not installed, or its shared libraries cannot be loaded."""


def llama():
    """The ``llama_cpp`` module, imported once, with ``llama_backend_init`` called once."""
    mod = _state.get("llama")
    if mod is None:
        with LOCK:
            if "llama" not in _state:
                try:
                    import llama_cpp  # noqa: PLC0415 - optional dependency
                except Exception as exc:  # ImportError, or OSError from a broken build
                    raise RuntimeUnavailable(
                        f"llama-cpp-python is not usable ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
                    ) from None
                llama_cpp.llama_backend_init()
                _state["llama"] = llama_cpp
            mod = _state["llama"]
    return mod


def version() -> str:
    """llama-cpp-python's version, or why it is unavailable."""
    try:
        return str(getattr(llama(), "__version__", "?"))
    except RuntimeUnavailable as exc:
        return f"unavailable ({exc})"


def gpu_layers(n: int) -> int:
    """The ``n_gpu_layers`` value for llama.cpp: -1 means all layers (INT32_MAX, as
    llama-cpp-python's ``Llama`` maps it); 0 = CPU only; N = the first N layers."""
    n = int(n)
    if n < -1:
        raise UsageError(f"--gpu-layers must be -1 (all) or >= 0, found {n}")
    return INT32_MAX if n == -1 else n


def gpu_available() -> bool:
    """True when the llama.cpp build can offload to a GPU (``llama_supports_gpu_offload``)."""
    try:
        return bool(llama().llama_supports_gpu_offload())
    except RuntimeUnavailable:
        return False


def default_threads() -> int:
    """Threads for llama.cpp: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def quiet_log(quiet: bool = True) -> Iterator[None]:
    """llama-cpp-python prints llama.cpp's log when its logger's level allows; while ``quiet``,
    raise the level above everything (0.3.36 maps ggml WARN to ERROR), then restore it.
    ``ROPEPATCH_WORKER_LOG=1`` in the environment shows the log anyway (for crash reports)."""
    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    if quiet and not os.environ.get(SHOW_LOG_ENV):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _kv_override_array(ll, kv_overrides: Mapping[str, object]):
    """A NULL-key-terminated ``llama_model_kv_override`` array (keep it alive while loading)."""
    arr = (ll.llama_model_kv_override * (len(kv_overrides) + 1))()
    for i, (key, val) in enumerate(kv_overrides.items()):
        kb = str(key).encode()
        if len(kb) >= 128:
            raise UsageError(f"kv override key too long (max 127 bytes): {key}")
        arr[i].key = kb
        if isinstance(val, bool):
            arr[i].tag, arr[i].value.val_bool = ll.LLAMA_KV_OVERRIDE_TYPE_BOOL, val
        elif isinstance(val, int):
            arr[i].tag, arr[i].value.val_i64 = ll.LLAMA_KV_OVERRIDE_TYPE_INT, val
        elif isinstance(val, float):
            arr[i].tag, arr[i].value.val_f64 = ll.LLAMA_KV_OVERRIDE_TYPE_FLOAT, val
        elif isinstance(val, str):
            vb = val.encode()
            if len(vb) >= 128:
                raise UsageError(f"kv override {key}: string value too long (max 127 bytes)")
            arr[i].tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = vb
        else:
            raise UsageError(f"kv override {key}: unsupported value type {type(val).__name__}")
    arr[len(kv_overrides)].key = b""  # sentinel
    return arr


class LoadedModel:
    """A ``llama_model *`` and what must stay alive with it; :meth:`close` frees it once."""

    def __init__(self, path: str, ptr, keepalive: tuple = ()):
        self.path, self.ptr, self._keepalive = path, ptr, keepalive

    def close(self) -> None:
        if self.ptr:
            llama().llama_model_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def on_first_decode(hook) -> None:
    """Call ``hook()`` once, after the first ``llama_decode`` of this process returns (the
    runtime worker tells its parent, which retries a crash before it without repacking)."""
    _state["first_decode_hook"] = hook


def decoded() -> None:
    """Every successful ``llama_decode`` calls this (session and probe): runs the hook once."""
    hook = _state.pop("first_decode_hook", None)
    if hook is not None:
        hook()


def repack_off() -> bool:
    """Is llama.cpp's CPU weight repacking off: ``ROPEPATCH_NO_REPACK`` 1 / 0, else on AMX CPUs."""
    value = os.environ.get(NO_REPACK_ENV, "").strip()
    if value:
        return value != "0"
    return cpu_has_amx()


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Does /proc/cpuinfo list ``amx_tile`` (False where it cannot be read: not Linux)?"""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def load_model(path: str | os.PathLike, *, n_gpu_layers: int = 0,
               kv_overrides: Mapping[str, object] | None = None, quiet: bool = True) -> LoadedModel:
    """Load a GGUF's weights and vocabulary (no context): the one place ropepatch calls
    ``llama_model_load_from_file``. Raises a one-line :class:`RopepatchError` on failure."""
    ll = llama()
    path = str(path)
    regular_input(path, "GGUF file")  # missing, a FIFO, a device, a directory, ELOOP ...: one line
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = gpu_layers(n_gpu_layers)
    # explicit, as llama-cpp-python's Llama sets them: split by layer, GPU 0, mmap
    mp.split_mode, mp.main_gpu = ll.LLAMA_SPLIT_MODE_LAYER, 0
    if hasattr(ll, "LLAMA_LOAD_MODE_MMAP") and hasattr(mp, "load_mode"):
        mp.load_mode = ll.LLAMA_LOAD_MODE_MMAP
    if repack_off() and hasattr(mp, "use_extra_bufts"):
        mp.use_extra_bufts = False
    keep: tuple = ()
    if kv_overrides:
        arr = _kv_override_array(ll, kv_overrides)
        mp.kv_overrides = arr
        keep = (arr,)
    with LOCK, quiet_log(quiet):
        ptr = ll.llama_model_load_from_file(path.encode(), mp)
    if not ptr:
        raise FormatError(f"{path}: llama.cpp could not load the model (see its log above)")
    return LoadedModel(path, ptr, keep)


def model_meta(model: LoadedModel, key: str) -> str | None:
    """A metadata value as llama.cpp holds it (``llama_model_meta_val_str``), None if absent."""
    ll = llama()
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = int(ll.llama_model_meta_val_str(model.ptr, key.encode(), buf, size))
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1
