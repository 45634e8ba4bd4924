"""Writing a patched or reverted HF model in place: shards first, config.json last, and the
shards already written restored when a later write fails. Before the first write,
:func:`preflight_patch` checks the whole run (headers parse back, files replaceable, room for
every rewrite at once), so a failure part-way is left to what no check can foresee.

    is_in_place(hdr, header, linked) -> bool
    write_shard_header(hdr, header, dst=None, in_place_ok=True) -> str   # "in-place" | "rewrite"
    preflight_patch(model, st, todo, new_headers, new_cfg, cfg_changed, final_headers)
    write_in_place(model, st, new_headers, new_cfg, cfg_changed, final_headers)
"""

from __future__ import annotations

from ropepatch.errors import FormatError, RopepatchError
from ropepatch.formats.hf.keys import ST_MAX_HEADER
from ropepatch.formats.safetensors import SafetensorsHeader, framed
from ropepatch.patch.hf_checks import Remedy, check_new_header, check_room, check_writable
from ropepatch.patch.hf_io import read_shard
from ropepatch.patch.hf_model import HFModel, is_linked, link_target
from ropepatch.patch.hf_state import ModelState
from ropepatch.safeio import files as fileio
from ropepatch.safeio.commit import commit_header, page_local_run
from ropepatch.safeio.paths import shown


def is_in_place(hdr: SafetensorsHeader, header: bytes, linked: bool) -> bool:
    """Whether :func:`write_shard_header` writes ``header`` over ``hdr`` in place (one pwrite
    inside one page) rather than as an atomic rewrite."""
    return not linked and page_local_run(framed(hdr.header_bytes), framed(header)) is not None


def write_shard_header(hdr: SafetensorsHeader, header: bytes, dst: str | None = None,
                       in_place_ok: bool = True) -> str:
    """Put ``header`` (the complete new N' header bytes) in front of ``hdr``'s tensor data, by
    the one commit rule (:func:`ropepatch.safeio.commit.commit_header`): in place when the
    length is unchanged, ``dst`` is None or ``hdr.path``, ``in_place_ok`` and the changed bytes
    lie inside one 4 KiB page; otherwise an atomic rewrite into ``dst`` (default ``hdr.path``;
    a symlink or hard link there becomes a new regular file). Returns the mode used."""
    if len(header) > ST_MAX_HEADER:
        raise FormatError(
            f"{shown(hdr.path)}: new safetensors header would be {len(header)} bytes, over the "
            f"{ST_MAX_HEADER}-byte limit; nothing written"
        )
    done = commit_header(hdr.path, framed(hdr.header_bytes), framed(header), hdr.data_offset,
                         hdr.data_length, hdr.file_size, dst=dst, allow_in_place=in_place_ok)
    return done.mode


def preflight_patch(model: HFModel, st: ModelState, todo: list[str],
                    new_headers: dict[str, bytes | None], new_cfg: bytes, cfg_changed: bool,
                    final_headers: dict[str, bytes]) -> None:
    """Refuse before any write: a header that does not parse back, a file that cannot be
    replaced, too little space for every rewrite of the run at once."""
    rewrites: list[int] = []
    for s in todo:
        hdr, h = st.headers[s], new_headers[s]
        check_new_header(hdr, h)
        in_place = is_in_place(hdr, h, is_linked(s))
        check_writable(s, Remedy.PATCH, in_place=in_place)
        if not in_place:
            rewrites.append(8 + len(h) + hdr.data_length)
    later = [0]
    for s, h in final_headers.items():
        hdr = st.headers[s]
        check_new_header(hdr, h)
        if page_local_run(framed(new_headers[s] or hdr.header_bytes), framed(h)) is None:
            later.append(8 + len(h) + hdr.data_length)
    if cfg_changed:
        check_writable(model.config_path, Remedy.PATCH)
        rewrites.append(len(new_cfg))
    if rewrites or max(later):
        check_room(model.root, rewrites + [max(later)], shown(model.root), Remedy.PATCH)


def write_in_place(model: HFModel, st: ModelState, new_headers: dict[str, bytes | None],
                   new_cfg: bytes, cfg_changed: bool, final_headers: dict[str, bytes]) -> None:
    """Write the shards whose new header is not None, then config.json, then
    ``final_headers`` (the shards without the transient previous-config entry)."""
    todo = [s for s in model.shards if new_headers[s] is not None]
    preflight_patch(model, st, todo, new_headers, new_cfg, cfg_changed, final_headers)
    done: list[tuple[str, SafetensorsHeader, str | None]] = []
    try:
        for s in todo:
            hdr, h = st.headers[s], new_headers[s]
            link = link_target(s)
            write_shard_header(hdr, h, in_place_ok=not is_linked(s))
            done.append((s, hdr, link))
        if cfg_changed:
            fileio.rewrite(model.config_path, model.config_path, new_cfg, 0, 0)
    except RopepatchError as e:
        restored = _rollback(done)
        raise type(e)(f"{e}; {restored}") from None
    # config.json is final: drop RP_PREVIOUS_CONFIG_SHA256 from the shards (same length, in place)
    try:
        for s, h in final_headers.items():
            write_shard_header(read_shard(s), h)
    except RopepatchError as e:
        raise type(e)(f"{e}; the model is patched, run the same command again to finish") from None


def _rollback(done: list[tuple[str, SafetensorsHeader, str | None]]) -> str:
    bad = []
    for s, old, link in reversed(done):
        try:
            if link is not None:
                fileio.replace_with_symlink(s, link)
            else:
                cur = read_shard(s)
                write_shard_header(cur, old.header_bytes)
        except (RopepatchError, OSError):
            bad.append(s)
    if not done:
        return "nothing was written"
    if bad:
        return f"could not restore {shown(', '.join(bad))}: run ropepatch revert on the model"
    return f"the {len(done)} shard(s) already written were restored"
