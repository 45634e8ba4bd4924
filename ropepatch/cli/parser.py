"""The argparse parser: global options, then one small function per command's arguments."""

from __future__ import annotations

import argparse
import sys

from ropepatch.cli.commands import COMMANDS
from ropepatch.cli.options import FLASH_ATTN, number, positions, positive_int, seed, thread_count, trial_count
from ropepatch.cli.streams import say_error
from ropepatch.rope.methods import DEFAULT_METHOD, METHODS
from ropepatch.version import __version__

_ALPHA_HELP = "alpha / factor (default: ctx / original ctx)"
_DRY_RUN_HELP = "show the changes, write nothing"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ONE line (not argparse's usage block), naming the
    command's ``-h``; exit status 2. Subparsers are of this class too."""

    def error(self, message: str, command: str | None = None):
        words = self.prog.split()
        command = command or (words[1] if len(words) > 1 else None)
        see = f"ropepatch {command} -h" if command else "ropepatch -h"
        say_error(f"ropepatch: error: {message}; see '{see}'")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        """argparse's, with unrecognized arguments naming the command they were given to."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}", getattr(parsed, "command", None))
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``ropepatch`` parser with every command of :data:`COMMANDS`."""
    p = Parser(
        prog="ropepatch",
        description="Extend a local LLM's context by patching its RoPE settings, safely and reversibly.",
        epilog="quick start:\n  ropepatch inspect model.gguf\n  ropepatch gguf model.gguf --ctx 16384\n"
        "  ropepatch revert model.gguf\n\nrun 'ropepatch COMMAND -h' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ropepatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary, epilog) in COMMANDS.items():
        sp = sub.add_parser(
            name, help=summary, description=summary, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        _ARGUMENTS[name](sp)
    return p


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a .gguf file, or a Hugging Face model directory / .safetensors / config.json")
    p.add_argument("--as-hf", action="store_true", help="print the equivalent Hugging Face rope block (GGUF only)")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="a .gguf file or HF model (or give --base/--rope-dim/--orig-ctx)")
    p.add_argument("--ctx", type=positive_int, required=True, help="target context length in tokens")
    p.add_argument("--method", default="all", choices=["all", *METHODS], help="one method, or all (default)")
    p.add_argument("--alpha", type=number, help=_ALPHA_HELP)
    p.add_argument("--base", type=number, help="rotary base b, without a model file")
    p.add_argument("--rope-dim", type=positive_int, help="rotated dims per head d, without a model file")
    p.add_argument("--orig-ctx", type=positive_int, help="original training context L, without a model file")
    p.add_argument("--arch", default="llama", help="architecture name for the key names (default llama)")
    _method_option_args(p, "plan model.gguf --ctx 16384")


def _method_option_args(p: argparse.ArgumentParser, example: str) -> None:
    """Each registry method option's flag (ntk-parts' --beta-fast/--beta-slow, factors'
    --factors, --attn-factor), given to the method as ``options``; help examples for the factor methods."""
    seen: set[str] = set()
    for m in METHODS.values():
        for o in m.options:
            if o.flag in seen:
                continue
            seen.add(o.flag)
            points = o.name == "points"
            p.add_argument(o.flag, dest=o.name, default=None, type=str if points else number,
                           metavar="P1,...,PK" if points else "X",
                           help=f"{m.name} only: {o.help}" + ("" if points else f" (default {o.default:g})"))
    p.epilog = (p.epilog or "") + (
        f"\n\nper-pair frequency factors (rope_freqs.weight, or a LongRoPE file's rope_factors_long.weight, "
        f"which they multiply; GGUF, llama-family and LongRoPE models only):\n"
        f"  ropepatch {example} --method ntk-parts --beta-fast 32 --beta-slow 1\n"
        f"  ropepatch {example} --method factors --factors 1,1,1.5,2,3,4\n"
        f"  ropepatch {example} --method factors --attn-factor 1.139   # YaRN's 1 + 0.1 ln s at s = 4")


def _gguf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the .gguf file (for split models, the -00001-of-N file)")
    p.add_argument("--ctx", type=positive_int, help="target context length in tokens (required unless --from-hf)")
    p.add_argument("--method", choices=list(METHODS), help=f"default {DEFAULT_METHOD}")
    p.add_argument("--from-hf", metavar="CONFIG", help="apply the rope settings of a Hugging Face config.json")
    p.add_argument("--alpha", type=number, help=_ALPHA_HELP)
    p.add_argument("-o", "--output", help="write a patched copy here and leave PATH untouched")
    p.add_argument("--force", action="store_true", help="let -o replace a file that already exists")
    p.add_argument("--dry-run", action="store_true", help=_DRY_RUN_HELP)
    p.add_argument(
        "--no-record", action="store_true",
        help="edit existing values in place without provenance (no revert; for full disks; "
             "refused when the changes span more than one 4 KiB page)",
    )
    p.add_argument(
        "--replace-scaling", action="store_true",
        help="discard a scaling the model already has instead of refusing",
    )
    _method_option_args(p, "gguf model.gguf --ctx 16384")


def _hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory (config.json + *.safetensors), a .safetensors file or config.json")
    p.add_argument("--ctx", type=positive_int, required=True, help="target context length in tokens")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"default {DEFAULT_METHOD}")
    p.add_argument("--alpha", type=number, help=_ALPHA_HELP)
    p.add_argument("-o", "--output", metavar="OUTDIR",
                   help="write a patched copy of the model here (new or empty directory)")
    p.add_argument("--dry-run", action="store_true", help=_DRY_RUN_HELP)
    p.add_argument("--replace-scaling", action="store_true",
                   help="discard a scaling the config already has instead of refusing")
    p.add_argument("--force", action="store_true",
                   help="discard hand edits made to config.json after ropepatch patched it")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a .gguf file (patched or not)")
    p.add_argument("--ctx", type=positive_int, help="probe positions up to ctx-1 (default: the file's context_length)")
    p.add_argument("--gpu-layers", type=int, default=0, help="n_gpu_layers for llama.cpp (-1 = all; default 0)")
    p.add_argument("--positions", type=positions, help="check c positions, e.g. 8184-8199,16368-16383")
    p.add_argument("--reference-forward", dest="reference_forward", action="store_true", default=None,
                   help="force check d (default: run it when the model is small enough)")
    p.add_argument("--no-reference-forward", dest="reference_forward", action="store_false", help="skip check d")
    p.add_argument("--threads", type=thread_count,
                   help="CPU threads for the probes (default: 1 per 1e9 parameters)")


def _runtime_args(p: argparse.ArgumentParser, text: bool) -> None:
    """The arguments eval, tune and passkey share (``--text`` for the first two)."""
    p.add_argument("path", help="a .gguf file")
    p.add_argument("--ctx", type=positive_int, required=True, help="context to evaluate at, in tokens")
    if text:
        p.add_argument("--text", required=True, help="a text file to score (tokenized with the model's tokenizer)")
    p.add_argument("--threads", type=thread_count, help="CPU threads (default: all cores)")
    p.add_argument("--gpu-layers", type=int, default=0, help="n_gpu_layers for llama.cpp (-1 = all)")
    p.add_argument("--flash-attn", choices=sorted(FLASH_ATTN), default="auto",
                   help="llama.cpp flash attention (default auto: the runtime decides; off was faster on CPU here)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _runtime_args(p, text=True)
    p.add_argument("--methods", default=None,
                   help="comma list, method@alpha allowed (default none,linear,ntk,dynamic,yarn)")
    p.add_argument("--alpha", help="alpha for every scaled method, or method=alpha,... (default ctx/L)")
    p.add_argument("--buckets", help="bucket count, or comma-separated edges (default 8 equal buckets)")
    p.add_argument("--windows", type=positive_int, default=1, metavar="K",
                   help="score K consecutive ctx-token windows of the text and report 95%% intervals "
                        "(Student t over the K windows; the verdict pairs each method with window, window "
                        "by window). Default 1: intervals from blocks of the one window, a rough guide")
    p.add_argument("--no-window", action="store_true", help="skip the sliding-window baseline")
    p.add_argument("--plot", metavar="OUT.png", help="write the perplexity-by-position plot (needs matplotlib)")


def _tune_args(p: argparse.ArgumentParser) -> None:
    _runtime_args(p, text=True)
    tunable = [name for name, m in METHODS.items() if m.takes_alpha]
    p.add_argument("--method", default=DEFAULT_METHOD, choices=[*tunable, "all"],
                   help=f"the method to tune, or all: every method on the same tokens, the best of them "
                        f"wins (default {DEFAULT_METHOD})")
    p.add_argument("--tolerance", type=number, default=0.05,
                   help="allowed ppl_in increase over the unscaled model (default 0.05)")
    p.add_argument("--budget", type=number, metavar="MINUTES",
                   help="time limit of the factors search (default 30 minutes); alpha searches take none")
    p.add_argument("--apply", action="store_true",
                   help="patch the file with the winner (provenance records it); refused when the "
                        "sliding window beats it (extension does not pay) unless --force")
    p.add_argument("--force", action="store_true",
                   help="with --apply: write the winner even when the sliding window beats it (with a warning)")


def _passkey_args(p: argparse.ArgumentParser) -> None:
    _runtime_args(p, text=False)
    p.add_argument("--methods", default=None, help="comma list (default none,linear,ntk,dynamic,yarn)")
    p.add_argument("--alpha", help="alpha for every scaled method, or method=alpha,...")
    p.add_argument("--depths", default=None, help="key depths as fractions (default 0.1,0.5,0.9)")
    p.add_argument("--trials", type=trial_count, default=5,
                   help="keys per depth (default 5); accuracies come with 95%% Wilson intervals")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random 5-digit keys (default 0)")


def _revert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a file or HF model ropepatch patched")
    p.add_argument("--force", action="store_true", help="HF: discard hand edits made to config.json after patching")
    p.add_argument("-o", "--output",
                   help="write the restored original here and leave PATH untouched (a GGUF file, or a "
                        "new directory for an HF model)")
    p.add_argument("--dry-run", action="store_true", help="check that revert is possible, write nothing")


_ARGUMENTS = {
    "inspect": _inspect_args,
    "plan": _plan_args,
    "gguf": _gguf_args,
    "hf": _hf_args,
    "validate": _validate_args,
    "eval": _eval_args,
    "tune": _tune_args,
    "passkey": _passkey_args,
    "revert": _revert_args,
}
