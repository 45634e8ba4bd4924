"""ggml tensor types: block size and bytes per block of each type id, and a tensor's size."""

from __future__ import annotations

# ggml type id -> (elements per block, bytes per block); checked against gguf's table in tests.
GGML_BLOCK_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}


def ggml_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int | None:
    """Bytes of a tensor; None for a type this table does not know (its bounds go unchecked)."""
    if ggml_type not in GGML_BLOCK_SIZES:
        return None
    block, type_size = GGML_BLOCK_SIZES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size
