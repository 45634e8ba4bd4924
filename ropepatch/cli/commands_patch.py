"""``ropepatch gguf`` / ``hf`` / ``revert``: write a plan into a model, or restore its original."""

from __future__ import annotations

import json
import os
import time

from ropepatch.cli.commands_inspect import is_hf
from ropepatch.cli.commands_plan import factor_line, method_options, next_step_lines
from ropepatch.cli.progress import byte_progress, show_progress
from ropepatch.cli.render import emit, file_lines, g, note_lines, plan_dict, warn
from ropepatch.errors import UsageError
from ropepatch.rope.methods import DEFAULT_METHOD, method_note


def _gguf_target(args) -> tuple[int, str, float | None, list[str]]:
    """ctx, method, alpha and translation warnings: from --ctx/--method/--alpha or --from-hf."""
    method_given = args.method is not None
    ctx, method, alpha, pre = args.ctx, args.method or DEFAULT_METHOD, args.alpha, []
    if args.from_hf:
        from ropepatch.patch.gguf import inspect_gguf
        from ropepatch.patch.translate import plan_from_hf

        if method_given or args.alpha is not None:
            raise UsageError("--from-hf takes the method and factor from the config; drop --method/--alpha")
        tr = plan_from_hf(args.from_hf, inspect_gguf(args.path).original, args.ctx)
        ctx, method, alpha, pre = tr.ctx, tr.method, tr.alpha, list(tr.warnings)
    elif ctx is None:
        raise UsageError("gguf: --ctx is required (or --from-hf CONFIG)")
    return ctx, method, alpha, pre


def cmd_gguf(args) -> int:
    """Patch a GGUF file (in place, or a copy with -o) and print the changed keys."""
    from ropepatch.patch.gguf import patch_gguf

    ctx, method, alpha, pre = _gguf_target(args)
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
        progress=byte_progress(show_progress(args)),
        force=args.force,
        options=method_options(args, method),
    )
    secs = time.perf_counter() - t0
    if args.from_hf and method_note(res.plan, "gguf_note"):  # the patch's own note says the same
        pre = [w for w in pre if not w.startswith(f"{res.plan.method}:")]
    warn(pre + list(res.warnings))
    data = {
        "path": res.path,
        "output": res.out,
        "mode": res.mode,
        "plan": {**plan_dict(res.plan), "options": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in res.plan.options}},
        "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in res.changes],
        "tensor_change": res.tensor_change or None,
        "bytes_written": res.bytes_written,
        "data_bytes_written": res.data_bytes,
        "seconds": secs,
        "warnings": list(res.warnings),
    }
    text = _gguf_text(res, secs)
    data["next_steps"] = _gguf_next_steps(res)
    if data["next_steps"]:
        text += "\n".join(["", f"run it at {res.plan.ctx} tokens:", *next_step_lines(data["next_steps"])])
    emit(args, data, text)
    return 0


def _gguf_next_steps(res) -> dict[str, str] | None:
    """The commands that run the written (or already patched) file; None when no file carries
    the plan (a dry run; a no-op whose -o file was not written)."""
    from ropepatch.rope.runtime_flags import next_steps

    if res.mode == "dry-run" or (res.mode == "no-op" and res.out != res.path):
        return None
    return next_steps(res.plan.ctx, os.path.abspath(res.out))


def _value(v) -> str:
    return "(absent)" if v is None else g(v) if isinstance(v, float) else str(v)


def _gguf_text(res, secs: float) -> str:
    p = res.plan
    lines = [f"{res.path}: {p.method} for {p.ctx} tokens (alpha {g(p.alpha)}, s = {p.scale:g})"]
    for c in res.changes:
        lines.append(f"  {c.key}: {_value(c.old)} -> {_value(c.new)}")
    if res.tensor_change:
        lines.append(f"  {res.tensor_change}")
    if fl := factor_line(p):
        lines.append(f"  {fl}")
    data = f", {res.data_bytes} of them tensor data" if res.data_bytes else ""
    verb = {
        "no-op": "already patched this way: nothing written",
        "dry-run": "dry run: nothing written",
        "in-place": f"written in place ({res.bytes_written} bytes{data}) in {secs * 1000:.1f} ms",
        "rewrite": f"rewrote {res.out} ({res.bytes_written / 2**20:.1f} MiB, tensor bytes copied by the kernel) "
        f"in {secs:.2f} s",
    }[res.mode]
    lines.append(verb)
    return "\n".join(lines)


def cmd_hf(args) -> int:
    """Patch a Hugging Face model's config.json (and safetensors provenance)."""
    from ropepatch.patch.hf import patch_hf

    res = patch_hf(args.path, args.ctx, args.method, args.alpha, out=args.output, dry_run=args.dry_run,
                   replace_scaling=args.replace_scaling, force=args.force)
    lines = [f"{res.path}: {res.plan.method} for {res.plan.ctx} tokens (alpha {g(res.plan.alpha)})"]
    for c in res.changes:
        lines.append(f"  {c.key}: {json.dumps(c.before)} -> {json.dumps(c.after)}")
    lines += file_lines(res.files)
    lines += note_lines(res.messages)
    if not res.changed:
        lines.append("already patched this way: nothing written")
    elif res.dry_run:
        lines.append("dry run: nothing written")
    emit(args, res.to_dict(), "\n".join(lines))
    return 0


def cmd_revert(args) -> int:
    """Restore the exact original bytes of a GGUF or HF model ropepatch patched."""
    from ropepatch.patch.gguf import revert_gguf

    if is_hf(args.path):
        return _revert_hf(args)

    t0 = time.perf_counter()
    res = revert_gguf(args.path, out=args.output, dry_run=args.dry_run,
                      progress=byte_progress(show_progress(args)))
    secs = time.perf_counter() - t0
    warn(list(res.messages))
    data = {
        "path": res.path,
        "output": res.out,
        "mode": res.mode,
        "header_sha256": res.sha256_header,
        "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in res.changes],
        "tensor_change": res.tensor_change or None,
        "seconds": secs,
        "messages": list(res.messages),
    }
    head = f"the original header (sha256 {res.sha256_header[:16]}...)"
    if res.mode == "dry-run":
        text = (f"{res.path}: would restore {head}, {len(res.changes)} keys would change back "
                "(dry run: nothing written)")
    else:
        text = f"{res.path}: restored {head}, {len(res.changes)} keys changed back, {res.mode} in {secs:.2f} s"
    if res.tensor_change:
        text += f"\n  {res.tensor_change.replace('data changed', 'original data restored')}"
    emit(args, data, text)
    return 0


def _revert_hf(args) -> int:
    from ropepatch.patch.hf import revert_hf

    res = revert_hf(args.path, dry_run=args.dry_run, force=args.force, out=args.output)
    what = "the original config.json and safetensors headers"
    if not res.changed:
        done = "nothing to restore"
    else:
        done = f"would restore {what}" if res.dry_run else f"restored {what}"
    lines = [f"{res.path}: " + done + (" (dry run: nothing written)" if res.dry_run else "")]
    lines += file_lines(res.files)
    lines += note_lines(res.messages)
    emit(args, res.to_dict(), "\n".join(lines))
    return 0
