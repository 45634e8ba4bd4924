"""Which files a Hugging Face model path stands for: config.json, the index and the shards.

    resolve_model(path) -> HFModel    # FormatError/UsageError when the files do not add up
    is_hf_path(path) -> bool          # for the CLI: does this look like an HF model?

Also the small per-file facts the HF patch code asks about a path (sha256, symlink target,
hard-link count).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ropepatch.errors import FormatError, UsageError
from ropepatch.formats.hf import keys as hk


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
        return os.path.isfile(os.path.join(path, hk.CONFIG_NAME))
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
    try:
        with open(index, "rb") as f:
            raw = f.read()
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise FormatError(f"{index}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{index}: malformed JSON ({str(e).splitlines()[0]}); fix or re-download it") from None
    wm = data.get(hk.INDEX_WEIGHT_MAP) if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise FormatError(
            f"{index}: expected {{\"weight_map\": {{tensor: shard file}}}}, found "
            f"{type(wm).__name__ if wm is not None else 'no weight_map'}"
        )
    names = sorted(set(wm.values()))
    for n in names:
        if os.path.basename(n) != n or n in ("", ".", ".."):
            raise FormatError(f"{index}: shard name {n!r} is not a plain file name")
    if not names:
        raise FormatError(f"{index}: weight_map lists no shards")
    return names


def _root_of(path: str) -> tuple[str, str | None]:
    """The model directory ``path`` means and, for a .safetensors path, that file."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    if os.path.isfile(path) and os.path.basename(path) == hk.CONFIG_NAME:
        path = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return os.path.abspath(path), None
    if path.endswith(hk.SAFETENSORS_SUFFIX):
        root = os.path.dirname(os.path.abspath(path))
        return root, os.path.join(root, os.path.basename(path))
    raise UsageError(
        f"{path}: expected a Hugging Face model directory (config.json + *.safetensors) or a "
        f".safetensors file with config.json beside it"
    )


def _indexed_shards(root: str, index_path: str, single: str | None) -> list[str]:
    names = _read_index(index_path)
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise FormatError(
            f"{index_path}: lists {len(missing)} shard(s) missing from {root}: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; download them "
            f"or fix the index"
        )
    if single is not None:
        if os.path.basename(single) not in names:
            raise UsageError(f"{single}: not listed in {index_path}; pass the directory {root}")
        if len(names) > 1:
            raise UsageError(
                f"{single}: one shard of a {len(names)}-shard model; pass the directory "
                f"{root} so config.json and every shard stay consistent"
            )
    return [os.path.join(root, n) for n in names]


def _listed_shards(root: str) -> list[str]:
    shards = sorted(
        os.path.join(root, n)
        for n in os.listdir(root)
        if n.endswith(hk.SAFETENSORS_SUFFIX) and not n.startswith(".")
        and os.path.isfile(os.path.join(root, n))
    )
    if not shards:
        raise FormatError(
            f"{root}: no *.safetensors weights next to config.json; ropepatch records its "
            f"undo data in safetensors headers"
        )
    return shards


def resolve_model(path: str) -> HFModel:
    """The config.json and safetensors shards ``path`` stands for (FormatError/UsageError)."""
    root, single = _root_of(path)
    config = os.path.join(root, hk.CONFIG_NAME)
    if not os.path.isfile(config):
        raise FormatError(f"{root}: no config.json (expected it next to the safetensors weights)")
    index = os.path.join(root, hk.INDEX_NAME)
    index_path = index if os.path.isfile(index) else None
    if index_path:
        shards = _indexed_shards(root, index_path, single)
    elif single is not None:
        if not os.path.isfile(single):
            raise UsageError(f"{single}: not a regular file")
        shards = [single]
    else:
        shards = _listed_shards(root)
    return HFModel(root, config, index_path, tuple(shards))
