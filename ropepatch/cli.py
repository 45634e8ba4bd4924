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
from dataclasses import asdict
from enum import Enum

from . import __version__
from .errors import RopepatchError, UsageError
from .methods import DEFAULT_METHOD, METHODS, Plan, make_plan
from .params import RopeParams

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
    return x


def params_dict(p: RopeParams) -> dict:
    d = _jsonable(asdict(p))
    d["freq_scale"] = p.freq_scale
    return d


def plan_dict(plan: Plan) -> dict:
    from .runtime_flags import runtime_settings

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


def cmd_inspect(args) -> int:
    from .gguf_patch import inspect_gguf

    info = inspect_gguf(args.path)
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
        from .gguf_patch import inspect_gguf

        info = inspect_gguf(args.path)
        return info.original, args.path
    missing = [n for n, v in (("--base", args.base), ("--rope-dim", args.rope_dim), ("--orig-ctx", args.orig_ctx)) if v is None]
    if missing:
        raise UsageError(f"plan: without a model PATH, {', '.join(missing)} must be given")
    from .keys import rope_layout

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


def cmd_plan(args) -> int:
    from .runtime_flags import llama_cpp_flags, llama_cpp_python_kwargs, ollama_modelfile, override_kv_flags

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
    from .gguf_patch import patch_gguf

    t0 = time.perf_counter()
    res = patch_gguf(
        args.path,
        args.ctx,
        args.method,
        args.alpha,
        out=args.output,
        dry_run=args.dry_run,
        record=not args.no_record,
        replace_scaling=args.replace_scaling,
        progress=_progress_printer(_show_progress(args)),
    )
    secs = time.perf_counter() - t0
    _warn(res.warnings)
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


def cmd_revert(args) -> int:
    from .gguf_patch import revert_gguf

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
        "example:\n  ropepatch inspect model.gguf\n  ropepatch inspect model.gguf --json",
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
        "  ropepatch gguf model.gguf --ctx 16384 --alpha 2.5 --dry-run\n\nmethods:\n" + _METHODS_HELP,
    ),
    "revert": (
        cmd_revert,
        "restore the exact original bytes of a file ropepatch patched",
        "example:\n  ropepatch revert model.gguf",
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

    parsers["inspect"].add_argument("path", help="a .gguf file")

    pl = parsers["plan"]
    pl.add_argument("path", nargs="?", help="a .gguf file (or give --base/--rope-dim/--orig-ctx)")
    pl.add_argument("--ctx", type=_positive_int, required=True, help="target context length in tokens")
    pl.add_argument("--method", default="all", choices=["all", *METHODS], help="one method, or all (default)")
    pl.add_argument("--alpha", type=_float, help="alpha / factor (default: ctx / original ctx)")
    pl.add_argument("--base", type=_float, help="rotary base b, without a model file")
    pl.add_argument("--rope-dim", type=_positive_int, help="rotated dims per head d, without a model file")
    pl.add_argument("--orig-ctx", type=_positive_int, help="original training context L, without a model file")
    pl.add_argument("--arch", default="llama", help="architecture name for the key names (default llama)")

    g = parsers["gguf"]
    g.add_argument("path", help="the .gguf file (for split models, the -00001-of-N file)")
    g.add_argument("--ctx", type=_positive_int, required=True, help="target context length in tokens")
    g.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"default {DEFAULT_METHOD}")
    g.add_argument("--alpha", type=_float, help="alpha / factor (default: ctx / original ctx)")
    g.add_argument("-o", "--output", help="write a patched copy here and leave PATH untouched")
    g.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    g.add_argument(
        "--no-record", action="store_true",
        help="edit existing values in place without provenance (no revert; for full disks)",
    )
    g.add_argument(
        "--replace-scaling", action="store_true",
        help="discard a scaling the model already has instead of refusing",
    )

    r = parsers["revert"]
    r.add_argument("path", help="a file ropepatch patched")
    r.add_argument("-o", "--output", help="write the restored original here and leave PATH untouched")
    r.add_argument("--dry-run", action="store_true", help="check that revert is possible, write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][0](args)
    except RopepatchError as e:
        print(f"ropepatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ropepatch: interrupted; the original file is intact", file=sys.stderr)
        return 130
