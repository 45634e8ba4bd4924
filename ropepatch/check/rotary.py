"""Check c of ``ropepatch validate``: the NumPy reference rotary, driven by the expected
parameters and the expected per-pair frequency factors (the plan's, not the ones the runtime
used: wrong factors in the file must fail here), applied to the captured un-rotated Q/K
reproduces the runtime's rotated Q/K at every captured position, within a stated float32
tolerance (:data:`ROTARY_TOLERANCE`)."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from ropepatch.check.factors import as_array
from ropepatch.check.report import FAILED, LABEL, NAMES, PASSED, CheckResult
from ropepatch.check.rope_reference import (
    apply_rope_op,
    pair_magnitude_and_index,
    rope_angles,
    yarn_mscale,
)
from ropepatch.rope.params import RopeLayout

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23
EPS16 = float(np.finfo(np.float16).eps)  # 2^-10
ULPS_F32 = 4

ROTARY_TOLERANCE = (
    "per element of a rotated pair (x0, x1), with m = mscale (the kernel's cos/sin magnitude): "
    "float32 recipe |ref32 - out| <= 4 eps32 m (|x0|+|x1|) (same float32 angle on both sides; "
    "cosf/sinf <= 1 ulp, the mscale product 0.5 ulp, the rotation <= 1.5 ulp); exact float64 "
    "rotary |ref64 - out| <= m (|x0|+|x1|) ((i+3) eps32 |theta_i| + 4 eps32) (the runtime's "
    "float32 angle p*ts^i is a running product carrying <= (i+3) eps32 relative error, (i+4) eps32 "
    "with per-pair frequency factors, which add one float32 division theta/ff_i); "
    "dims past n_dims must be bit-identical; +1 eps16 when the runtime's tensors are F16"
)


def _tolerances(cap, op: Mapping, n: int, lay, f16: bool, ff):
    """(scale, float32 relative tolerance, float64 relative tolerance) per rotated element."""
    x = cap.input
    mscale = abs(yarn_mscale(op["freq_scale"], op["ext_factor"], op["attn_factor"]))
    mag, idx = pair_magnitude_and_index(x, n, lay)
    scale = mscale * mag + 1e-30
    theta = np.abs(
        rope_angles(cap.positions, n, op["freq_base"], op["freq_scale"], op["ext_factor"], op["beta_fast"],
                    op["beta_slow"], op["n_ctx_orig"], ff)
    )
    extra = EPS16 if f16 else 0.0
    rel_tol32 = np.full(scale.shape, ULPS_F32 * EPS32 + extra)
    # the runtime's float32 angle: a running product, then one division by the pair's factor
    steps = idx + (4 if ff is not None else 3)
    rel_tol64 = steps[None, None, :] * EPS32 * theta[:, None, idx] + ULPS_F32 * EPS32 + extra
    return scale, rel_tol32, np.broadcast_to(rel_tol64, scale.shape)


def rotary_errors(cap, op: Mapping, f16: bool = False, factors=None) -> dict:
    """Reference rotary (driven by ``op`` and ``factors``: the per-pair divisors, () for none,
    None for the ones the runtime used, src[2]) vs one captured ROPE node: for the float32 recipe
    and the exact float64 rotary, the max abs error, the max error relative to the pair
    magnitude m(|x0|+|x1|), the worst error as a multiple of the tolerance (<= 1 passes,
    :data:`ROTARY_TOLERANCE`), the position of the worst element, and the max change of the
    pass-through dims (must be 0)."""
    n = int(op["n_dims"])
    lay = RopeLayout.NEOX if int(op["mode"]) == 2 else RopeLayout.NORM
    x, out = cap.input, cap.output.astype(np.float64)
    if x.shape[-1] < n:
        return {"error": f"{cap.name}: head dim {x.shape[-1]} < n_dims {n}"}
    ff = cap.freq_factors if factors is None else as_array(factors)
    if ff is not None and ff.size < n // 2:
        return {"error": f"{cap.name}: {ff.size} frequency factors for {n // 2} rotary pairs"}
    scale, rel_tol32, rel_tol64 = _tolerances(cap, op, n, lay, f16, ff)
    res = {}
    for mode, dtype, rtol in (("f32", np.float32, rel_tol32), ("f64", np.float64, rel_tol64)):
        ref = apply_rope_op(x, cap.positions, op, freq_factors=ff, dtype=dtype).astype(np.float64)
        err = np.abs(ref - out)
        tail = float(err[..., n:].max()) if x.shape[-1] > n else 0.0
        e = err[..., :n]
        rel = e / scale
        over = rel / rtol
        worst = np.unravel_index(int(np.argmax(over)), over.shape)
        res[mode] = {
            "max_abs": float(e.max()),
            "max_rel": float(rel.max()),
            "max_over_tol": float(over.max()),
            "tol_rel_max": float(rtol.max()),
            "worst_position": int(cap.positions[worst[0]]),
            "tail": tail,
        }
    return res


class _Worst:
    """The rotary errors over all captures: per mode, the worst capture's figures with the
    max abs / rel / tolerance over all of them."""

    def __init__(self):
        self.agg: dict[str, dict | None] = {"f32": None, "f64": None}
        self.worst_name = ""

    def add(self, name: str, e: dict) -> None:
        for m in ("f32", "f64"):
            prev = self.agg[m] or {}
            tol_max = max(e[m]["tol_rel_max"], prev.get("tol_rel_max", 0.0))
            if self.agg[m] is None or e[m]["max_over_tol"] > self.agg[m]["max_over_tol"]:
                if m == "f64":
                    self.worst_name = name
                self.agg[m] = dict(e[m], max_abs=max(e[m]["max_abs"], prev.get("max_abs", 0.0)),
                                   max_rel=max(e[m]["max_rel"], prev.get("max_rel", 0.0)))
            else:
                self.agg[m]["max_abs"] = max(self.agg[m]["max_abs"], e[m]["max_abs"])
                self.agg[m]["max_rel"] = max(self.agg[m]["max_rel"], e[m]["max_rel"])
            self.agg[m]["tol_rel_max"] = tol_max


def _reasons(pos_problem: str, tail: float, worst: _Worst, own_worst: float, on_gpu: bool, src: str) -> list[str]:
    reasons = [pos_problem] if pos_problem else []
    if tail != 0.0:
        reasons.append(f"pass-through dims changed by up to {tail:.3g}")
    modes = ("f64",) if on_gpu else ("f32", "f64")
    bad = [m for m in modes if worst.agg[m]["max_over_tol"] > 1.0]
    if bad:
        m = bad[-1]
        r = worst.agg[m]
        why = (f"reference rotary with {LABEL[src]}'s params misses the runtime's output by up to {r['max_abs']:.3g} "
               f"(rel {r['max_rel']:.3g}, {r['max_over_tol']:.3g}x the {m} tolerance) on {worst.worst_name} at "
               f"position {r['worst_position']}")
        why += ("; with the runtime's own op params and factors it matches: the parameters differ, not the kernel"
                if own_worst <= 1.0 else "; it misses with the runtime's own op params and factors too: the kernel "
                                         "differs from the reference")
        reasons.append(why)
    return reasons


def check_rotary(captures, expected_op: Mapping, src: str, on_gpu: bool,
                 runs: Sequence[tuple[int, int]], want_ff: tuple | None = ()) -> CheckResult:
    """Check c over the captures of the probes (pairs of capture and decoded positions);
    ``want_ff``: the expected per-pair factors (() none; None: not known to ropepatch
    (longrope), the runtime's own are used)."""
    t0 = time.perf_counter()
    worst, own_worst, tail, pos_problem, per_node = _Worst(), 0.0, 0.0, "", {}
    for cap, probe_pos in captures:
        if not np.array_equal(np.asarray(cap.positions).reshape(-1), probe_pos):
            pos_problem = f"{cap.name}: the op's positions are not the decoded positions"
        f16 = cap.tensor_type == "f16"
        e = rotary_errors(cap, expected_op, f16=f16, factors=want_ff)
        if "error" in e:
            return CheckResult("c", NAMES["c"], FAILED, e["error"], {}, time.perf_counter() - t0)
        own = rotary_errors(cap, cap.op.as_dict(), f16=f16)
        own_worst = max(own_worst, own["f64"]["max_over_tol"], 0.0 if on_gpu else own["f32"]["max_over_tol"])
        tail = max(tail, e["f32"]["tail"], e["f64"]["tail"])
        per_node[f"{cap.name}@{int(probe_pos[0])}"] = {
            m: {kk: e[m][kk] for kk in ("max_abs", "max_rel", "max_over_tol")} for m in e}
        worst.add(cap.name, e)
    figs = {
        "positions": [[lo, hi] for lo, hi in runs],
        "n_captures": len(captures),
        "f64": worst.agg["f64"],
        "f32": worst.agg["f32"],
        "pass_through_max_abs": tail,
        "runtime_params_max_over_tol": own_worst,
        "judged_by": "f64" if on_gpu else "f32+f64",
        "freq_factors": ("runtime's own (not read by ropepatch)" if want_ff is None
                         else f"{LABEL[src]}'s ({len(want_ff)})" if want_ff else "none"),
        "tolerance": ROTARY_TOLERANCE,
        "per_node": per_node,
    }
    reasons = _reasons(pos_problem, tail, worst, own_worst, on_gpu, src)
    return CheckResult("c", NAMES["c"], FAILED if reasons else PASSED, "; ".join(reasons), figs,
                       time.perf_counter() - t0)
