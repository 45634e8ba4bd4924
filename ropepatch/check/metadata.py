"""Check a of ``ropepatch validate``: the file loads in llama.cpp and the runtime read what
ropepatch reads.

The runtime's training context (``llama_model_n_ctx_train``), rotary type
(``llama_model_rope_type``), ``llama_model_rope_freq_scale_train`` and the metadata strings it
read (``llama_model_meta_val_str``) for every RoPE key and every ``ropepatch.*`` scalar equal the
file's; when the file carries ropepatch provenance, the file's RoPE settings equal the recorded
plan, i.e. nobody changed them behind ropepatch's back: the entries the patch wrote
(:func:`params_to_kvs`) and those it kept (the undo record) are still there. Per-pair frequency
factors: the values of the file's ``rope_freqs.weight`` (read straight from the tensor data)
equal the plan's (or the caller's expected) factors exactly as float32, and what ropepatch's
reader returns for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ropepatch.check.expectation import Expectation
from ropepatch.check.factors import compare_factors, factor_tensor, file_factors, fmt_factors
from ropepatch.check.report import FAILED, LABEL, NAMES, PASSED, CheckResult, fmt_val, g
from ropepatch.formats.gguf import keys as K
from ropepatch.formats.gguf.header import GGUFHeader
from ropepatch.formats.gguf.keys import ValueType, k
from ropepatch.formats.gguf.params import params_to_kvs
from ropepatch.patch.gguf_record import original_kvs, read_provenance
from ropepatch.rope.methods import Plan
from ropepatch.rope.params import RopeLayout, RopeParams, ScalingType
from ropepatch.runtime import binding

# llama_rope_type (llama.h) -> layout
RUNTIME_ROPE_TYPES = {-1: "none", 0: "norm", 2: "neox", 8: "mrope", 40: "imrope", 24: "vision"}

@dataclass(frozen=True)
class RuntimeInfo:
    """What llama.cpp took from the file when loading it."""

    n_ctx_train: int
    rope_type: int
    freq_scale_train: float
    n_vocab: int
    n_params: int
    meta: Mapping[str, str | None]


def runtime_info(path: str, keys: Sequence[str], gpu_layers: int) -> RuntimeInfo:
    """Load the model in llama.cpp (no context) and read what the runtime took from the file."""
    ll = binding.llama()
    with binding.LOCK, binding.load_model(path, n_gpu_layers=gpu_layers, quiet=True) as model:
        meta = {key: binding.model_meta(model, key) for key in keys}
        vocab = ll.llama_model_get_vocab(model.ptr)
        return RuntimeInfo(
            n_ctx_train=int(ll.llama_model_n_ctx_train(model.ptr)),
            rope_type=int(ll.llama_model_rope_type(model.ptr)),
            freq_scale_train=float(ll.llama_model_rope_freq_scale_train(model.ptr)),
            n_vocab=int(ll.llama_vocab_n_tokens(vocab)),
            n_params=int(ll.llama_model_n_params(model.ptr)),
            meta=meta,
        )


def meta_str(kv) -> str | None:
    """A metadata value as llama.cpp's gguf_kv_to_str prints it (std::to_string: "%f" for
    floats, decimal for ints, "true"/"false"); None for arrays (the runtime skips them)."""
    t, v = kv.type, kv.value
    if t == ValueType.STRING:
        return v
    if t == ValueType.BOOL:
        return "true" if v else "false"
    if t in (ValueType.FLOAT32, ValueType.FLOAT64):
        return f"{float(v):f}"
    if t == ValueType.ARRAY:
        return None
    return str(int(v))


def metadata_keys(header: GGUFHeader, arch: str) -> list[str]:
    """The keys check a reads back: the architecture, every RoPE key, every ropepatch scalar."""
    arch_keys = [k(t, arch) for t in (
        K.CONTEXT_LENGTH, K.ROPE_DIMENSION_COUNT, K.ROPE_FREQ_BASE, K.ROPE_SCALE_LINEAR, K.ROPE_SCALING_TYPE,
        K.ROPE_SCALING_FACTOR, K.ROPE_SCALING_ORIG_CTX, K.ROPE_SCALING_ATTN_FACTOR, K.ROPE_SCALING_FINETUNED,
    )]
    rp_keys = [kv.key for kv in header.kvs if kv.key.startswith(K.RP_PREFIX) and kv.type != ValueType.ARRAY
               and kv.key != K.RP_ORIGINAL]
    return [K.GENERAL_ARCHITECTURE, *arch_keys, *rp_keys, K.RP_ORIGINAL]


def _f32(x) -> float:
    return float(np.float32(x))


def params_diff(file_p: RopeParams, plan_p: RopeParams) -> list[tuple[str, object, object]]:
    """Fields where the file's parameters differ from the plan's (floats compared as float32,
    the type they are stored in): [(field, file value, plan value)]."""
    diffs = []
    for f in ("n_ctx_train", "rope_dim", "scaling_type", "orig_ctx", "layout", "has_freq_factors"):
        a, b = getattr(file_p, f), getattr(plan_p, f)
        if a != b:
            diffs.append((f, a, b))
    for f in ("freq_base", "attn_factor"):
        a, b = getattr(file_p, f), getattr(plan_p, f)
        if _f32(a) != _f32(b):
            diffs.append((f, a, b))
    if file_p.scaling_type != ScalingType.NONE or plan_p.scaling_type != ScalingType.NONE:
        a, b = file_p.scaling_factor, plan_p.scaling_factor
        if _f32(a) != _f32(b):
            diffs.append(("scaling_factor", a, b))
    return diffs


def _layout_name(layout) -> str:
    return layout.value if isinstance(layout, RopeLayout) else str(layout)


def _shown(key: str, value: str | None) -> str | None:
    """The undo record is long: the report shows its length only."""
    return value if key != K.RP_ORIGINAL or value is None else f"<{len(value)} chars>"


def _metadata_problems(header: GGUFHeader, rt: RuntimeInfo, keys: Sequence[str], problems: list[str]) -> dict:
    """Compare the runtime's metadata strings with the file's; return the figures."""
    meta_fig: dict[str, dict] = {}
    for key in keys:
        kv = header.entry(key)
        want = None if kv is None else meta_str(kv)
        got = rt.meta.get(key)
        meta_fig[key] = {"file": _shown(key, want), "runtime": _shown(key, got)}
        if got != want:
            problems.append(f"runtime reads {key} = {got!r}, the file has {want!r}")
    return meta_fig


def _runtime_problems(exp: Expectation, rt: RuntimeInfo, problems: list[str]) -> dict:
    """Compare the runtime's context, rotary type and freq_scale_train with the file and the
    expected layout; return the figures."""
    cur = exp.current
    if rt.n_ctx_train != cur.n_ctx_train:
        problems.append(f"runtime n_ctx_train {rt.n_ctx_train} != file context_length {cur.n_ctx_train}")
    rt_layout = RUNTIME_ROPE_TYPES.get(rt.rope_type, str(rt.rope_type))
    want_layout = _layout_name(exp.params.layout)
    if rt_layout != want_layout:
        problems.append(f"runtime rope type {rt_layout.upper()} ({rt.rope_type}), {LABEL[exp.source]} expects "
                        f"{want_layout.upper()}")
    fac = np.float32(cur.scaling_factor or 0.0)
    want_fst = 1.0 if fac == 0 else float(np.float32(1) / fac)
    if np.float32(rt.freq_scale_train) != np.float32(want_fst):
        problems.append(f"runtime freq_scale_train {g(rt.freq_scale_train)} != 1/{fmt_val(cur.scaling_factor)} "
                        f"from the file")
    return {
        "n_ctx_train": {"runtime": rt.n_ctx_train, "file": cur.n_ctx_train},
        "rope_type": {"runtime": rt_layout, "expected": want_layout},
        "freq_scale_train": {"runtime": rt.freq_scale_train, "file": want_fst},
    }


def _same(t: ValueType | None, a, b) -> bool:
    """Two metadata values (None: absent) equal as the file stores them (floats as float32)."""
    if a is None or b is None:
        return a is None and b is None
    if t in (ValueType.FLOAT32, ValueType.FLOAT64):
        return np.float32(a) == np.float32(b)
    return a == b


def plan_drift(header: GGUFHeader, plan: Plan) -> list[tuple[str, object, object]]:
    """The RoPE entries the recorded patch left that the file no longer holds: [(key, file
    value, plan value)], None for an absent entry. The patch wrote :func:`params_to_kvs` of
    the plan over the original entries (:func:`original_kvs`, from the undo record); the
    touched keys (:data:`keys.TOUCHED_KEYS`) it did not write kept their original state."""
    left = {kv.key: (kv.type, kv.value) for kv in original_kvs(header, read_provenance(header))}
    left.update(params_to_kvs(plan))
    drift = []
    for template in K.TOUCHED_KEYS + K.LAZY_TOUCHED_KEYS:
        key = k(template, plan.target.arch)
        t, v = left.get(key, (None, None))
        kv = header.entry(key)
        got = None if kv is None else kv.value
        if not _same(t, got, v):
            drift.append((key, got, v))
    return drift


def _shown_value(v) -> str:
    return "absent" if v is None else fmt_val(v)


def _plan_problems(exp: Expectation, header: GGUFHeader, problems: list[str]) -> bool | None:
    """Compare the file with the recorded plan (and the caller's expectation); return whether
    the file matches the plan (None without one)."""
    consistent = None
    if exp.plan_problem:
        problems.append(exp.plan_problem)
    elif exp.plan is not None:
        diffs = plan_drift(header, exp.plan)
        if diffs:
            parts = [f"{key} is {_shown_value(a)} in the file, the recorded plan gives {_shown_value(b)}"
                     for key, a, b in diffs]
            p = exp.provenance
            problems.append("changed behind ropepatch's back: " + "; ".join(parts)
                            + f" (plan: {p['method']} to {p['ctx']}, alpha {g(p['alpha'])})")
        consistent = not diffs
    if exp.source == "expected":
        for f, a, b in params_diff(exp.current, exp.params):
            if f != "layout":  # the layout is checked against the runtime's rope type
                problems.append(f"file {f} {fmt_val(a)} != expected {fmt_val(b)}")
    return consistent


def _factor_problems(exp: Expectation, header: GGUFHeader, problems: list[str]) -> dict | None:
    """Compare the file's rope_freqs values with what ropepatch's reader returns and with the
    recorded plan's (or the caller's expected) factors; return the figures, None when neither
    the file nor the expectation has factors."""
    values, why = file_factors(header.path, header)
    if why:
        problems.append(f"file {why}")
    file_ff = values or ()
    want = exp.factors
    if not file_ff and not want and not why:
        return None
    fig: dict = {"tensor": factor_tensor(header), "file": list(file_ff), "expected_source": exp.source}
    reader = tuple(exp.current.freq_factors)
    if values is not None and reader and compare_factors(reader, file_ff).problem:
        problems.append(f"ropepatch reads {factor_tensor(header)} as {fmt_factors(reader)}, the tensor holds "
                        f"{fmt_factors(file_ff)}")
    if want is None:  # longrope: the expectation has factor tensors whose values are not read
        fig.update(expected=None, same=None, max_rel_diff=None)
        return fig
    cmp = compare_factors(file_ff, want, "the file", LABEL[exp.source])
    fig.update(expected=list(want), same=cmp.same, max_rel_diff=cmp.max_rel)
    if not cmp.same:
        where = "changed behind ropepatch's back: " if exp.source == "plan" else ""
        problems.append(f"{where}{factor_tensor(header)}: {cmp.problem}")
    return fig


def check_metadata(exp: Expectation, header: GGUFHeader, rt: RuntimeInfo, keys: Sequence[str],
                   t0: float) -> CheckResult:
    """Check a, once the runtime loaded the file (``rt``); ``t0``: when the check began."""
    problems: list[str] = []
    meta_fig = _metadata_problems(header, rt, keys, problems)
    figs = _runtime_problems(exp, rt, problems)
    consistent = _plan_problems(exp, header, problems)
    ff_fig = _factor_problems(exp, header, problems)
    if ff_fig is not None:
        figs["freq_factors"] = ff_fig
        if consistent and exp.source == "plan" and ff_fig["same"] is False:
            consistent = False
    figs.update({"metadata": meta_fig, "plan_consistent": consistent, "n_params": rt.n_params})
    return CheckResult("a", NAMES["a"], FAILED if problems else PASSED, "; ".join(problems), figs,
                       time.perf_counter() - t0)
