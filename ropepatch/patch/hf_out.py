"""Writing a patched HF model into a new directory (``-o OUT``), leaving the source untouched.

    check_out(model, out) -> str          # the absolute output directory, or UsageError
    other_files(model) -> list[str]       # the top-level files copied verbatim
    write_out(model, st, out_dir, new_headers, new_cfg, copies)

Every file goes into a locked staging directory inside ``out`` first, then the finished files
are renamed into ``out`` (config.json last) and the staging directory is removed. A re-run
after a kill finds that staging directory without a live owner and clears what the killed run
left before writing again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil

from ropepatch.errors import RopepatchError, UsageError, WriteError
from ropepatch.formats.hf import keys as hk
from ropepatch.patch.hf_model import HFModel
from ropepatch.patch.hf_state import ModelState
from ropepatch.patch.hf_write import write_shard_header
from ropepatch.safeio import files as fileio

# weight files skipped when copying a model directory to ``out``
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")

_STAGE_PREFIX, _STAGE_SUFFIX = ".ropepatch-", ".tmp"


def _stale_stages(d: str) -> list[str]:
    """Names of the ``-o`` staging directories in ``d`` that a killed run left behind."""
    return [os.path.basename(p) for p in fileio.orphans(d, _STAGE_PREFIX, _STAGE_SUFFIX, directories=True)]


def _existing_parent(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_out(model: HFModel, out: str) -> str:
    """``out`` as an absolute path, refused unless it is a new or empty directory (or one that
    holds only what a killed ``-o`` run of this model left)."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UsageError(f"-o {out}: exists and is not a directory; give a new or empty directory")
        if os.path.samefile(out, model.root):
            raise UsageError(f"-o {out}: is the model directory itself; omit -o to patch in place")
        entries = os.listdir(out)
        # what a killed -o run into this directory leaves (its staging directory, and the files
        # it had moved in) is cleared by write_out; anything else makes the directory not ours
        stale = set(_stale_stages(out))
        ours = {hk.CONFIG_NAME, *(os.path.basename(s) for s in model.shards), *other_files(model)}
        if entries and (not stale or any(n not in stale and n not in ours for n in entries)):
            raise UsageError(f"-o {out}: directory is not empty; give a new or empty directory")
    parent = _existing_parent(out)
    if not os.access(parent, os.W_OK):
        raise WriteError(f"-o {out}: {parent} is read-only; choose another output directory")
    return out


def other_files(model: HFModel) -> list[str]:
    """Top-level files copied verbatim to an out directory."""
    skip = {os.path.basename(p) for p in (model.config_path, *model.shards)}
    names = []
    for n in sorted(os.listdir(model.root)):
        p = os.path.join(model.root, n)
        if n in skip or n.startswith(".") or not os.path.isfile(p):
            continue
        if n.endswith(_OTHER_WEIGHTS):
            continue
        names.append(n)
    return names


def _unlink_all(d: str, names: list[str], ignore: type[OSError]) -> None:
    for n in names:
        with contextlib.suppress(ignore):
            os.unlink(os.path.join(d, n))


def _open_stage(out_dir: str, names: list[str]) -> tuple[str, int]:
    """Clear what a killed run left in ``out_dir``, then create and lock a staging directory."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        stale = _stale_stages(out_dir)
        for n in stale:  # an interrupted -o run into this directory (checked by check_out)
            shutil.rmtree(os.path.join(out_dir, n))
        if stale:
            _unlink_all(out_dir, names, FileNotFoundError)
        while True:
            stage = os.path.join(out_dir, f"{_STAGE_PREFIX}{secrets.token_hex(4)}{_STAGE_SUFFIX}")
            try:
                os.mkdir(stage, 0o700)
                break
            except FileExistsError:
                continue
        stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(stage_fd, fcntl.LOCK_EX)  # held until the end: tells a re-run it is alive
        except OSError:
            os.close(stage_fd)
            os.rmdir(stage)
            raise
    except OSError as e:
        raise WriteError(f"-o {out_dir}: cannot create: {e.strerror or e}") from None
    return stage, stage_fd


def _fill_stage(model: HFModel, st: ModelState, stage: str, new_headers: dict[str, bytes | None],
                new_cfg: bytes, copies: list[str]) -> None:
    for s in model.shards:
        write_shard_header(st.headers[s], new_headers[s], dst=os.path.join(stage, os.path.basename(s)))
    for n in copies:
        src = os.path.join(model.root, n)
        fileio.rewrite(src, os.path.join(stage, n), b"", 0, os.path.getsize(src))
    fileio.rewrite(model.config_path, os.path.join(stage, hk.CONFIG_NAME), new_cfg, 0, 0)


def _move_into_place(stage: str, out_dir: str, names: list[str], moved: list[str]) -> None:
    try:
        for n in names:  # config.json last: until then out_dir holds no loadable model
            os.rename(os.path.join(stage, n), os.path.join(out_dir, n))
            moved.append(n)
            fileio.crash_point()
        fileio.fsync_dir(out_dir)
        os.rmdir(stage)
        fileio.crash_point()
        fileio.fsync_dir(out_dir)
    except OSError as e:
        raise WriteError(f"-o {out_dir}: cannot move the written files into place: {e.strerror or e}") from None


def write_out(model: HFModel, st: ModelState, out_dir: str, new_headers: dict[str, bytes | None],
              new_cfg: bytes, copies: list[str]) -> None:
    """Write the patched copy into ``out_dir`` through a staging directory (module docstring);
    a failure removes what this run wrote there."""
    sizes = sum(8 + len(new_headers[s]) + st.headers[s].data_length for s in model.shards)
    sizes += len(new_cfg) + sum(os.path.getsize(os.path.join(model.root, n)) for n in copies)
    fileio.check_space(_existing_parent(out_dir), sizes, out_dir)
    created = not os.path.exists(out_dir)
    names = [os.path.basename(s) for s in model.shards] + copies + [hk.CONFIG_NAME]
    stage, stage_fd = _open_stage(out_dir, names)
    moved: list[str] = []
    try:
        fileio.crash_point()
        _fill_stage(model, st, stage, new_headers, new_cfg, copies)
        _move_into_place(stage, out_dir, names, moved)
    except RopepatchError as e:
        shutil.rmtree(stage, ignore_errors=True)
        _unlink_all(out_dir, moved, OSError)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise type(e)(f"{e}; removed the partial output in {out_dir}") from None
    finally:
        os.close(stage_fd)
