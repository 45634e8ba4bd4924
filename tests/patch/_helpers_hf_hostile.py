"""Shared by the test_hf_hostile_*.py files: a copy of the committed tiny-llama HF model (patched
or not), its undo record read and replaced the way another tool would, snapshots of every entry,
and the check that a CLI result is one error line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import FIXTURES, sha256
from safetensors.numpy import load_file, save_file

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import patch_hf

SHARD = "model.safetensors"


def model(tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURES / "hf" / "tiny-llama", d)
    return d


def patched(tmp_path: Path, name: str = "m") -> Path:
    d = model(tmp_path, name)
    patch_hf(str(d), 4096, "yarn")
    return d


def snapshot(d: Path) -> dict:
    """Every entry's kind, bytes and link target (to prove nothing was written)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_symlink():
            out[p.name] = ("link", os.readlink(p))
        elif p.is_file():
            out[p.name] = ("file", sha256(p))
        else:
            out[p.name] = ("other", p.stat().st_mode)
    return out


def record_of(d: Path, shard: str = SHARD) -> dict:
    return json.loads(read_header(str(d / shard)).metadata[hk.RP_ORIGINAL])


def set_record(d: Path, text: str, shard: str = SHARD) -> None:
    """Put ``text`` as the shard's undo record, the way another tool would (safetensors)."""
    p = str(d / shard)
    meta = dict(read_header(p).metadata)
    meta[hk.RP_ORIGINAL] = text
    save_file(load_file(p), p, metadata=meta)


def set_field(d: Path, key: str, value) -> None:
    rec = record_of(d)
    rec[key] = value
    set_record(d, json.dumps(rec))


def one_line_error(r, *parts: str, absent: tuple[str, ...] = ()) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("ropepatch: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for p in parts:
        assert p in r.stderr, r.stderr
    for p in absent:
        assert p not in r.stderr, r.stderr
    return r.stderr
