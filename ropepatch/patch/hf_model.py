"""Which files a Hugging Face model path stands for: config.json, the index and the shards.

    resolve_model(path) -> HFModel    # FormatError/UsageError when the files do not add up
    is_hf_path(path) -> bool          # for the CLI: does this look like an HF model?

Also the small per-file facts the HF patch code asks about a path (sha256, symlink target,
hard-link count).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from ropepatch.errors import FormatError, UsageError
from ropepatch.formats.hf import keys as hk
from ropepatch.patch.hf_io import read_index_file
from ropepatch.safeio.paths import kind_of, os_error, regular_input, shown


@dataclass(frozen=True)
class HFModel:
    """The files one HF model path stands for."""

    root: str  # the model directory
    config_path: str
    index_path: str | None
    shards: tuple[str, ...]  # shard paths, sorted by name

    def to_dict(self) -> dict:
        return {"root": self.root, "config": self.config_path, "index": self.index_path,
                "shards": list(self.shards)}


def is_hf_path(path: str) -> bool:
    """True for a directory holding config.json, a .safetensors file or a config.json path."""
    if os.path.isdir(path):
        return os.path.lexists(os.path.join(path, hk.CONFIG_NAME))
    return path.endswith(hk.SAFETENSORS_SUFFIX) or os.path.basename(path) == hk.CONFIG_NAME


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as lowercase hex (the spelling the shard metadata records)."""
    return hashlib.sha256(data).hexdigest()


def link_target(path: str) -> str | None:
    """The target of the symlink ``path``; None when ``path`` is not a symlink."""
    return os.readlink(path) if os.path.islink(path) else None


def nlink(path: str) -> int:
    """The hard-link count of ``path`` itself (not of a symlink's target)."""
    return os.lstat(path).st_nlink


def is_linked(path: str) -> bool:
    """True when ``path`` is a symlink or has other hard links: it is never written through."""
    return os.path.islink(path) or nlink(path) > 1


def _read_index(index: str) -> list[str]:
    data = read_index_file(index)
    wm = data.get(hk.INDEX_WEIGHT_MAP) if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise FormatError(
            f"{shown(index)}: expected {{\"weight_map\": {{tensor: shard file}}}}, found "
            f"{type(wm).__name__ if wm is not None else 'no weight_map'}"
        )
    names = sorted(set(wm.values()))
    for n in names:
        if os.path.basename(n) != n or n in ("", ".", "..") or "\0" in n:
            raise FormatError(f"{shown(index)}: shard name {_short(n)} is not a plain file name")
    if not names:
        raise FormatError(f"{shown(index)}: weight_map lists no shards")
    return names


def _short(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _stat(path: str, what: str) -> os.stat_result | None:
    """``os.stat(path)``; None when nothing is there; one line for any other OS error."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(path, exc, f"read the {what}") from None


def _regular_or_none(path: str, what: str) -> bool:
    """True for a regular file, False when absent; one line for a FIFO, device, directory..."""
    st = _stat(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown(path)}: expected a regular {what}, found {kind_of(st.st_mode)}")
    return st is not None


def _root_of(path: str) -> tuple[str, str | None]:
    """The model directory ``path`` means and, for a .safetensors path, that file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(path, exc) from None
    except ValueError:
        raise UsageError(f"{shown(path)}: not a valid path (it contains a NUL byte)") from None
    name = os.path.basename(path)
    if stat.S_ISDIR(st.st_mode):
        return os.path.abspath(path), None
    if name == hk.CONFIG_NAME or path.endswith(hk.SAFETENSORS_SUFFIX):
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{shown(path)}: expected a regular file, found {kind_of(st.st_mode)}")
        root = os.path.dirname(os.path.abspath(path))
        return root, (None if name == hk.CONFIG_NAME else os.path.join(root, name))
    found = "" if stat.S_ISREG(st.st_mode) else f", found {kind_of(st.st_mode)}"
    raise UsageError(
        f"{shown(path)}: expected a Hugging Face model directory (config.json + *.safetensors) or a "
        f".safetensors file with config.json beside it{found}"
    )


def _indexed_shards(root: str, index_path: str, single: str | None) -> list[str]:
    names = _read_index(index_path)
    missing = [n for n in names if not _regular_or_none(os.path.join(root, n), "safetensors file")]
    if missing:
        raise FormatError(
            f"{shown(index_path)}: lists {len(missing)} shard(s) missing from {shown(root)}: "
            f"{shown(', '.join(missing[:4]))}{' ...' if len(missing) > 4 else ''}; download them "
            f"or fix the index"
        )
    if single is not None:
        if os.path.basename(single) not in names:
            raise UsageError(f"{shown(single)}: not listed in {shown(index_path)}; pass the directory {shown(root)}")
        if len(names) > 1:
            raise UsageError(
                f"{shown(single)}: one shard of a {len(names)}-shard model; pass the directory "
                f"{shown(root)} so config.json and every shard stay consistent"
            )
    return [os.path.join(root, n) for n in names]


def _listed_shards(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except OSError as exc:
        raise os_error(root, exc, "list the model directory") from None
    shards = []
    for n in sorted(names):
        p = os.path.join(root, n)
        if n.endswith(hk.SAFETENSORS_SUFFIX) and not n.startswith("."):
            regular_input(p, "safetensors file")
            shards.append(p)
    if not shards:
        raise FormatError(
            f"{shown(root)}: no *.safetensors weights next to config.json; ropepatch records its "
            f"undo data in safetensors headers"
        )
    return shards


def resolve_model(path: str) -> HFModel:
    """The config.json and safetensors shards ``path`` stands for (FormatError/UsageError)."""
    root, single = _root_of(path)
    config = os.path.join(root, hk.CONFIG_NAME)
    if not _regular_or_none(config, "config.json"):
        raise FormatError(f"{shown(root)}: no config.json (expected it next to the safetensors weights)")
    index = os.path.join(root, hk.INDEX_NAME)
    index_path = index if _regular_or_none(index, "safetensors index") else None
    if index_path:
        shards = _indexed_shards(root, index_path, single)
    elif single is not None:
        shards = [single]
    else:
        shards = _listed_shards(root)
    return HFModel(root, config, index_path, tuple(shards))
