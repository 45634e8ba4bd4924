"""Reading an HF model's files as hostile input: each path is checked to be a regular file
before anything opens it (a FIFO, socket, device or directory is refused without blocking),
JSON reads are size-capped and go through :func:`ropepatch.formats.jsontext.parse_json`, and
every OS error is one line with the name escaped.

    read_config_file(path) -> tuple[bytes, ConfigDoc]
    read_index_file(path) -> Any                     # the parsed JSON
    read_shard(path) -> SafetensorsHeader
"""

from __future__ import annotations

from typing import Any

from ropepatch.errors import FormatError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.json_doc import ConfigDoc, config_from_bytes
from ropepatch.formats.jsontext import parse_json
from ropepatch.formats.safetensors import SafetensorsHeader, read_header
from ropepatch.safeio.paths import read_bounded, regular_input, shown


def read_config_file(path: str) -> tuple[bytes, ConfigDoc]:
    """The bytes of the config.json at ``path`` (a regular file of at most
    :data:`~ropepatch.formats.hf.keys.CONFIG_MAX_BYTES`) and the document they parse to."""
    raw = read_bounded(path, hk.CONFIG_MAX_BYTES, "config.json")
    return raw, config_from_bytes(raw, shown(path))


def read_index_file(path: str) -> Any:
    """The parsed JSON of a safetensors index (a regular file of at most
    :data:`~ropepatch.formats.hf.keys.INDEX_MAX_BYTES`)."""
    raw = read_bounded(path, hk.INDEX_MAX_BYTES, "safetensors index")
    try:
        return parse_json(raw, shown(path), "JSON")
    except FormatError as e:
        raise FormatError(f"{e}; fix or re-download it") from None


def read_shard(path: str) -> SafetensorsHeader:
    """The validated header of the safetensors shard at ``path`` (a regular file)."""
    regular_input(path, "safetensors file")
    return read_header(path, shown(path))
