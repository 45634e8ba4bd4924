"""What the CLI prints: ``--json`` or text, number formatting and one-line model summaries."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from ropepatch.cli.streams import one_line, out
from ropepatch.rope.effects import longrope_applies
from ropepatch.rope.methods import Plan
from ropepatch.rope.params import RopeParams, ScalingType
from ropepatch.rope.serialize import jsonable


def dumps(data) -> str:
    """``data`` as the indented JSON every ``--json`` prints."""
    return json.dumps(jsonable(data), indent=2)


def emit(args, data: dict, text: str) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``."""
    out(dumps(data) if args.json else text)


def warn(msgs) -> None:
    """One ``ropepatch: warning:`` line on stderr per message."""
    for m in msgs:
        print(one_line(f"ropepatch: warning: {m}"), file=sys.stderr)


def g(x: float) -> str:
    """A float in at most 9 significant digits (what every text table uses)."""
    return f"{x:.9g}"


def params_dict(p: RopeParams) -> dict:
    """RoPE parameters as JSON (with the derived ``freq_scale``)."""
    d = jsonable(asdict(p))
    d["freq_scale"] = p.freq_scale
    return d


def plan_dict(plan: Plan, current: RopeParams | None = None, model_path: str = "./model.gguf") -> dict:
    """A plan as JSON: inputs, target parameters and the equivalent runtime settings for the
    file as it is (``current``; default: unpatched), its Modelfile naming ``model_path``."""
    from ropepatch.formats.gguf.params import runtime_settings

    return {
        "method": plan.method,
        "ctx": plan.ctx,
        "alpha": plan.alpha,
        "scale": plan.scale,
        "params": params_dict(plan.target),
        "runtime": runtime_settings(plan, model_path, current),
    }


def describe_params(p: RopeParams) -> str:
    """One line: a GGUF model's context, rotary layout, base and scaling."""
    s = (
        f"{p.arch}: context_length {p.n_ctx_train}, rotary dims {p.rope_dim} of head dim "
        f"{p.head_dim}, layout {p.layout.value.upper()}, freq_base {g(p.freq_base)}, scaling "
        f"{p.scaling_type.value}"
    )
    if p.scaling_type != ScalingType.NONE:
        s += f" (factor {g(p.scaling_factor)}, original ctx {p.n_ctx_orig})"
    if p.has_freq_factors:
        s += (", per-pair frequency factors (LongRoPE's rope_factors_long/short: long past the original ctx)"
              if longrope_applies(p.arch, p.scaling_type.value) else ", per-pair frequency factors (rope_freqs)")
    return s


def describe_effects(e, file_swa_base: float | None = None) -> str:
    """``inspect``'s effect-map lines: what llama.cpp reads and applies for this architecture
    (:class:`ropepatch.rope.effects.ArchEffects`), and the file's own sliding-window base."""
    lines = [f"  llama.cpp reads: {e.summary}"]
    if e.swa_base != "none" and e.known:
        lines.append(f"  this file's rope.freq_base_swa: {'not set' if file_swa_base is None else g(file_swa_base)}")
    return "\n".join(lines + [f"  effect note: {n}" for n in e.notes])


def describe_hf_rope(r) -> str:
    """One line: a Hugging Face config's rope settings and usable context."""
    s = (f"{r.model_type}: max_position_embeddings {r.max_position_embeddings}, rotary dims "
         f"{r.rope_dim} of head dim {r.head_dim}, rope_theta {g(r.rope_theta)}, rope_type {r.rope_type}")
    if r.factor:
        s += f" (factor {g(r.factor)}"
        s += f", original {r.original_max_position_embeddings})" if r.original_max_position_embeddings else ")"
    return s + f"; usable context {r.effective_ctx}"


def file_lines(files) -> list[str]:
    """One indented line per file an HF patch/revert touches."""
    return [f"  {f.path}: {f.action}" + (f" ({f.detail})" if f.detail else "") for f in files]


def note_lines(messages) -> list[str]:
    """One indented ``note:`` line per message."""
    return [f"  note: {m}" for m in messages]
