"""The GGUF kill harness's oracle for a file that is neither the original nor the
uninterrupted result (and for each distinct result once): is it a complete, valid result of
the command? Header, plan, provenance, revert, and a llama-cpp-python load."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from crash_common import sha256

_llama_lock = threading.Lock()
_valid_cache: dict[tuple, str | None] = {}


def _f32(x: float) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<f", x))[0]


def validate(path: str, expect: tuple, pristine: str, use_llama: bool = True) -> str | None:
    """None when ``path`` is a complete, valid result of ``expect``; else what is wrong."""
    key = (sha256(path), expect, pristine, use_llama)
    if key in _valid_cache:
        return _valid_cache[key]
    with tempfile.TemporaryDirectory() as d:  # a copy: the file itself may be locked right now
        copy = os.path.join(d, "model.gguf")
        shutil.copyfile(path, copy)
        problem = _validate(copy, expect, pristine, use_llama)
    _valid_cache[key] = problem = problem and problem.replace(copy, path)
    return problem


def _validate(path: str, expect: tuple, pristine: str, use_llama: bool) -> str | None:
    from ropepatch.errors import RopepatchError
    from ropepatch.formats.gguf.header import read_header
    from ropepatch.patch import gguf as gp
    from ropepatch.rope.methods import make_plan

    try:
        read_header(path)
        info = gp.inspect_gguf(path)
    except RopepatchError as e:
        return f"unreadable: {e}"
    if expect[0] == "pristine":
        if sha256(path) != sha256(pristine):
            return "not the pristine bytes"
        target_ctx, target = info.current.n_ctx_train, info.current
    else:
        _, ctx, method, record, *rest = expect  # rest: (alpha, options as (name, value) pairs)
        orig = gp.inspect_gguf(pristine).original
        plan = make_plan(orig, ctx, method, *rest[:1], options=dict(rest[1]) if len(rest) > 1 else None)
        t, c = plan.target, info.current
        if t.freq_factors != c.freq_factors:
            return f"rope_freqs {c.freq_factors} != plan {t.freq_factors}"
        want = (t.n_ctx_train, _f32(t.freq_base), t.scaling_type, _f32(t.scaling_factor) if t.scaling_factor else 0.0,
                t.orig_ctx, _f32(t.attn_factor))
        got = (c.n_ctx_train, _f32(c.freq_base), c.scaling_type, _f32(c.scaling_factor) if c.scaling_factor else 0.0,
               c.orig_ctx, _f32(c.attn_factor))
        if want != got:
            return f"values {got} != plan {want}"
        if record:
            if info.provenance is None or info.provenance.method != method or info.provenance.ctx != ctx:
                return f"provenance {info.provenance} does not name {method} {ctx}"
            with tempfile.TemporaryDirectory() as d:
                back = os.path.join(d, "back.gguf")
                try:
                    gp.revert_gguf(path, out=back)
                except RopepatchError as e:
                    return f"revert fails: {e}"
                if sha256(back) != sha256(pristine):
                    return "revert does not give the original sha256"
        elif info.provenance is not None:
            return "unexpected provenance"
        target_ctx, target = ctx, t
    if use_llama:
        problem = _llama_check(path, target_ctx, target)
        if problem:
            return problem
    return None


def _llama_check(path: str, ctx: int, target) -> str | None:
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - the test extra installs it
        return None
    with _llama_lock:
        try:
            llm = llama_cpp.Llama(model_path=path, n_ctx=64, verbose=False)
        except Exception as e:  # noqa: BLE001 - any load failure is the finding
            return f"llama-cpp-python cannot load it: {e}"
        try:
            n_train = llama_cpp.llama_model_n_ctx_train(llm.model)
            meta = dict(llm.metadata)
        finally:
            llm.close()
    if n_train != ctx:
        return f"llama.cpp reads n_ctx_train {n_train}, expected {ctx}"
    arch = target.arch
    base = float(meta.get(f"{arch}.rope.freq_base", "10000"))
    if abs(base - _f32(target.freq_base)) > 1e-3 * base:
        return f"llama.cpp reads freq_base {base}, expected {_f32(target.freq_base)}"
    stype = meta.get(f"{arch}.rope.scaling.type", "none")
    if target.scaling_type.value not in ("none",) and stype != target.scaling_type.value:
        return f"llama.cpp reads scaling type {stype}, expected {target.scaling_type.value}"
    return None
