"""Plans for an HF model, and the config / vLLM spellings of a plan.

    plan_hf(path, ctx, method="ntk", alpha=None, replace_scaling=False) -> Plan
    plan_hf_snippets(plan: Plan) -> dict   # transformers v4 / v5 blocks, vLLM overrides
"""

from __future__ import annotations

import json

from ropepatch.errors import UnsupportedModelError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.apply import rope_block
from ropepatch.formats.hf.config import HFRope, check_composable_hf, read_rope, unscaled_params
from ropepatch.formats.hf.json_doc import ConfigDoc, parse_config
from ropepatch.patch.hf_model import resolve_model
from ropepatch.patch.hf_state import ModelState, read_state
from ropepatch.rope.effects import plan_warnings
from ropepatch.rope.methods import DEFAULT_METHOD, METHODS, Plan, make_plan, method_note
from ropepatch.safeio.paths import shown


def check_hf_method(path: str, method: str) -> None:
    """Refuse, in one line naming ``path``, a method this version cannot write into an HF model:
    the per-pair factor methods (rope_freqs.weight exists in GGUF files only). An unknown name
    lists the methods an HF model takes."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}: expected one of "
                         f"{', '.join(n for n, m in METHODS.items() if not m.writes_factors)}")
    if METHODS[method].writes_factors:
        raise UnsupportedModelError(
            f"{path}: --method {method} writes per-pair frequency factors (rope_freqs.weight), which "
            f"this version writes into GGUF files only; for a Hugging Face model use --method yarn or "
            f"ntk, or convert it to GGUF and run 'ropepatch gguf' on that")


def plan_from_state(st: ModelState, ctx: int, method: str, alpha: float | None,
                    replace_scaling: bool) -> tuple[ConfigDoc, HFRope, Plan]:
    """The original config (recorded when patched), its rope settings and the plan."""
    check_hf_method(shown(st.model.root), method)
    orig_doc = parse_config(st.original_config_text(), shown(st.model.config_path))
    rope0 = read_rope(orig_doc)
    check_composable_hf(rope0, method, replace_scaling)
    plan = make_plan(unscaled_params(rope0), ctx, method, alpha)
    return orig_doc, rope0, plan


def plan_hf(path: str, ctx: int, method: str = DEFAULT_METHOD, alpha: float | None = None,
            replace_scaling: bool = False) -> Plan:
    """The plan :func:`patch_hf` would carry out (from the recorded originals), touching nothing."""
    st = read_state(resolve_model(path))
    return plan_from_state(st, ctx, method, alpha, replace_scaling)[2]


def plan_hf_snippets(plan: Plan) -> dict:
    """The HF spellings of ``plan`` (``plan.original`` = the unscaled model: L, b, d).

    Returns ``{"method", "ctx", "rope_theta", "max_position_embeddings", "rope_scaling"
    (v4 block or None), "transformers_v4" (keys to set in config.json), "transformers_v5"
    (the same with ``rope_parameters``), "vllm_hf_overrides" (JSON string for
    ``--hf-overrides``), "vllm_hf_overrides_v5", "vllm_args" (a command-line fragment),
    "notes"}``.
    """
    rb = rope_block(plan)
    v4 = {hk.ROPE_THETA: rb.rope_theta, hk.ROPE_SCALING: rb.scaling,
          hk.MAX_POSITION_EMBEDDINGS: rb.max_position_embeddings}
    params = {hk.RS_ROPE_TYPE: hk.RT_DEFAULT} if rb.scaling is None else dict(rb.scaling)
    params[hk.ROPE_THETA] = rb.rope_theta
    v5 = {hk.ROPE_PARAMETERS: params, hk.MAX_POSITION_EMBEDDINGS: rb.max_position_embeddings}
    overrides = json.dumps(v4, separators=(", ", ": "))
    note = method_note(plan, "hf_plan_note")
    return {
        "method": plan.method,
        "ctx": plan.ctx,
        "rope_theta": rb.rope_theta,
        "max_position_embeddings": rb.max_position_embeddings,
        "rope_scaling": rb.scaling,
        "transformers_v4": v4,
        "transformers_v5": v5,
        "vllm_hf_overrides": overrides,
        "vllm_hf_overrides_v5": json.dumps(v5, separators=(", ", ": ")),
        "vllm_args": f"--hf-overrides '{overrides}' --max-model-len {plan.ctx}",
        "notes": [note] if note else [],
    }


def method_notes(plan: Plan) -> list[str]:
    """What the user should know about ``plan``'s method after patching (registry text); the
    effect map's warnings are about llama.cpp reading a GGUF, so they are left out here."""
    note = method_note(plan, "hf_note")
    llama_cpp = set(plan_warnings(plan))
    return ([note] if note else []) + [w for w in plan.warnings if w not in llama_cpp]
