"""config.json as a document: its exact text, the parsed data and its JSON spelling, so a
rewrite looks like the original.

    parse_config(text: str, path: str) -> ConfigDoc   # FormatError on malformed JSON
    config_from_bytes(raw: bytes, path: str) -> ConfigDoc
    load_config(path: str) -> ConfigDoc
    read_config(path: str) -> tuple[bytes, ConfigDoc] # the file's bytes too
    dump_config(data: dict, style: JsonStyle) -> str  # in the file's own JSON style

Output uses the file's own indent (spaces or tab), separators, ASCII escaping and line endings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ropepatch.errors import FormatError
from ropepatch.formats.jsontext import parse_json


@dataclass(frozen=True)
class JsonStyle:
    """How a JSON file is spelled, so a rewrite looks like the original."""

    indent: int | str | None = 2
    item_sep: str = ","
    key_sep: str = ": "
    ensure_ascii: bool = True
    newline: str = "\n"
    final_newline: bool = True


@dataclass(frozen=True)
class ConfigDoc:
    """A parsed config.json: its exact text, the data and its spelling."""

    path: str
    text: str
    data: dict = field(hash=False, compare=False)
    style: JsonStyle

    @property
    def round_trips(self) -> bool:
        """True when re-serialising the unchanged data reproduces the file exactly."""
        return dump_config(self.data, self.style) == self.text


def _no_dupes(path: str):
    def hook(pairs):
        d: dict = {}
        for k, v in pairs:
            if k in d:
                raise FormatError(
                    f"{path}: duplicate key {k!r} in the JSON; keep one of them and run again"
                )
            d[k] = v
        return d

    return hook


def detect_style(text: str) -> JsonStyle:
    """The indent, separators, escaping and line ending ``text`` uses."""
    newline = "\r\n" if "\r\n" in text else "\n"
    final = text.endswith("\n")
    ensure_ascii = not any(ord(ch) > 127 for ch in text)
    m = re.search(r"[\[{][ \t]*\r?\n([ \t]+)\S", text)
    if m:
        ws = m.group(1)
        indent: int | str | None = ws if "\t" in ws else len(ws)
        key_sep = ": " if re.search(r'"\s*:[ \t]', text) else ":"
        return JsonStyle(indent, ",", key_sep, ensure_ascii, newline, final)
    if "\n" in text.strip():  # newlines but no indentation: indent=0
        key_sep = ": " if re.search(r'"\s*:[ \t]', text) else ":"
        return JsonStyle(0, ",", key_sep, ensure_ascii, newline, final)
    item_sep = ", " if re.search(r",[ \t]", text) else ","
    key_sep = ": " if re.search(r":[ \t]", text) else ":"
    return JsonStyle(None, item_sep, key_sep, ensure_ascii, newline, final)


def dump_config(data: dict, style: JsonStyle) -> str:
    """``data`` serialised in ``style``."""
    s = json.dumps(
        data,
        indent=style.indent,
        separators=(style.item_sep, style.key_sep),
        ensure_ascii=style.ensure_ascii,
    )
    if style.newline != "\n":
        s = s.replace("\n", style.newline)  # JSON strings never hold a raw newline
    if style.final_newline:
        s += style.newline
    return s


def parse_config(text: str, path: str) -> ConfigDoc:
    """Parse config.json text (FormatError naming the line and column when malformed; nesting
    too deep, integers too long and unpaired surrogates are refused the same way)."""
    try:
        data = parse_json(text, path, "JSON", object_pairs_hook=_no_dupes(path))
    except FormatError as e:
        if "duplicate key" in str(e):
            raise
        raise FormatError(f"{e}; fix or re-download config.json") from None
    if not isinstance(data, dict):
        raise FormatError(
            f"{path}: expected a JSON object at the top level, found {type(data).__name__}"
        )
    return ConfigDoc(path, text, data, detect_style(text))


def config_from_bytes(raw: bytes, path: str) -> ConfigDoc:
    """The document the bytes ``raw`` of config.json parse to (``path``: its name in messages)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text (byte {e.start}); expected a JSON config") from None
    return parse_config(text, path)


def read_config(path: str) -> tuple[bytes, ConfigDoc]:
    """The bytes of config.json at ``path`` and the document they parse to. For trusted paths
    (tools, tests): ropepatch's commands read config.json through
    :func:`ropepatch.patch.hf_io.read_config_file` (regular files only, size-capped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    return raw, config_from_bytes(raw, path)


def load_config(path: str) -> ConfigDoc:
    """Read and parse config.json at ``path`` (trusted paths; see :func:`read_config`)."""
    return read_config(path)[1]
