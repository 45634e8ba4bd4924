"""``ropepatch inspect``: a model's RoPE settings and whether ropepatch patched it."""

from __future__ import annotations

from ropepatch.cli.render import (
    describe_effects,
    describe_hf_rope,
    describe_params,
    dumps,
    emit,
    g,
    note_lines,
    params_dict,
)
from ropepatch.errors import UsageError
from ropepatch.rope.effects import effects_for


def is_hf(path: str) -> bool:
    """Whether ``path`` names a Hugging Face model (directory, config.json or .safetensors)."""
    from ropepatch.patch.hf import is_hf_path

    return is_hf_path(path)


def cmd_inspect(args) -> int:
    """Print a GGUF's or HF model's RoPE settings (or, ``--as-hf``, a GGUF's HF rope block)."""
    from ropepatch.patch.gguf import inspect_gguf

    if is_hf(args.path):
        if args.as_hf:
            raise UsageError(f"{args.path}: --as-hf is for GGUF files; this is already a Hugging Face model")
        return _inspect_hf(args)
    info = inspect_gguf(args.path)
    if args.as_hf:
        from ropepatch.patch.translate import gguf_as_hf

        block = gguf_as_hf(info)
        emit(args, block, dumps(block))
        return 0
    swa = _file_swa_base(info)
    emit(args, {**_gguf_dict(info), "effects": {**effects_for(info.current.arch).to_dict(), "file_freq_base_swa": swa}},
         _gguf_text(info) + "\n" + describe_effects(effects_for(info.current.arch), swa))
    return 0


def _file_swa_base(info) -> float | None:
    """The file's ``{arch}.rope.freq_base_swa`` (None when it has none): the base llama.cpp gives
    sliding-window layers instead of rope.freq_base, for architectures that read it."""
    from ropepatch.formats.gguf.header import read_header

    kv = read_header(info.path).entry(f"{info.current.arch}.rope.freq_base_swa")
    return float(kv.value) if kv is not None and isinstance(kv.value, (int, float)) else None


def _gguf_dict(info) -> dict:
    prov = info.provenance
    return {
        "path": info.path,
        "format": info.format,
        "current": params_dict(info.current),
        "original": params_dict(info.original),
        "patched_by_ropepatch": prov is not None,
        "provenance": None
        if prov is None
        else {"version": prov.version, "method": prov.method, "ctx": prov.ctx, "alpha": prov.alpha,
              "options": {name: list(v) if isinstance(v, tuple) else v for name, v in prov.options.items()},
              "replace_scaling": prov.replace_scaling},
        "split": list(info.split) if info.split else None,
        "file_size": info.file_size,
        "n_tensors": info.n_tensors,
        "n_kv": info.n_kv,
        "reserved_header_bytes": info.slack,
    }


def _gguf_text(info) -> str:
    prov = info.provenance
    lines = [f"{info.path} (GGUF, {info.file_size / 2**20:.1f} MiB, {info.n_tensors} tensors)"]
    if info.split:
        lines.append(f"  split {info.split[0]} of {info.split[1]} (hyperparameters live in split 1)")
    lines.append("  now:      " + describe_params(info.current))
    if prov is None:
        lines.append("  not patched by ropepatch")
    else:
        lines.append(
            f"  patched by ropepatch {prov.version}: method {prov.method}, ctx {prov.ctx}, "
            f"alpha {g(prov.alpha)}; {info.slack} bytes reserved for in-place re-patches"
        )
        if prov.options or prov.replace_scaling:
            lines.append("  options:  " + options_text(prov.options, prov.replace_scaling))
        lines.append("  original: " + describe_params(info.original))
    return "\n".join(lines)


def options_text(options: dict, replaced: bool) -> str:
    """The recorded method options in one line: ``points 1, 1.5, 3`` / ``beta_fast 32, beta_slow 1``."""
    def shown(v) -> str:
        if not isinstance(v, tuple):
            return "default" if v is None else g(v)
        more = f", ... ({len(v)} values)" if len(v) > 12 else ""  # a damaged record: no screenful
        return ", ".join(g(x) for x in v[:12]) + more

    parts = [f"{name} {shown(v)}" for name, v in sorted(options.items())]
    if replaced:
        parts.append("the factors replaced the file's own rope_freqs (--replace-scaling)")
    return "; ".join(parts)


def _inspect_hf(args) -> int:
    from ropepatch.patch.hf import inspect_hf

    info = inspect_hf(args.path)
    lines = [f"{info.model.root} (Hugging Face, config {info.model.config_path}, "
             f"{len(info.shards)} safetensors file(s))",
             "  now:      " + describe_hf_rope(info.rope)]
    if info.patched and info.record:
        rec = info.record
        lines.append(f"  patched by ropepatch {rec.get('version')}: method {rec.get('method')}, "
                     f"ctx {rec.get('ctx')}, alpha {rec.get('alpha')}")
        if info.original is not None:
            lines.append("  original: " + describe_hf_rope(info.original))
    else:
        lines.append("  not patched by ropepatch")
    lines += note_lines(info.messages)
    emit(args, info.to_dict(), "\n".join(lines))
    return 0
