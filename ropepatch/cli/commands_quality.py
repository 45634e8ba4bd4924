"""``ropepatch validate`` / ``eval`` / ``tune`` / ``passkey``: run the model in llama.cpp.

Each runs its llama.cpp work in the runtime worker (``*_isolated``): a native crash there is
one line on stderr and exit status 1; ``validate`` still prints the checks that finished."""

from __future__ import annotations

from ropepatch.cli.options import FLASH_ATTN
from ropepatch.cli.progress import quality_progress
from ropepatch.cli.render import emit
from ropepatch.cli.streams import out
from ropepatch.errors import RopepatchError


class RuntimeCrashReported(RopepatchError):
    """validate's runtime crashed after its report was printed: the crash line, exit 1."""

    exit_code = 1
    reported = True  # the --json report already holds it (``crash``): no second JSON document


def _model_arg(path: str) -> str:
    """The model must be a regular file: checked here, before a runtime worker starts (a
    missing file or a FIFO is one line at once, and never reaches llama.cpp)."""
    from ropepatch.safeio.paths import regular_input

    regular_input(path, "GGUF file")
    return path


def cmd_validate(args) -> int:
    """Prove in llama.cpp that the file runs with the planned RoPE (exit 1 on a failed check)."""
    from ropepatch.check.isolated import validate_isolated
    from ropepatch.check.validate import format_report

    _model_arg(args.path)
    r = validate_isolated(args.path, ctx=args.ctx, gpu_layers=args.gpu_layers, positions=args.positions,
                          reference_forward=args.reference_forward, n_threads=args.threads)
    out(r.to_json() if args.json else format_report(r))
    if r.crash:
        raise RuntimeCrashReported(r.crash)
    return 0 if r.passed else 1



def _text_arg(path: str) -> str:
    from ropepatch.quality.evaluate import load_text

    return load_text(path)


def cmd_eval(args) -> int:
    """Perplexity by position for each method vs the sliding-window baseline."""
    from ropepatch.quality.evaluate import format_table, parse_alphas
    from ropepatch.quality.isolated import evaluate_isolated

    path = _model_arg(args.path)
    if args.plot:  # before an hour of scoring: a plot that cannot be written is refused now
        from ropepatch.quality.plot import check_plot_target

        check_plot_target(args.plot)
    res = evaluate_isolated(path, args.ctx, _text_arg(args.text), methods=args.methods,
                   alphas=parse_alphas(args.alpha), buckets=args.buckets, window=not args.no_window,
                   max_windows=args.windows, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                   flash_attn=FLASH_ATTN[args.flash_attn], progress=quality_progress(args))
    data = res.to_json()
    if args.plot:
        from ropepatch.quality.plot import plot_result

        data["plot"] = plot_result(res, args.plot)
    text = format_table(res) + (f"\nplot: {args.plot}" if args.plot else "")
    emit(args, data, text)
    return 0


def cmd_tune(args) -> int:
    """Search a method's (or every method's) alpha for the lowest ppl_ext within a ppl_in
    tolerance, against the sliding window. ``--apply`` writes the winner after the search; a
    refusal (nothing feasible, or the window beats it without ``--force``) still prints the
    result, then one error line (exit 2, nothing written)."""
    from ropepatch.cli.render import warn
    from ropepatch.errors import UsageError
    from ropepatch.quality.isolated import tune_isolated
    from ropepatch.quality.tune import ApplyRefused, apply_tune, format_tune

    if args.force and not args.apply:
        raise UsageError("--force only matters with --apply (it writes a winner the sliding window beats); "
                         "add --apply, or drop --force")
    path = _model_arg(args.path)
    res = tune_isolated(path, args.ctx, _text_arg(args.text), method=args.method, tolerance=args.tolerance,
               budget=args.budget, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
               flash_attn=FLASH_ATTN[args.flash_attn], progress=quality_progress(args))
    if args.apply:
        try:
            res = apply_tune(path, res, force=args.force)
        except ApplyRefused as e:
            emit(args, {**res.to_json(), "refused": str(e)}, format_tune(res))
            e.reported = True  # the --json document above carries it
            raise
    warn(res.warnings)
    emit(args, res.to_json(), format_tune(res))
    return 0


def cmd_passkey(args) -> int:
    """Passkey retrieval at each depth: can the model use distant context?"""
    from ropepatch.quality.evaluate import parse_alphas
    from ropepatch.quality.isolated import passkey_isolated
    from ropepatch.quality.passkey import format_passkey

    res = passkey_isolated(_model_arg(args.path), args.ctx, methods=args.methods, alphas=parse_alphas(args.alpha),
                  depths=args.depths, trials=args.trials, seed=args.seed, n_threads=args.threads,
                  n_gpu_layers=args.gpu_layers, flash_attn=FLASH_ATTN[args.flash_attn],
                  progress=quality_progress(args))
    emit(args, res.to_json(), format_passkey(res))
    return 0
