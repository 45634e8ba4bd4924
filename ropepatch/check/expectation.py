"""What ``ropepatch validate`` expects the runtime to do with a file.

The expected parameters: ``inspect_gguf(path).current`` (what the file says, as ropepatch reads
it); when the file carries ropepatch provenance, the recorded plan's target
(``make_plan(original, ctx, method, alpha).target``: what the user asked for); a caller's
overrides (``expect``) replace either. Their ROPE op parameters (:func:`ggml_rope_args`) and their
per-pair frequency factors (:attr:`Expectation.factors`) are what checks b-d compare the runtime
with. Pure Python: reads the header, never loads the runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ropepatch.check.factors import factors_of, file_factors
from ropepatch.check.ggml_args import ggml_rope_args
from ropepatch.check.report import g
from ropepatch.errors import RopepatchError, UnsupportedModelError, UsageError
from ropepatch.formats.gguf.header import read_header
from ropepatch.patch.gguf import ModelInfo, inspect_gguf
from ropepatch.rope.methods import Plan, alpha_for, make_plan
from ropepatch.rope.params import RopeLayout, RopeParams, ScalingType
from ropepatch.rope.serialize import jsonable


@dataclass(frozen=True)
class Expectation:
    """The file as ropepatch reads it, and what the runtime should apply."""

    current: RopeParams  # the file's settings now
    original_ctx: int  # L: the training context before any extension
    target_ctx: int  # the probes reach position target_ctx - 1
    provenance: Mapping[str, object] | None  # {method, ctx, alpha, version} or None
    plan: Plan | None  # the recorded plan, when it could be rebuilt
    plan_problem: str  # why the recorded plan could not be rebuilt ("" if it could)
    params: RopeParams  # the expected parameters
    source: str  # "plan", "file" or "expected"
    op: Mapping[str, object] | None  # ggml_rope_args(params), None when there is no reference
    op_problem: str  # why op is None
    file_op: Mapping[str, object] | None  # ggml_rope_args(current), None when there is none
    notes: tuple[str, ...] = ()
    # the per-pair divisors the runtime should apply (factors_of(params)): () none, the values,
    # None when the file's factor tensors are not read by ropepatch (longrope): use the runtime's
    factors: tuple[float, ...] | None = ()

    @property
    def arch(self) -> str:
        return self.current.arch

    @property
    def plan_target(self) -> RopeParams | None:
        """The recorded plan's target (what the user asked for), None without one."""
        return None if self.plan is None else self.plan.target

    @property
    def params_dict(self) -> dict:
        """The expected parameters as JSON values, with their ``freq_scale``."""
        d = jsonable(asdict(self.params))
        d["freq_scale"] = self.params.freq_scale
        return d


def read_model(path: str) -> ModelInfo:
    """The file as ropepatch reads it (raises a one-line :class:`RopepatchError`)."""
    return inspect_gguf(path)


def _recorded_plan(info: ModelInfo, ctx: int | None, notes: list[str]):
    """(provenance dict, plan, problem) for a file ropepatch patched; (None, None, "") for one
    it did not."""
    prov = info.provenance
    if prov is None:
        return None, None, ""
    prov_d = {"method": prov.method, "ctx": prov.ctx, "alpha": prov.alpha, "version": prov.version}
    plan, problem = None, ""
    try:
        try:
            alpha = alpha_for(prov.method, prov.alpha)
            plan = make_plan(info.original, prov.ctx, prov.method, alpha, prov.replace_scaling, options=prov.options)
        except UnsupportedModelError:
            plan = make_plan(info.original, prov.ctx, prov.method, alpha, replace_scaling=True, options=prov.options)
            notes.append("the recorded plan replaces the model's own scaling (--replace-scaling)")
    except RopepatchError as exc:
        problem = (f"the recorded plan (method {prov.method!r}, ctx {prov.ctx}, alpha {g(prov.alpha)}) "
                   f"cannot be rebuilt: {exc}")
    if ctx is not None and prov.ctx and int(ctx) != prov.ctx:
        notes.append(f"--ctx {ctx} differs from the ctx ropepatch patched the file for ({prov.ctx})")
    return prov_d, plan, problem


def with_overrides(params: RopeParams, expect: Mapping[str, object]) -> RopeParams:
    """``params`` with the caller's overrides (field names of :class:`RopeParams`)."""
    fields = RopeParams.__dataclass_fields__
    bad = [kk for kk in expect if kk not in fields]
    if bad:
        raise UsageError(f"validate: unknown expected field(s) {bad}; fields: {list(fields)}")
    ov = dict(expect)
    if "layout" in ov:
        ov["layout"] = RopeLayout(ov["layout"])
    if "scaling_type" in ov:
        ov["scaling_type"] = ScalingType(ov["scaling_type"])
    if "freq_factors" in ov:  # a list of divisors (float32 values); [] = none
        ov["freq_factors"] = tuple(float(np.float32(v)) for v in (ov["freq_factors"] or ()))
        ov.setdefault("has_freq_factors", bool(ov["freq_factors"]))
    return params.with_(**ov)


def rope_op(params: RopeParams) -> tuple[dict | None, str]:
    """(ggml_rope_args(params), "") or (None, why there is no reference rotary)."""
    try:
        return ggml_rope_args(params), ""
    except RopepatchError as exc:
        return None, f"no reference rotary for this model: {exc}"


WARN = "WARN: "  # a note that format_report shows as a warning line


def unextended_warning(path: str, ctx: int, file_ctx: int) -> str:
    """The warning for validating past the file's own context length: the checks can pass (the
    runtime applies exactly what the file says) while nothing extends the model to ``ctx``."""
    return (f"{WARN}--ctx {ctx} is beyond the file's context_length {file_ctx}: nothing in the file extends "
            f"the model to {ctx} tokens (runtimes cap the context at {file_ctx}, or run past it unscaled); "
            f"extend it first: ropepatch gguf {path} --ctx {ctx}")


def current_params(info: ModelInfo) -> RopeParams:
    """The file's parameters, with the values of its ``rope_freqs.weight`` when the reader left
    them out (read straight from the tensor; unreadable values stay out)."""
    cur = info.current
    if cur.has_freq_factors and not cur.freq_factors:
        values, _ = file_factors(info.path, read_header(info.path))
        if values:
            cur = cur.with_(freq_factors=values)
    return cur


def expectation(info: ModelInfo, ctx: int | None, expect: Mapping[str, object] | None) -> Expectation:
    """What to expect of the runtime for the file ``info`` describes, validated to ``ctx``
    (default: the file's context length) with the caller's overrides ``expect``."""
    cur = current_params(info)
    notes: list[str] = []
    prov_d, plan, plan_problem = _recorded_plan(info, ctx, notes)
    if ctx is not None and int(ctx) > cur.n_ctx_train:
        notes.append(unextended_warning(info.path, int(ctx), cur.n_ctx_train))
    params = plan.target if plan is not None else cur
    source = "plan" if plan is not None else "file"
    if expect:
        params, source = with_overrides(params, expect), "expected"
    op, op_problem = rope_op(params)
    return Expectation(
        current=cur, original_ctx=info.original.n_ctx_train,
        target_ctx=int(ctx) if ctx is not None else cur.n_ctx_train, provenance=prov_d,
        plan=plan, plan_problem=plan_problem, params=params, source=source, op=op,
        op_problem=op_problem, file_op=rope_op(cur)[0], notes=tuple(notes), factors=factors_of(params),
    )
