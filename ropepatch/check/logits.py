"""Check d of ``ropepatch validate``: for small llama / qwen2 / exaone / phi3 models with F32 or Q8_0
weights, the NumPy reference forward pass -- with the expected RoPE parameters and per-pair
frequency factors (the plan's, not the file's) -- vs the runtime's logits over a sequence longer than the
original context that ends at ``ctx - 1`` (max abs error, top-1 agreement, KL), within the
tolerances measured in tests/check/test_reference_forward.py. Skipped, with the reason, for other
models unless forced."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ropepatch.check.reference_forward import SUPPORTED_ARCHS as FORWARD_ARCHS
from ropepatch.check.report import FAILED, NAMES, PASSED, CheckResult, skipped
from ropepatch.errors import RopepatchError

#: default seed of the (meaningless, deterministic) token ids decoded
FORWARD_SEED = 7
#: check d tolerances (max_abs, kl_max, kl_mean, top1_min) per weight class, from
#: tests/check/test_reference_forward.py (measured on the fixtures, then given headroom)
FORWARD_TOL = {
    "f32": (2e-4, 1e-9, 1e-10, 1.0),
    "q8_0": (0.5, 1e-2, 1e-3, 0.98),
}
#: check d runs automatically when (weight elements) x (tokens) is at most this many
#: multiply-adds (a few seconds of NumPy float64); ``reference_forward=True`` forces it
FORWARD_AUTO_BUDGET = 2e9
_F32_TYPES = {0}  # ggml type ids: F32
_Q8_0_TYPES = {0, 8}  # F32 and Q8_0


def weight_stats(path: str) -> tuple[int, set[int]]:
    """(number of weight elements, set of ggml tensor types) from the GGUF header."""
    from ropepatch.formats.gguf.header import read_header  # noqa: PLC0415

    h = read_header(path)
    n = 0
    for t in h.tensors:
        e = 1
        for d in t.shape:
            e *= int(d)
        n += e
    return n, {int(t.ggml_type) for t in h.tensors}


@dataclass(frozen=True)
class ForwardPlan:
    """What check d decodes: ``tokens`` positions ending at ctx - 1, judged by ``tol_class``."""

    start: int
    tokens: int
    tol_class: str  # "f32" or "q8_0"

    def describe(self) -> str:
        return f"{self.tokens} tokens at positions {self.start}..{self.start + self.tokens - 1}"


def _tolerance_class(types: set[int], n_weights: int, L: int, ctx: int) -> tuple[str, str]:
    """("f32" | "q8_0", "") or ("", why the weights have no established tolerance)."""
    if types <= _F32_TYPES:
        return "f32", ""
    if types <= _Q8_0_TYPES:
        return "q8_0", ""
    from gguf import GGMLQuantizationType  # noqa: PLC0415

    names = sorted(GGMLQuantizationType(t).name for t in types - _Q8_0_TYPES)
    why = f"logit tolerances are established for F32 and Q8_0 weights only; this model has {', '.join(names)}"
    if n_weights * float(min(ctx, 2 * L + 64)) > FORWARD_AUTO_BUDGET:
        why += (f" (and at {n_weights / 1e6:.0f}M weights it is too large for a NumPy reference forward "
                f"over > {L} tokens)")
    return "", why


def plan_forward(path: str, arch: str, L: int, ctx: int, reference_forward: bool | None,
                 forward_tokens: int | None, op_problem: str = "") -> ForwardPlan | CheckResult:
    """Check d's plan, or the check skipped with the reason (``op_problem``: why there is no
    expected ROPE op, "" when there is one)."""
    if reference_forward is False:
        return skipped("d", "not requested (reference_forward=False)")
    if op_problem:
        return skipped("d", op_problem)
    if arch not in FORWARD_ARCHS:
        return skipped("d", f"the reference forward supports {', '.join(FORWARD_ARCHS)}, not {arch}")
    n_weights, types = weight_stats(path)
    tol_class, why = _tolerance_class(types, n_weights, L, ctx)
    if why:
        return skipped("d", why)
    n_tok = int(forward_tokens) if forward_tokens else min(ctx, 2 * L + 64)
    if n_tok < 2:
        return skipped("d", f"forward_tokens {n_tok} < 2")
    cost = float(n_weights) * n_tok
    if reference_forward is None and cost > FORWARD_AUTO_BUDGET:
        return skipped("d", f"model too large for the automatic reference forward ({n_weights / 1e6:.0f}M "
                            f"weights x {n_tok} tokens = {cost:.2g} > {FORWARD_AUTO_BUDGET:.0e} multiply-adds); "
                            f"force it with --reference-forward")
    return ForwardPlan(max(0, ctx - n_tok), n_tok, tol_class)


def _judge(cmp, tol: tuple, start: int, n_tok: int) -> str:
    max_abs, kl_max, kl_mean, top1 = tol
    bad = []
    if not cmp.max_abs <= max_abs:
        bad.append(f"max |logit diff| {cmp.max_abs:.3g} > {max_abs:g}")
    if not cmp.kl_max <= kl_max:
        bad.append(f"KL max {cmp.kl_max:.3g} > {kl_max:g}")
    if not cmp.kl_mean <= kl_mean:
        bad.append(f"KL mean {cmp.kl_mean:.3g} > {kl_mean:g}")
    if not cmp.top1_agreement >= top1:
        bad.append(f"top-1 agreement {cmp.top1_agreement:.3f} < {top1:g}")
    if not bad:
        return ""
    return (f"runtime logits differ from the reference forward with the expected RoPE over positions "
            f"{start}..{start + n_tok - 1}: " + ", ".join(bad))


def _figures(plan: ForwardPlan, cmp, L: int, tol_class: str, on_gpu: bool, want_ff: tuple | None) -> dict:
    max_abs, kl_max, kl_mean, top1 = FORWARD_TOL[tol_class]
    n_tok = plan.tokens
    return {
        "tokens": n_tok,
        "positions": [plan.start, plan.start + n_tok - 1],
        "max_distance": n_tok - 1,
        "beyond_original_ctx": n_tok - 1 >= L,
        "max_abs": cmp.max_abs,
        "p95_abs": cmp.p95_abs,
        "top1_agreement": cmp.top1_agreement,
        "kl_max": cmp.kl_max,
        "kl_mean": cmp.kl_mean,
        "tolerance_class": tol_class + (" (gpu: not established)" if on_gpu else ""),
        "tolerance": {"max_abs": max_abs, "kl_max": kl_max, "kl_mean": kl_mean, "top1_min": top1},
        "runtime": "F32 KV cache, flash attention off",
        "freq_factors": "file's" if want_ff is None else len(want_ff),
    }


def check_forward(path: str, plan: ForwardPlan, expected_op: Mapping, L: int, gpu_layers: int, on_gpu: bool,
                  n_threads: int, want_ff: tuple | None = (), min_ctx: int = 0) -> CheckResult:
    """Check d: decode ``plan``'s tokens in the runtime (F32 KV cache, no flash attention) and
    compare its logits with the reference forward's, whose rotary divides by ``want_ff`` (the
    expected per-pair factors; () none; None: the file's own, when ropepatch does not know
    what to expect); ``min_ctx``: the least context to decode in (LongRoPE: past the original
    context, where the runtime applies the long factors ``want_ff`` holds)."""
    from ropepatch.check.reference_forward import compare_logits, forward, load_model  # noqa: PLC0415
    from ropepatch.runtime.probe import probe  # noqa: PLC0415

    t0 = time.perf_counter()
    start, n_tok = plan.start, plan.tokens
    m = load_model(path)
    rng = np.random.default_rng(FORWARD_SEED)
    toks = rng.integers(min(3, m.n_vocab - 1), m.n_vocab, size=n_tok)
    try:
        res = probe(path, toks, start, n_ctx=max(256, n_tok, min_ctx), layers=(), n_gpu_layers=gpu_layers,
                    kv_cache_type="f32", flash_attn=False, n_threads=n_threads)
    except RopepatchError as exc:
        return CheckResult("d", NAMES["d"], FAILED, f"the runtime failed to decode {n_tok} tokens: {exc}",
                           seconds=time.perf_counter() - t0)
    ref = forward(m, toks, start, rope_op=expected_op, rope_dtype=np.float32,
                  ggml_q8_0_activations=(plan.tol_class == "q8_0" and not on_gpu),
                  freq_factors="file" if want_ff is None else want_ff)
    cmp = compare_logits(ref, res.logits)
    tol_class = "q8_0" if on_gpu else plan.tol_class  # GPU kernels (F16/MMQ paths) are not emulated
    reason = _judge(cmp, FORWARD_TOL[tol_class], start, n_tok)
    return CheckResult("d", NAMES["d"], FAILED if reason else PASSED, reason,
                       _figures(plan, cmp, L, tol_class, on_gpu, want_ff), time.perf_counter() - t0)
