"""The command table: name -> (handler, one-line summary, ``-h`` epilog with examples)."""

from __future__ import annotations

from ropepatch.cli.commands_inspect import cmd_inspect
from ropepatch.cli.commands_patch import cmd_gguf, cmd_hf, cmd_revert
from ropepatch.cli.commands_plan import cmd_plan
from ropepatch.cli.commands_quality import cmd_eval, cmd_passkey, cmd_tune, cmd_validate
from ropepatch.rope.methods import METHODS

_METHODS_HELP = "\n".join(f"  {m.name:8} {m.summary}\n           ref: {m.reference}" for m in METHODS.values())

COMMANDS = {
    "inspect": (
        cmd_inspect,
        "show a model's RoPE settings, whether ropepatch patched it, and (GGUF) what llama.cpp reads for "
        "its architecture",
        "examples:\n  ropepatch inspect model.gguf\n  ropepatch inspect ./hf-model-dir --json\n"
        "  ropepatch inspect model.gguf --as-hf\n"
        "  ropepatch inspect model.gguf --json   # \"effects\": the effect map row (docs/effects.md)",
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
        "  ropepatch hf ~/.cache/huggingface/hub/models--org--name/snapshots/REV --ctx 32768 --dry-run\n\n"
        "methods:\n" + _METHODS_HELP,
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
        "  ropepatch eval model.gguf --ctx 16384 --text corpus.txt --methods none,ntk,ntk@2.5,yarn --plot ppl.png\n"
        "  ropepatch eval model.gguf --ctx 16384 --text corpus.txt --windows 4 --methods ntk,yarn\n\n"
        "A scaled method only earns its keep if its ppl_ext (positions past the training length)\n"
        "beats 'window': the unscaled model scoring the same tokens with a sliding window.\n"
        "With --windows K (K >= 2) ppl_in / ppl_ext come with 95% intervals over the K windows, and\n"
        "'beats' means the paired interval of ppl_ext / window's ppl_ext lies entirely below 1.",
    ),
    "tune": (
        cmd_tune,
        "search a method's alpha/factor for the lowest ppl_ext within a ppl_in tolerance, and say "
        "whether it beats the sliding window",
        "examples:\n  ropepatch tune model.gguf --ctx 16384 --text corpus.txt\n"
        "  ropepatch tune model.gguf --ctx 16384 --text corpus.txt --method yarn --apply\n"
        "  ropepatch tune model.gguf --ctx 16384 --text corpus.txt --method all --apply\n"
        "  ropepatch tune model.gguf --ctx 16384 --text corpus.txt --method factors --budget 20 --apply\n"
        "  ropepatch tune model.gguf --ctx 32768 --text corpus.txt --method ntk --apply --force\n\n"
        "Every run also measures 'window' (the unscaled model scoring the same tokens with a sliding\n"
        "window of its training length, stride half of it). When no candidate within the ppl_in\n"
        "tolerance beats it on ppl_ext (the paired 95% interval of the ratio wholly below 1, as in\n"
        "eval; a tie does not pay), tune says 'extension does not pay here: use a sliding window',\n"
        "and --apply refuses to write the winner (exit 2, file untouched) unless --force is given.",
    ),
    "passkey": (
        cmd_passkey,
        "passkey retrieval (YaRN paper): can the model USE distant context at each depth?",
        "examples:\n  ropepatch passkey model.gguf --ctx 16384\n"
        "  ropepatch passkey model.gguf --ctx 16384 --methods none,ntk,yarn --depths 0.1,0.5,0.9 --trials 10\n\n"
        "Each accuracy comes with its 95% Wilson interval; a method 'passes' only when the interval of\n"
        "its accuracy over all depths lies at or above 80% and no depth's lies below it.",
    ),
    "revert": (
        cmd_revert,
        "restore the exact original bytes of a file or HF model ropepatch patched",
        "examples:\n  ropepatch revert model.gguf\n  ropepatch revert ./model-dir",
    ),
}
