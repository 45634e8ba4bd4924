"""``ropepatch plan``: what each method would write, and the equivalent runtime flags."""

from __future__ import annotations

import json

from ropepatch.cli.commands_inspect import is_hf
from ropepatch.cli.render import describe_params, emit, g, note_lines, params_dict, plan_dict
from ropepatch.errors import UsageError
from ropepatch.rope.methods import METHODS, Plan, make_plan, method_note
from ropepatch.rope.params import RopeParams

F32_MAX = 3.4028234663852886e38  # the largest float32: a GGUF's rope.freq_base
_BOTH = "plan: give either PATH or --base/--rope-dim/--orig-ctx, not both"


def cmd_plan(args) -> int:
    """Plan one method (or all) for a GGUF, an HF model, or bare --base/--rope-dim/--orig-ctx."""
    if args.path and is_hf(args.path):
        return _plan_hf(args)
    orig, model_path = _plan_original(args)
    methods = list(METHODS) if args.method == "all" else [args.method]
    plans = [make_plan(orig, args.ctx, m, args.alpha) for m in methods]
    for p in plans:  # what `ropepatch gguf` refuses to write, plan does not print as a flag
        if p.target.freq_base > F32_MAX:
            raise UsageError(f"{p.method}: the planned rotary base {p.target.freq_base:.4g} is beyond the largest "
                             f"GGUF float32 ({F32_MAX:.4g}); use a smaller --alpha or --ctx")
    data = {"original": params_dict(orig), "ctx": args.ctx, "plans": {p.method: plan_dict(p) for p in plans}}
    lines = [
        f"original: {describe_params(orig)}",
        f"target ctx {args.ctx} (s = {args.ctx / orig.n_ctx_train:g})",
        "",
        *_plan_table(plans),
    ]
    for p in plans:
        if not METHODS[p.method].takes_alpha and len(plans) > 1:  # the unscaled baseline: table row only
            continue
        lines += _runtime_lines(p, model_path)
    emit(args, data, "\n".join(lines))
    return 0


def _plan_table(plans: list[Plan]) -> list[str]:
    rows = [f"{'method':8} {'alpha':>8} {'freq_base':>14} {'scaling':>8} {'factor':>8} {'orig ctx':>8}"]
    for p in plans:
        t = p.target
        rows.append(
            f"{p.method:8} {g(p.alpha) if METHODS[p.method].takes_alpha else '-':>8} {g(t.freq_base):>14} "
            f"{t.scaling_type.value:>8} {g(t.scaling_factor) if t.scaling_factor else '-':>8} "
            f"{t.orig_ctx or '-':>8}"
        )
    return rows


def _runtime_lines(p: Plan, model_path: str) -> list[str]:
    from ropepatch.formats.gguf.params import override_kv_flags
    from ropepatch.rope.runtime_flags import llama_cpp_flags, llama_cpp_python_kwargs, ollama_modelfile

    lines = [
        "",
        f"[{p.method}] {METHODS[p.method].summary}",
        f"  patch the file:     ropepatch gguf {model_path} --ctx {p.ctx} --method {p.method}"
        + (f" --alpha {g(p.alpha)}" if p.alpha_given else ""),
        f"  llama.cpp flags:    {' '.join(llama_cpp_flags(p))}",
        f"  or kv overrides:    {' '.join(override_kv_flags(p))}",
        f"  llama-cpp-python:   Llama({model_path!r}, "
        + ", ".join(f"{k}={v!r}" for k, v in llama_cpp_python_kwargs(p).items())
        + ")",
        "  Ollama Modelfile:   " + ollama_modelfile(p, model_path).strip().replace("\n", " | "),
    ]
    note = method_note(p, "gguf_plan_note")
    return lines + ([f"  note: {note}"] if note else [])


def _plan_original(args) -> tuple[RopeParams, str]:
    if args.path:
        if args.base is not None or args.rope_dim is not None or args.orig_ctx is not None:
            raise UsageError(_BOTH)
        from ropepatch.patch.gguf import inspect_gguf

        info = inspect_gguf(args.path)
        return info.original, args.path
    given = (("--base", args.base), ("--rope-dim", args.rope_dim), ("--orig-ctx", args.orig_ctx))
    missing = [n for n, v in given if v is None]
    if missing:
        raise UsageError(f"plan: without a model PATH, {', '.join(missing)} must be given")
    from ropepatch.rope.arch import rope_layout

    if not (1 < args.base <= F32_MAX):
        raise UsageError(f"--base must be a finite number > 1 and at most {F32_MAX:.4g} (the largest GGUF "
                         f"float32), found {args.base:g}")
    if args.rope_dim <= 2 or args.rope_dim % 2:
        raise UsageError(f"--rope-dim must be an even number > 2, found {args.rope_dim}")
    return (
        RopeParams(
            arch=args.arch,
            n_ctx_train=args.orig_ctx,
            rope_dim=args.rope_dim,
            head_dim=args.rope_dim,
            freq_base=args.base,
            layout=rope_layout(args.arch),
        ),
        "./model.gguf",
    )


def _plan_hf(args) -> int:
    from ropepatch.patch.hf import plan_hf, plan_hf_snippets

    if args.base is not None or args.rope_dim is not None or args.orig_ctx is not None:
        raise UsageError(_BOTH)
    methods = [m for m, spec in METHODS.items() if spec.takes_alpha] if args.method == "all" else [args.method]
    plans = {m: plan_hf(args.path, args.ctx, m, args.alpha) for m in methods}
    snippets = {m: plan_hf_snippets(p) for m, p in plans.items()}
    lines = [f"original: {describe_params(next(iter(plans.values())).original)}",
             f"target ctx {args.ctx}"]
    for m, sn in snippets.items():
        lines += ["", f"[{m}] {METHODS[m].summary}",
                  f"  patch the model:    ropepatch hf {args.path} --ctx {args.ctx} --method {m}",
                  f"  config.json (v4):   {json.dumps(sn['transformers_v4'])}",
                  f"  config.json (v5):   {json.dumps(sn['transformers_v5'])}",
                  f"  vLLM:               {sn['vllm_args']}"]
        lines += note_lines(sn.get("notes", []))
    data = {"ctx": args.ctx, "plans": {m: {**plan_dict(p), "hf": snippets[m]} for m, p in plans.items()}}
    emit(args, data, "\n".join(lines))
    return 0
