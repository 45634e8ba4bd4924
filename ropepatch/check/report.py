"""What ``ropepatch validate`` reports: one :class:`CheckResult` per check, the
:class:`ValidationReport` holding them, its JSON form (``to_dict``/``to_json``, through
:func:`ropepatch.rope.serialize.jsonable`) and its human form (:func:`format_report`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Mapping

from ropepatch.rope.serialize import jsonable

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

#: how a report names the source of the expected parameters
LABEL = {"plan": "the recorded plan", "file": "the file", "expected": "the caller's expectation"}

#: the checks, in the order they run
NAMES = {
    "a": "file loads; runtime metadata = file",
    "b": "applied ROPE params = plan",
    "c": "reference rotary = runtime rotary",
    "d": "reference forward = runtime logits",
}


@dataclass(frozen=True)
class CheckResult:
    """One check: ``status`` is "passed", "failed" or "skipped"; ``reason`` is one line
    (empty when passed); ``figures`` the measured numbers (JSON-able)."""

    id: str  # "a", "b", "c", "d"
    name: str
    status: str
    reason: str = ""
    figures: Mapping[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


def skipped(cid: str, reason: str) -> CheckResult:
    """Check ``cid`` skipped for ``reason``."""
    return CheckResult(cid, NAMES[cid], SKIPPED, reason)


def amended(check: CheckResult, problem: str) -> CheckResult:
    """``check`` failed, with ``problem`` appended to its reason."""
    reason = f"{check.reason}; {problem}" if check.reason else problem
    return CheckResult(check.id, check.name, FAILED, reason, check.figures, check.seconds)


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`ropepatch.check.validate.validate`. ``passed`` is True when no
    check failed (skipped checks do not fail the report). ``crash`` is the one-line message
    when the runtime died while validating in a worker process (None otherwise)."""

    path: str
    arch: str
    ctx: int  # the target context: probes reach position ctx - 1
    original_ctx: int  # L: the model's training context before any extension
    provenance: Mapping[str, object] | None  # {method, ctx, alpha, version} or None
    expected_source: str  # "plan" (recorded by ropepatch), "file", or "expected" (caller's override)
    expected: Mapping[str, object]  # the expected RopeParams, as a dict
    expected_op: Mapping[str, object] | None  # ggml_rope_args(expected)
    device: str  # "cpu" or "gpu (n_gpu_layers=N)"
    gpu_layers: int
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    versions: Mapping[str, str] = field(default_factory=dict)
    crash: str | None = None

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.failed)

    def check(self, check_id: str) -> CheckResult:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_dict(self) -> dict:
        d = jsonable(asdict(self))
        d["passed"] = self.passed
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ---- human output ------------------------------------------------------------------------------


def g(x) -> str:
    """A float with 9 significant digits (every float32 round-trips)."""
    return f"{float(x):.9g}"


def fmt_val(v) -> str:
    """A parameter value for a one-line reason: enums by value, floats by :func:`g`."""
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, float):
        return g(v)
    return str(v)


def mode_name(mode: int) -> str:
    """ggml's ROPE mode as a word (NORM, NEOX), else the number."""
    return {0: "NORM", 2: "NEOX"}.get(int(mode), str(mode))


def _summary_a(f) -> str:
    ff = f.get("freq_factors")
    return (f"n_ctx_train {f['n_ctx_train']['runtime']}, rope type {str(f['rope_type']['runtime']).upper()}, "
            f"{len(f['metadata'])} keys read back"
            + ("" if not ff else f", {ff.get('tensor', 'rope_freqs.weight')}: {len(ff['file'])} factors"
               + ("" if ff["expected"] is None else f" = {LABEL[ff['expected_source']]}'s"))
            + ("" if f.get("plan_consistent") is None else
               f", file {'matches' if f['plan_consistent'] else 'differs from'} the recorded plan"))


def _summary_b(f) -> str:
    e = f["expected"]
    ff = f.get("freq_factors") or {}
    if ff.get("expected"):
        fac = f", freq factors = expected ({len(ff['expected'])}, max rel diff {ff['max_rel_diff']:.2g})"
    elif ff.get("judged") is False:
        fac = ", freq factors: the runtime's own (not read by ropepatch)"
    else:
        fac = ""
    return (f"{f['n_captures']} ROPE ops: n_dims {e['n_dims']} {mode_name(e['mode'])} base {g(e['freq_base'])} "
            f"scale {g(e['freq_scale'])} ext {g(e['ext_factor'])} attn {g(e['attn_factor'])} "
            f"n_ctx_orig {e['n_ctx_orig']}{fac}")


def _summary_c(f) -> str:
    if not f.get("f64"):
        return ""
    pos = ", ".join(f"{lo}..{hi}" for lo, hi in f["positions"])
    r64, r32 = f["f64"], f["f32"]
    return (f"positions {pos}: max abs {r64['max_abs']:.2g}, max rel {r64['max_rel']:.2g} "
            f"(float64 rotary, tol rel <= {r64['tol_rel_max']:.2g}); float32 recipe max rel "
            f"{r32['max_rel']:.2g} (tol {r32['tol_rel_max']:.2g})")


def _summary_d(f) -> str:
    t = f["tolerance"]
    return (f"{f['tokens']} tokens at {f['positions'][0]}..{f['positions'][1]}: max abs {f['max_abs']:.2g} "
            f"(tol {t['max_abs']:g}), top-1 {f['top1_agreement']:.3f}, KL mean {f['kl_mean']:.2g} "
            f"max {f['kl_max']:.2g} ({f['tolerance_class']} tolerances)")


_SUMMARIES = {"a": _summary_a, "b": _summary_b, "c": _summary_c, "d": _summary_d}


def summary(c: CheckResult) -> str:
    """The figures of a passed check in one line ("" when it has none)."""
    if not c.figures or c.id not in _SUMMARIES:
        return ""
    return _SUMMARIES[c.id](c.figures)


def format_report(report: ValidationReport) -> str:
    """The human-readable report: one line per check (PASS / FAIL / SKIP, figures or reason)."""
    lines = [f"{report.path}: {report.arch}, validating to ctx {report.ctx} (original {report.original_ctx}) "
             f"on {report.device}"]
    if report.provenance:
        p = report.provenance
        lines.append(f"  patched by ropepatch {p['version']}: {p['method']} to {p['ctx']}, alpha {g(p['alpha'])}; "
                     f"expecting the recorded plan")
    else:
        lines.append(f"  expecting the {report.expected_source}'s settings")
    tag = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "SKIP"}
    for c in report.checks:
        detail = summary(c) if c.status == PASSED else c.reason
        lines.append(f"  {tag[c.status]} {c.id}. {c.name} ({c.seconds:.1f} s): {detail}")
    for n in report.notes:
        lines.append(f"  {n}" if n.startswith("WARN: ") else f"  note: {n}")
    n_fail = len(report.failures)
    n_warn = sum(n.startswith("WARN: ") for n in report.notes)
    lines.append(f"{'OK' if report.passed else 'FAILED'}: {n_fail} check(s) failed, "
                 f"{sum(c.status == SKIPPED for c in report.checks)} skipped"
                 + (f", {n_warn} warning(s)" if n_warn else "") + f" ({report.seconds:.1f} s)")
    return "\n".join(lines)
