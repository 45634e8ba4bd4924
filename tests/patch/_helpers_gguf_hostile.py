"""Shared by the test_gguf_hostile_*.py files: the fixture they copy, its sha256, and a snapshot
of every entry under a directory (to prove nothing was written)."""

from __future__ import annotations

import os
import stat

from conftest import FIXTURES, sha256

FIXTURE = "tiny-llama-f32.gguf"
PRISTINE = sha256(FIXTURES / FIXTURE)


def tree(d) -> dict:
    """Name -> (kind, sha256 or link text) of every entry under ``d`` (nothing written?)."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            out[os.path.relpath(p, d)] = (stat.S_IFMT(st.st_mode), os.readlink(p) if stat.S_ISLNK(st.st_mode)
                                          else sha256(p) if stat.S_ISREG(st.st_mode) else st.st_ino)
    return out
