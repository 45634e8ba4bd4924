"""The ``ropepatch`` command line: a thin layer over the library.

Every command has ``-h`` with an example and ``--json``; library errors become one line on
stderr (``ropepatch: error: ...``) and exit status 2, with no traceback and nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, is_dataclass
from enum import Enum

from ropepatch.version import __version__
from ropepatch.errors import RopepatchError, UsageError
from ropepatch.rope.methods import DEFAULT_METHOD, METHODS, Plan, make_plan
from ropepatch.rope.params import RopeParams

# ---- formatting helpers -------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if is_dataclass(x) and not isinstance(x, type):  # e.g. an array value (gguf_file.ArrayValue)
        return _jsonable(asdict(x))
    return x


def params_dict(p: RopeParams) -> dict:
    d = _jsonable(asdict(p))
    d["freq_scale"] = p.freq_scale
    return d


def plan_dict(plan: Plan) -> dict:
    from ropepatch.formats.gguf.params import runtime_settings

    return {
        "method": plan.method,
        "ctx": plan.ctx,
        "alpha": plan.alpha,
        "scale": plan.scale,
        "params": params_dict(plan.target),
        "runtime": runtime_settings(plan),
    }


def _emit(args, data: dict, text: str) -> None:
    if args.json:
        print(json.dumps(_jsonable(data), indent=2))
    else:
        print(text)


def _g(x: float) -> str:
    return f"{x:.9g}"


def _describe_params(p: RopeParams) -> str:
    s = (
        f"{p.arch}: context_length {p.n_ctx_train}, rotary dims {p.rope_dim} of head dim "
        f"{p.head_dim}, layout {p.layout.value.upper()}, freq_base {_g(p.freq_base)}, scaling "
        f"{p.scaling_type.value}"
    )
    if p.scaling_type.value != "none":
        s += f" (factor {_g(p.scaling_factor)}, original ctx {p.n_ctx_orig})"
    if p.has_freq_factors:
        s += ", per-pair frequency factors (rope_freqs)"
    return s


def _warn(msgs) -> None:
    for m in msgs:
        print(f"ropepatch: warning: {m}", file=sys.stderr)


# ---- commands -----------------------------------------------------------------------------


def _is_hf(path: str) -> bool:
    from ropepatch.patch.hf import is_hf_path

    return is_hf_path(path)


def _hf_rope_text(r) -> str:
    s = (f"{r.model_type}: max_position_embeddings {r.max_position_embeddings}, rotary dims "
         f"{r.rope_dim} of head dim {r.head_dim}, rope_theta {_g(r.rope_theta)}, rope_type {r.rope_type}")
    if r.factor:
        s += f" (factor {_g(r.factor)}"
        s += f", original {r.original_max_position_embeddings})" if r.original_max_position_embeddings else ")"
    return s + f"; usable context {r.effective_ctx}"


def _inspect_hf(args) -> int:
    from ropepatch.patch.hf import inspect_hf

    info = inspect_hf(args.path)
    lines = [f"{info.model.root} (Hugging Face, config {info.model.config_path}, {len(info.shards)} safetensors file(s))",
             "  now:      " + _hf_rope_text(info.rope)]
    if info.patched and info.record:
        rec = info.record
        lines.append(f"  patched by ropepatch {rec.get('version')}: method {rec.get('method')}, ctx {rec.get('ctx')}, alpha {rec.get('alpha')}")
        if info.original is not None:
            lines.append("  original: " + _hf_rope_text(info.original))
    else:
        lines.append("  not patched by ropepatch")
    lines += [f"  note: {m}" for m in info.messages]
    _emit(args, info.to_dict(), "\n".join(lines))
    return 0


def cmd_inspect(args) -> int:
    from ropepatch.patch.gguf import inspect_gguf

    if _is_hf(args.path):
        if args.as_hf:
            raise UsageError(f"{args.path}: --as-hf is for GGUF files; this is already a Hugging Face model")
        return _inspect_hf(args)
    info = inspect_gguf(args.path)
    if args.as_hf:
        from ropepatch.patch.translate import gguf_as_hf

        block = gguf_as_hf(info)
        _emit(args, block, json.dumps(_jsonable(block), indent=2))
        return 0
    prov = info.provenance
    data = {
        "path": info.path,
        "format": info.format,
        "current": params_dict(info.current),
        "original": params_dict(info.original),
        "patched_by_ropepatch": prov is not None,
        "provenance": None
        if prov is None
        else {"version": prov.version, "method": prov.method, "ctx": prov.ctx, "alpha": prov.alpha},
        "split": list(info.split) if info.split else None,
        "file_size": info.file_size,
        "n_tensors": info.n_tensors,
        "n_kv": info.n_kv,
        "reserved_header_bytes": info.slack,
    }
    lines = [f"{info.path} (GGUF, {info.file_size / 2**20:.1f} MiB, {info.n_tensors} tensors)"]
    if info.split:
        lines.append(f"  split {info.split[0]} of {info.split[1]} (hyperparameters live in split 1)")
    lines.append("  now:      " + _describe_params(info.current))
    if prov is None:
        lines.append("  not patched by ropepatch")
    else:
        lines.append(
            f"  patched by ropepatch {prov.version}: method {prov.method}, ctx {prov.ctx}, "
            f"alpha {_g(prov.alpha)}; {info.slack} bytes reserved for in-place re-patches"
        )
        lines.append("  original: " + _describe_params(info.original))
    _emit(args, data, "\n".join(lines))
    return 0


def _plan_original(args) -> tuple[RopeParams, str]:
    if args.path:
        if args.base is not None or args.rope_dim is not None or args.orig_ctx is not None:
            raise UsageError("plan: give either PATH or --base/--rope-dim/--orig-ctx, not both")
        from ropepatch.patch.gguf import inspect_gguf

        info = inspect_gguf(args.path)
        return info.original, args.path
    missing = [n for n, v in (("--base", args.base), ("--rope-dim", args.rope_dim), ("--orig-ctx", args.orig_ctx)) if v is None]
    if missing:
        raise UsageError(f"plan: without a model PATH, {', '.join(missing)} must be given")
    from ropepatch.rope.arch import rope_layout

    if not (args.base > 1 and math.isfinite(args.base)):
        raise UsageError(f"--base must be a finite number > 1, found {args.base}")
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
        raise UsageError("plan: give either PATH or --base/--rope-dim/--orig-ctx, not both")
    methods = [m for m in METHODS if m != "none"] if args.method == "all" else [args.method]
    plans = {m: plan_hf(args.path, args.ctx, m, args.alpha) for m in methods}
    snippets = {m: plan_hf_snippets(p) for m, p in plans.items()}
    lines = [f"original: {_describe_params(next(iter(plans.values())).original)}",
             f"target ctx {args.ctx}"]
    for m, sn in snippets.items():
        lines += ["", f"[{m}] {METHODS[m].summary}",
                  f"  patch the model:    ropepatch hf {args.path} --ctx {args.ctx} --method {m}",
                  f"  config.json (v4):   {json.dumps(sn['transformers_v4'])}",
                  f"  config.json (v5):   {json.dumps(sn['transformers_v5'])}",
                  f"  vLLM:               {sn['vllm_args']}"]
        lines += [f"  note: {n}" for n in sn.get("notes", [])]
    data = {"ctx": args.ctx, "plans": {m: {**plan_dict(p), "hf": snippets[m]} for m, p in plans.items()}}
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_plan(args) -> int:
    from ropepatch.formats.gguf.params import override_kv_flags
    from ropepatch.rope.runtime_flags import llama_cpp_flags, llama_cpp_python_kwargs, ollama_modelfile

    if args.path and _is_hf(args.path):
        return _plan_hf(args)
    orig, model_path = _plan_original(args)
    methods = list(METHODS) if args.method == "all" else [args.method]
    plans = [make_plan(orig, args.ctx, m, args.alpha) for m in methods]
    data = {"original": params_dict(orig), "ctx": args.ctx, "plans": {p.method: plan_dict(p) for p in plans}}
    rows = [f"{'method':8} {'alpha':>8} {'freq_base':>14} {'scaling':>8} {'factor':>8} {'orig ctx':>8}"]
    for p in plans:
        t = p.target
        rows.append(
            f"{p.method:8} {_g(p.alpha) if p.method != 'none' else '-':>8} {_g(t.freq_base):>14} "
            f"{t.scaling_type.value:>8} {_g(t.scaling_factor) if t.scaling_factor else '-':>8} "
            f"{t.orig_ctx or '-':>8}"
        )
    lines = [
        f"original: {_describe_params(orig)}",
        f"target ctx {args.ctx} (s = {args.ctx / orig.n_ctx_train:g})",
        "",
        *rows,
    ]
    for p in plans:
        if p.method == "none" and len(plans) > 1:
            continue
        lines += [
            "",
            f"[{p.method}] {METHODS[p.method].summary}",
            f"  patch the file:     ropepatch gguf {model_path} --ctx {p.ctx} --method {p.method}"
            + (f" --alpha {_g(p.alpha)}" if p.alpha_given else ""),
            f"  llama.cpp flags:    {' '.join(llama_cpp_flags(p))}",
            f"  or kv overrides:    {' '.join(override_kv_flags(p))}",
            f"  llama-cpp-python:   Llama({model_path!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in llama_cpp_python_kwargs(p).items())
            + ")",
            "  Ollama Modelfile:   " + ollama_modelfile(p, model_path).strip().replace("\n", " | "),
        ]
        if p.method == "dynamic":
            lines.append("  note: llama.cpp has no dynamic mode; this base applies at every length")
    _emit(args, data, "\n".join(lines))
    return 0


def _show_progress(args) -> bool:
    """Progress bars go to an interactive stderr only, and only for files worth waiting on."""
    import os

    try:
        big = os.path.getsize(args.path) > 256 * 2**20
    except OSError:
        big = False
    return big and sys.stderr.isatty() and not args.json


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        el = max(time.monotonic() - start, 1e-9)
        rate = done / el
        eta = (total - done) / rate if rate > 0 else 0
        width = 30
        fill = int(width * done / total) if total else width
        sys.stderr.write(
            f"\r  [{'#' * fill}{'.' * (width - fill)}] {done / 2**30:6.2f}/{total / 2**30:.2f} GiB "
            f"{rate / 2**20:7.1f} MiB/s ETA {eta:4.0f}s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_gguf(args) -> int:
    from ropepatch.patch.gguf import inspect_gguf, patch_gguf

    ctx, method, alpha, pre = args.ctx, args.method, args.alpha, []
    if args.from_hf:
        from ropepatch.patch.translate import plan_from_hf

        if args.method_given or args.alpha is not None:
            raise UsageError("--from-hf takes the method and factor from the config; drop --method/--alpha")
        tr = plan_from_hf(args.from_hf, inspect_gguf(args.path).original, args.ctx)
        ctx, method, alpha, pre = tr.ctx, tr.method, tr.alpha, list(tr.warnings)
    elif ctx is None:
        raise UsageError("gguf: --ctx is required (or --from-hf CONFIG)")
    t0 = time.perf_counter()
    res = patch_gguf(
        args.path,
        ctx,
        method,
        alpha,
        out=args.output,
        dry_run=args.dry_run,
        record=not args.no_record,
        replace_scaling=args.replace_scaling,
        progress=_progress_printer(_show_progress(args)),
    )
    secs = time.perf_counter() - t0
    if args.from_hf:  # the patch's own dynamic warning says the same
        pre = [w for w in pre if not w.startswith("dynamic:")]
    _warn(pre + list(res.warnings))
    data = {
        "path": res.path,
        "output": res.out,
        "mode": res.mode,
        "plan": plan_dict(res.plan),
        "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in res.changes],
        "bytes_written": res.bytes_written,
        "seconds": secs,
        "warnings": list(res.warnings),
    }
    p = res.plan
    lines = [f"{res.path}: {p.method} for {p.ctx} tokens (alpha {_g(p.alpha)}, s = {p.scale:g})"]
    for c in res.changes:
        fmt = lambda v: "(absent)" if v is None else _g(v) if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(f"  {c.key}: {fmt(c.old)} -> {fmt(c.new)}")
    verb = {
        "no-op": "already patched this way: nothing written",
        "dry-run": "dry run: nothing written",
        "in-place": f"written in place ({res.bytes_written} bytes) in {secs * 1000:.1f} ms",
        "rewrite": f"rewrote {res.out} ({res.bytes_written / 2**20:.1f} MiB, tensor bytes copied by the kernel) in {secs:.2f} s",
    }[res.mode]
    lines.append(verb)
    _emit(args, data, "\n".join(lines))
    return 0


def _revert_hf(args) -> int:
    from ropepatch.patch.hf import revert_hf

    if args.output:
        raise UsageError(f"{args.path}: -o is for GGUF files; Hugging Face models are reverted in place")
    res = revert_hf(args.path, dry_run=args.dry_run, force=args.force)
    lines = [f"{res.path}: " + ("restored the original config.json and safetensors headers" if res.changed else "nothing to restore")
             + (" (dry run: nothing written)" if res.dry_run else "")]
    lines += [f"  {f.path}: {f.action}" + (f" ({f.detail})" if f.detail else "") for f in res.files]
    lines += [f"  note: {m}" for m in res.messages]
    _emit(args, res.to_dict(), "\n".join(lines))
    return 0


def cmd_hf(args) -> int:
    from ropepatch.patch.hf import patch_hf

    res = patch_hf(args.path, args.ctx, args.method, args.alpha, out=args.output, dry_run=args.dry_run,
                   replace_scaling=args.replace_scaling, force=args.force)
    lines = [f"{res.path}: {res.plan.method} for {res.plan.ctx} tokens (alpha {_g(res.plan.alpha)})"]
    for c in res.changes:
        lines.append(f"  {c.key}: {json.dumps(c.before)} -> {json.dumps(c.after)}")
    for f in res.files:
        lines.append(f"  {f.path}: {f.action}" + (f" ({f.detail})" if f.detail else ""))
    lines += [f"  note: {m}" for m in res.messages]
    if not res.changed:
        lines.append("already patched this way: nothing written")
    elif res.dry_run:
        lines.append("dry run: nothing written")
    _emit(args, res.to_dict(), "\n".join(lines))
    return 0


def cmd_validate(args) -> int:
    from ropepatch.check.validate import format_report, validate

    r = validate(args.path, ctx=args.ctx, gpu_layers=args.gpu_layers, positions=args.positions,
                 reference_forward=args.reference_forward, n_threads=args.threads)
    print(r.to_json() if args.json else format_report(r))
    return 0 if r.passed else 1


def _progress(args):
    if args.json or args.quiet or not sys.stderr.isatty():
        return None
    from ropepatch.quality.evaluate import progress_bar

    return progress_bar()


def _text_arg(path: str) -> str:
    from ropepatch.quality.evaluate import load_text

    return load_text(path)


# --flash-attn: "auto" leaves llama.cpp's own choice (it picks on when the backend supports it).
_FLASH = {"auto": None, "on": True, "off": False}


def cmd_eval(args) -> int:
    from ropepatch.quality.evaluate import evaluate, format_table, parse_alphas

    res = evaluate(args.path, args.ctx, _text_arg(args.text), methods=args.methods,
                   alphas=parse_alphas(args.alpha), buckets=args.buckets, window=not args.no_window,
                   max_windows=args.windows, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                   flash_attn=_FLASH[args.flash_attn], progress=_progress(args))
    data = res.to_json()
    if args.plot:
        from ropepatch.quality.plot import plot_result

        data["plot"] = plot_result(res, args.plot)
    text = format_table(res) + (f"\nplot: {args.plot}" if args.plot else "")
    _emit(args, data, text)
    return 0


def cmd_tune(args) -> int:
    from ropepatch.quality.tune import format_tune, tune

    res = tune(args.path, args.ctx, _text_arg(args.text), method=args.method, tolerance=args.tolerance,
               apply=args.apply, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
               flash_attn=_FLASH[args.flash_attn], progress=_progress(args))
    _emit(args, res.to_json(), format_tune(res))
    return 0


def cmd_passkey(args) -> int:
    from ropepatch.quality.evaluate import parse_alphas
    from ropepatch.quality.passkey import format_passkey, passkey

    res = passkey(args.path, args.ctx, methods=args.methods, alphas=parse_alphas(args.alpha),
                  depths=args.depths, trials=args.trials, seed=args.seed, n_threads=args.threads,
                  n_gpu_layers=args.gpu_layers, flash_attn=_FLASH[args.flash_attn],
                  progress=_progress(args))
    _emit(args, res.to_json(), format_passkey(res))
    return 0


def _positions(text: str) -> list[int]:
    from ropepatch.check.validate import parse_positions

    try:
        return parse_positions(text)
    except RopepatchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_revert(args) -> int:
    from ropepatch.patch.gguf import revert_gguf

    if _is_hf(args.path):
        return _revert_hf(args)

    t0 = time.perf_counter()
    res = revert_gguf(args.path, out=args.output, dry_run=args.dry_run,
                      progress=_progress_printer(_show_progress(args)))
    secs = time.perf_counter() - t0
    data = {
        "path": res.path,
        "output": res.out,
        "mode": res.mode,
        "header_sha256": res.sha256_header,
        "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in res.changes],
        "seconds": secs,
    }
    text = (
        f"{res.path}: restored the original header (sha256 {res.sha256_header[:16]}...), "
        f"{len(res.changes)} keys changed back"
        + (" (dry run: nothing written)" if res.mode == "dry-run" else f", {res.mode} in {secs:.2f} s")
    )
    _emit(args, data, text)
    return 0


# ---- parser -------------------------------------------------------------------------------

_METHODS_HELP = "\n".join(f"  {m.name:8} {m.summary}\n           ref: {m.reference}" for m in METHODS.values())

COMMANDS = {
    "inspect": (
        cmd_inspect,
        "show a model's RoPE settings and whether ropepatch patched it",
        "examples:\n  ropepatch inspect model.gguf\n  ropepatch inspect ./hf-model-dir --json\n"
        "  ropepatch inspect model.gguf --as-hf",
    ),
    "plan": (
        cmd_plan,
        "show what each method would write, and the equivalent runtime flags (touches no file)",
        "examples:\n  ropepatch plan model.gguf --ctx 16384\n"
        "  ropepatch plan --base 100000 --rope-dim 64 --orig-ctx 8192 --ctx 16384 --method all",
    ),
    "gguf": (
        cmd_gguf,
        "patch a GGUF model for a longer context (in place, or a copy with -o)",
        "examples:\n  ropepatch gguf model.gguf --ctx 16384\n"
        "  ropepatch gguf model.gguf --ctx 32768 --method yarn -o model-32k.gguf\n"
        "  ropepatch gguf model.gguf --from-hf ./hf-model/config.json\n"
        "  ropepatch gguf model.gguf --ctx 16384 --alpha 2.5 --dry-run\n\nmethods:\n" + _METHODS_HELP,
    ),
    "hf": (
        cmd_hf,
        "patch a Hugging Face model (config.json rope settings + safetensors provenance)",
        "examples:\n  ropepatch hf ./Qwen2.5-0.5B --ctx 65536 --method yarn\n"
        "  ropepatch hf ./model-dir --ctx 16384 --method dynamic -o ./model-16k\n"
        "  ropepatch hf ~/.cache/huggingface/hub/models--org--name/snapshots/REV --ctx 32768 --dry-run\n\nmethods:\n" + _METHODS_HELP,
    ),
    "validate": (
        cmd_validate,
        "prove in llama.cpp that the file runs with the RoPE ropepatch planned (exit 1 on any failed check)",
        "examples:\n  ropepatch validate model.gguf\n  ropepatch validate model.gguf --ctx 16384 --json\n"
        "  ropepatch validate model.gguf --gpu-layers -1 --positions 8184-8199,16368-16383\n\n"
        "checks: a. the file loads and the runtime reads back what was written; b. the ROPE op\n"
        "parameters the runtime applied equal the plan; c. a NumPy reference rotary reproduces the\n"
        "runtime's rotated Q/K past the original context; d. a NumPy reference forward pass\n"
        "reproduces the logits (small models). Needs llama-cpp-python: pip install 'ropepatch[validate]'",
    ),
    "eval": (
        cmd_eval,
        "perplexity by position for each method, applied at run time, vs the sliding-window baseline",
        "examples:\n  ropepatch eval model.gguf --ctx 16384 --text corpus.txt\n"
        "  ropepatch eval model.gguf --ctx 16384 --text corpus.txt --methods none,ntk,ntk@2.5,yarn --plot ppl.png\n\n"
        "A scaled method only earns its keep if its ppl_ext (positions past the training length)\n"
        "beats 'window': the unscaled model scoring the same tokens with a sliding window.",
    ),
    "tune": (
        cmd_tune,
        "search a method's alpha/factor for the lowest ppl_ext within a ppl_in tolerance",
        "examples:\n  ropepatch tune model.gguf --ctx 16384 --text corpus.txt\n"
        "  ropepatch tune model.gguf --ctx 16384 --text corpus.txt --method yarn --apply",
    ),
    "passkey": (
        cmd_passkey,
        "passkey retrieval (YaRN paper): can the model USE distant context at each depth?",
        "examples:\n  ropepatch passkey model.gguf --ctx 16384\n"
        "  ropepatch passkey model.gguf --ctx 16384 --methods none,ntk,yarn --depths 0.1,0.5,0.9 --trials 5",
    ),
    "revert": (
        cmd_revert,
        "restore the exact original bytes of a file or HF model ropepatch patched",
        "examples:\n  ropepatch revert model.gguf\n  ropepatch revert ./model-dir",
    ),
}


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens, found {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {s}")
    return v


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ropepatch",
        description="Extend a local LLM's context by patching its RoPE settings, safely and reversibly.",
        epilog="quick start:\n  ropepatch inspect model.gguf\n  ropepatch gguf model.gguf --ctx 16384\n"
        "  ropepatch revert model.gguf\n\nrun 'ropepatch COMMAND -h' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ropepatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {}
    for name, (_, summary, epilog) in COMMANDS.items():
        sp = sub.add_parser(
            name, help=summary, description=summary, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        parsers[name] = sp

    parsers["inspect"].add_argument("path", help="a .gguf file, or a Hugging Face model directory / .safetensors / config.json")
    parsers["inspect"].add_argument("--as-hf", action="store_true", help="print the equivalent Hugging Face rope block (GGUF only)")

    pl = parsers["plan"]
    pl.add_argument("path", nargs="?", help="a .gguf file or HF model (or give --base/--rope-dim/--orig-ctx)")
    pl.add_argument("--ctx", type=_positive_int, required=True, help="target context length in tokens")
    pl.add_argument("--method", default="all", choices=["all", *METHODS], help="one method, or all (default)")
    pl.add_argument("--alpha", type=_float, help="alpha / factor (default: ctx / original ctx)")
    pl.add_argument("--base", type=_float, help="rotary base b, without a model file")
    pl.add_argument("--rope-dim", type=_positive_int, help="rotated dims per head d, without a model file")
    pl.add_argument("--orig-ctx", type=_positive_int, help="original training context L, without a model file")
    pl.add_argument("--arch", default="llama", help="architecture name for the key names (default llama)")

    g = parsers["gguf"]
    g.add_argument("path", help="the .gguf file (for split models, the -00001-of-N file)")
    g.add_argument("--ctx", type=_positive_int, help="target context length in tokens (required unless --from-hf)")
    g.add_argument("--method", choices=list(METHODS), help=f"default {DEFAULT_METHOD}")
    g.add_argument("--from-hf", metavar="CONFIG", help="apply the rope settings of a Hugging Face config.json")
    g.add_argument("--alpha", type=_float, help="alpha / factor (default: ctx / original ctx)")
    g.add_argument("-o", "--output", help="write a patched copy here and leave PATH untouched")
    g.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    g.add_argument(
        "--no-record", action="store_true",
        help="edit existing values in place without provenance (no revert; for full disks; "
             "refused when the changes span more than one 4 KiB page)",
    )
    g.add_argument(
        "--replace-scaling", action="store_true",
        help="discard a scaling the model already has instead of refusing",
    )

    hf = parsers["hf"]
    hf.add_argument("path", help="model directory (config.json + *.safetensors), a .safetensors file or config.json")
    hf.add_argument("--ctx", type=_positive_int, required=True, help="target context length in tokens")
    hf.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"default {DEFAULT_METHOD}")
    hf.add_argument("--alpha", type=_float, help="alpha / factor (default: ctx / original ctx)")
    hf.add_argument("-o", "--output", metavar="OUTDIR", help="write a patched copy of the model here (new or empty directory)")
    hf.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    hf.add_argument("--replace-scaling", action="store_true", help="discard a scaling the config already has instead of refusing")
    hf.add_argument("--force", action="store_true", help="discard hand edits made to config.json after ropepatch patched it")

    v = parsers["validate"]
    v.add_argument("path", help="a .gguf file (patched or not)")
    v.add_argument("--ctx", type=_positive_int, help="probe positions up to ctx-1 (default: the file's context_length)")
    v.add_argument("--gpu-layers", type=int, default=0, help="n_gpu_layers for llama.cpp (-1 = all; default 0)")
    v.add_argument("--positions", type=_positions, help="check c positions, e.g. 8184-8199,16368-16383")
    v.add_argument("--reference-forward", dest="reference_forward", action="store_true", default=None,
                   help="force check d (default: run it when the model is small enough)")
    v.add_argument("--no-reference-forward", dest="reference_forward", action="store_false", help="skip check d")
    v.add_argument("--threads", type=_positive_int, help="CPU threads for the probes (default: 1 per 1e9 parameters)")

    for name in ("eval", "tune", "passkey"):
        e = parsers[name]
        e.add_argument("path", help="a .gguf file")
        e.add_argument("--ctx", type=_positive_int, required=True, help="context to evaluate at, in tokens")
        if name != "passkey":
            e.add_argument("--text", required=True, help="a text file to score (tokenized with the model's tokenizer)")
        e.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores)")
        e.add_argument("--gpu-layers", type=int, default=0, help="n_gpu_layers for llama.cpp (-1 = all)")
        e.add_argument("--flash-attn", choices=sorted(_FLASH), default="auto",
                       help="llama.cpp flash attention (default auto: the runtime decides; off was faster on CPU here)")
        e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e = parsers["eval"]
    e.add_argument("--methods", default=None, help="comma list, method@alpha allowed (default none,linear,ntk,dynamic,yarn)")
    e.add_argument("--alpha", help="alpha for every scaled method, or method=alpha,... (default ctx/L)")
    e.add_argument("--buckets", help="bucket count, or comma-separated edges (default 8 equal buckets)")
    e.add_argument("--windows", type=_positive_int, default=1, help="ctx-token windows of the text to average (default 1)")
    e.add_argument("--no-window", action="store_true", help="skip the sliding-window baseline")
    e.add_argument("--plot", metavar="OUT.png", help="write the perplexity-by-position plot (needs matplotlib)")
    t = parsers["tune"]
    t.add_argument("--method", default="ntk", choices=["ntk", "dynamic", "linear", "yarn"], help="default ntk")
    t.add_argument("--tolerance", type=_float, default=0.05, help="allowed ppl_in increase over the unscaled model (default 0.05)")
    t.add_argument("--apply", action="store_true", help="patch the file with the winner (provenance records it)")
    pk = parsers["passkey"]
    pk.add_argument("--methods", default=None, help="comma list (default none,linear,ntk,dynamic,yarn)")
    pk.add_argument("--alpha", help="alpha for every scaled method, or method=alpha,...")
    pk.add_argument("--depths", default=None, help="key depths as fractions (default 0.1,0.5,0.9)")
    pk.add_argument("--trials", type=_positive_int, default=5, help="keys per depth (default 5)")
    pk.add_argument("--seed", type=int, default=0)

    r = parsers["revert"]
    r.add_argument("path", help="a file or HF model ropepatch patched")
    r.add_argument("--force", action="store_true", help="HF: discard hand edits made to config.json after patching")
    r.add_argument("-o", "--output", help="write the restored original here and leave PATH untouched")
    r.add_argument("--dry-run", action="store_true", help="check that revert is possible, write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command == "gguf":
        args.method_given = args.method is not None
        args.method = args.method or DEFAULT_METHOD
    try:
        return COMMANDS[args.command][0](args)
    except RopepatchError as e:
        print(f"ropepatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ropepatch: interrupted; the original file is intact", file=sys.stderr)
        return 130
