"""Shared by the test_fixtures_*.py files: the fixture generator (tools/make_fixtures.py), the
committed fixtures/ folder, the GGUF fixtures' names, architectures and quantizations, and the
dequantized tensors of a GGUF file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
TOOL = REPO / "tools" / "make_fixtures.py"

sys.path.insert(0, str(TOOL.parent))
import make_fixtures as mf  # noqa: E402

sys.path.pop(0)

GGUF_NAMES = [name for name, _, _ in mf.GGUF_FILES]
ARCH_OF = {name: arch for name, arch, _ in mf.GGUF_FILES}
QTYPE_OF = {name: q for name, _, q in mf.GGUF_FILES}


def gguf_arrays(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    out = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out
