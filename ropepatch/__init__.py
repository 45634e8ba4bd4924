"""ropepatch: extend a model's context by patching its RoPE settings, safely and reversibly.

Public API (everything else is private):

    inspect_gguf(path) -> ModelInfo
    make_plan(original: RopeParams, ctx, method="ntk", alpha=None) -> Plan
    patch_gguf(path, ctx, method="ntk", alpha=None, out=None, dry_run=False, record=True) -> PatchResult
    revert_gguf(path, out=None) -> RevertResult
    METHODS, RopeParams, RopepatchError
"""

__version__ = "0.1.0"

from .errors import RopepatchError  # noqa: E402
from .gguf_patch import inspect_gguf, patch_gguf, revert_gguf  # noqa: E402
from .methods import METHODS, make_plan  # noqa: E402
from .params import RopeParams  # noqa: E402

__all__ = [
    "METHODS",
    "RopeParams",
    "RopepatchError",
    "inspect_gguf",
    "make_plan",
    "patch_gguf",
    "revert_gguf",
    "__version__",
]
