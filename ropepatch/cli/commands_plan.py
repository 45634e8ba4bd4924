"""``ropepatch plan``: what each method would write, the equivalent runtime settings for the
file as it is, and the commands that run the patched file at N tokens."""

from __future__ import annotations

import json
import os

from ropepatch.cli.commands_inspect import is_hf
from ropepatch.cli.render import describe_params, emit, g, note_lines, params_dict, plan_dict
from ropepatch.errors import RopepatchError, UnsupportedModelError, UsageError
from ropepatch.formats.gguf.tensors import factors_tensor
from ropepatch.rope.factors import parse_points
from ropepatch.rope.methods import METHODS, Plan, alpha_for, make_plan, method_note
from ropepatch.rope.params import RopeParams
from ropepatch.rope.runtime_flags import carries, next_steps

F32_MAX = 3.4028234663852886e38  # the largest float32: a GGUF's rope.freq_base
_BOTH = "plan: give either PATH or --base/--rope-dim/--orig-ctx, not both"


def cmd_plan(args) -> int:
    """Plan one method (or all) for a GGUF, an HF model, or bare --base/--rope-dim/--orig-ctx."""
    if args.path and is_hf(args.path):
        return _plan_hf(args)
    orig, current, model_path = _plan_original(args)
    plans, skipped = _plans(args, orig)
    for p in plans:  # what `ropepatch gguf` refuses to write, plan does not print as a flag
        if p.target.freq_base > F32_MAX:
            raise UsageError(f"{p.method}: the planned rotary base {p.target.freq_base:.4g} is beyond the largest "
                             f"GGUF float32 ({F32_MAX:.4g}); use a smaller --alpha or --ctx")
    # the file patched in place is the one to run (bare parameters: a placeholder name)
    run_path = os.path.abspath(args.path) if args.path else model_path
    data = {"original": params_dict(orig), "ctx": args.ctx,
            "plans": {p.method: plan_dict(p, current, run_path) for p in plans}}
    if skipped:
        data["not_applicable"] = skipped
    for p in plans:  # what llama.cpp would ignore or only partly apply (effect map), an extreme scale
        data["plans"][p.method]["warnings"] = list(p.warnings)
        data["plans"][p.method]["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in p.options}
    why = (f"llama.cpp applies no per-pair factors to {orig.arch}; " if set(skipped) <= _FACTOR_METHODS
           else "they do not compose with the file's scaling or factors, or its architecture cannot take them; ")
    lines = [f"original: {describe_params(orig)}"] + ([
        f"not applicable: {', '.join(skipped)} ({why}--method NAME says why; docs/effects.md)"] if skipped else [])
    if current != orig:
        data["current"] = params_dict(current)
        lines.append(f"file now: {describe_params(current)} (the runtime settings below are for the file as it is)")
    lines += [f"target ctx {args.ctx} (s = {args.ctx / orig.n_ctx_train:g})", "", *_plan_table(plans)]
    for p in plans:
        if not METHODS[p.method].takes_alpha and len(plans) > 1:  # the unscaled baseline: table row only
            continue
        lines += _runtime_lines(p, model_path, data["plans"][p.method]["runtime"])
    ready = len(plans) == 1 and carries(plans[0], current)
    data["next_steps"], data["patch_first"] = next_steps(args.ctx, run_path), not ready
    head = (f"run it at {args.ctx} tokens (the file already carries this plan):" if ready else
            f"run it at {args.ctx} tokens: patch it first (the 'patch the file' line; in place, or with -o OUT "
            f"and OUT's absolute path below), then:")
    lines += ["", head, *next_step_lines(data["next_steps"])]
    emit(args, data, "\n".join(lines))
    return 0


def method_options(args, method: str, only: bool = False) -> dict:
    """The method options given on the command line (--beta-fast, --beta-slow, --factors,
    --attn-factor), for
    ``make_plan`` / ``patch_gguf``: name -> value. An option ``method`` does not take is
    refused in one line naming its flag, unless ``only`` (plan --method all: each method gets
    the ones it takes)."""
    out = {}
    takes = {o.name for o in METHODS[method].options} if method in METHODS else set()
    for m in METHODS.values():
        for o in m.options:
            v = getattr(args, o.name, None)
            if v is None or o.name in out or (only and o.name not in takes):
                continue
            if o.name not in takes and method in METHODS:
                flags = ", ".join(x.flag for x in METHODS[method].options) or "none"
                raise UsageError(f"{o.flag} does not apply to method {method} (its options: {flags}); "
                                 f"drop {o.flag}, or choose a method that takes it")
            out[o.name] = parse_points(v) if o.name == "points" else v
    return out


def factor_line(plan: Plan) -> str:
    """One line on a factor plan's divisors, named by the tensor that holds them ("" for the
    other methods)."""
    f = plan.target.freq_factors
    if not METHODS[plan.method].writes_factors or not f:
        return ""
    opts = ", ".join(f"{k} {g(v) if isinstance(v, float) else ','.join(map(g, v)) if v else 'default'}"
                     for k, v in plan.options)
    name = factors_tensor(plan.original.arch, plan.original.scaling_type.value)
    return (f"{name}: {len(f)} per-pair divisors {min(f):.6g}..{max(f):.6g}"
            + (f" ({opts})" if opts else ""))


_FACTOR_METHODS = {m for m in METHODS if METHODS[m].writes_factors}


def _plans(args, orig: RopeParams) -> tuple[list[Plan], dict[str, str]]:
    """The plans to show, and (``--method all``) the methods refused for this model, with why:
    the effect map's refusals, and methods that do not compose with the file's scaling or factors
    (e.g. ntk on a file with llama3 or LongRoPE factors). One method: refused in one line."""
    every = args.method == "all"
    plans, skipped = [], {}
    for m in (METHODS if every else [args.method]):
        try:
            plans.append(make_plan(orig, args.ctx, m, alpha_for(m, args.alpha) if every else args.alpha,
                                   options=method_options(args, m, only=every)))
        except UnsupportedModelError as e:
            if not every:
                raise type(e)(f"{args.path}: {e}" if args.path else str(e)) from None
            skipped[m] = str(e)
        except RopepatchError as e:
            raise type(e)(f"{args.path}: {e}" if args.path else str(e)) from None
    return plans, skipped


def next_step_lines(steps: dict[str, str]) -> list[str]:
    """:func:`ropepatch.rope.runtime_flags.next_steps` as indented text (``gguf`` and ``plan``)."""
    modelfile = steps["ollama_modelfile"].splitlines()
    lines = [f"  {'llama-server:':23}{steps['llama-server']}",
             f"  {'llama-cli:':23}{steps['llama-cli']}",
             f"  {'llama-cpp-python:':23}{steps['llama-cpp-python']}",
             f"  {'Ollama:':23}a file named Modelfile with the {len(modelfile)} lines"]
    lines += [f"  {'':25}{line}" for line in modelfile]
    lines += [f"  {'':23}then: {steps['ollama']}",
              f"  {'LM Studio:':23}{steps['lm_studio']}",
              f"  {'koboldcpp:':23}{steps['koboldcpp']}",
              f"  {'text-generation-webui:':23}{steps['text-generation-webui']}"]
    return lines


def _plan_table(plans: list[Plan]) -> list[str]:
    w = max([8, *(len(p.method) for p in plans)])
    rows = [f"{'method':{w}} {'alpha':>8} {'freq_base':>14} {'scaling':>8} {'factor':>8} {'orig ctx':>8}"]
    for p in plans:
        t = p.target
        rows.append(
            f"{p.method:{w}} {g(p.alpha) if METHODS[p.method].takes_alpha else '-':>8} {g(t.freq_base):>14} "
            f"{t.scaling_type.value:>8} {g(t.scaling_factor) if t.scaling_factor else '-':>8} "
            f"{t.orig_ctx or '-':>8}"
        )
    return rows


def _runtime_lines(p: Plan, model_path: str, runtime: dict) -> list[str]:
    """A method's patch command and its runtime settings for the file as it is (``runtime``:
    :func:`ropepatch.formats.gguf.params.runtime_settings`)."""
    lines = [
        "",
        f"[{p.method}] {METHODS[p.method].summary}",
        f"  patch the file:     ropepatch gguf {model_path} --ctx {p.ctx} --method {p.method}"
        + (f" --alpha {g(p.alpha)}" if p.alpha_given else "") + _option_flags(p),
    ]
    if fl := factor_line(p):
        lines.append(f"  {fl}")
    if "revert_first" in runtime or "patch_first" in runtime:
        lines.append(f"  runtime settings:   {runtime.get('patch_first') or runtime['revert_first']}")
    else:
        lines += [
            f"  llama.cpp flags:    {' '.join(runtime['llama_cpp_flags'])}",
            f"  or kv overrides:    {' '.join(runtime['override_kv_flags'])}",
            f"  llama-cpp-python:   Llama({model_path!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in runtime["llama_cpp_python"].items())
            + ")",
        ]
    note = method_note(p, "gguf_plan_note")
    return lines + ([f"  note: {note}"] if note else []) + [f"  warning: {w}" for w in p.warnings]


def _option_flags(p: Plan) -> str:
    """The plan's non-default method options as command-line flags."""
    spec = {o.name: o for o in METHODS[p.method].options}
    out = ""
    for name, v in p.options:
        if v is not None and v != spec[name].default:
            out += f" {spec[name].flag} " + (",".join(map(g, v)) if isinstance(v, tuple) else g(v))
    return out


def _plan_original(args) -> tuple[RopeParams, RopeParams, str]:
    """(original, current, path) of the file; bare parameters: (params, params, placeholder)."""
    if args.path:
        if args.base is not None or args.rope_dim is not None or args.orig_ctx is not None:
            raise UsageError(_BOTH)
        from ropepatch.patch.gguf import inspect_gguf

        info = inspect_gguf(args.path)
        return info.original, info.current, args.path
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
    params = RopeParams(arch=args.arch, n_ctx_train=args.orig_ctx, rope_dim=args.rope_dim,
                        head_dim=args.rope_dim, freq_base=args.base, layout=rope_layout(args.arch))
    return params, params, "./model.gguf"


def _plan_hf(args) -> int:
    from ropepatch.patch.hf import plan_hf, plan_hf_snippets

    if args.base is not None or args.rope_dim is not None or args.orig_ctx is not None:
        raise UsageError(_BOTH)
    methods = ([m for m, spec in METHODS.items() if spec.takes_alpha and not spec.writes_factors]  # GGUF only
               if args.method == "all" else [args.method])
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
