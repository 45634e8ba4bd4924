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
import stat

from ropepatch.errors import RopepatchError, UsageError, WriteError
from ropepatch.formats.hf import keys as hk
from ropepatch.patch.hf_checks import Remedy, check_new_header, check_room
from ropepatch.patch.hf_model import HFModel
from ropepatch.patch.hf_state import ModelState
from ropepatch.patch.hf_write import write_shard_header
from ropepatch.safeio import files as fileio
from ropepatch.safeio.paths import kind_of, os_error, shown

# weight files skipped when copying a model directory to ``out``
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")

_STAGE_PREFIX, _STAGE_SUFFIX = ".ropepatch-", ".tmp"


def _stale_stages(d: str) -> list[str]:
    """Names of the ``-o`` staging directories in ``d`` that a killed run left behind."""
    return [os.path.basename(p) for p in fileio.orphans(d, _STAGE_PREFIX, _STAGE_SUFFIX, directories=True)]


def _existing_parent(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


_BUSY = ("another ropepatch process is writing into this directory; wait for it to finish, or choose "
         "another -o directory")


def _busy(out: str) -> bool:
    """True when a live ropepatch run holds ``out``'s lock (it is writing its copy there)."""
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _refuse_unless_ours(model: HFModel, out: str) -> None:
    """Refuse an ``out`` holding anything but what a killed ``-o`` run of this model left."""
    try:
        entries = os.listdir(out)
    except OSError as exc:
        raise os_error(out, exc, "list the -o directory") from None
    # what a killed -o run into this directory leaves (its staging directory, and the files
    # it had moved in) is cleared by write_out; anything else makes the directory not ours
    stale = set(_stale_stages(out))
    ours = {hk.CONFIG_NAME, *(os.path.basename(s) for s in model.shards), *other_files(model)}
    if entries and (not stale or any(n not in stale and n not in ours for n in entries)):
        raise UsageError(f"-o {shown(out)}: directory is not empty; give a new or empty directory")


def check_out(model: HFModel, out: str) -> str:
    """``out`` as an absolute path, refused unless it is a new or empty directory (or one that
    holds only what a killed ``-o`` run of this model left)."""
    try:
        out = os.path.abspath(out)
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise os_error(out, exc, "use the -o directory") from None
    except ValueError:
        raise UsageError(f"-o {shown(out)}: not a valid path (it contains a NUL byte)") from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            what = "a file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)
            raise UsageError(f"-o {shown(out)}: exists and is {what}, not a directory; give a new or "
                             f"empty directory")
        if os.path.samefile(out, model.root):
            raise UsageError(f"-o {shown(out)}: is the model directory itself; omit -o to patch in place")
        if _busy(out):
            raise WriteError(f"-o {shown(out)}: {_BUSY}")
        _refuse_unless_ours(model, out)
    parent = _existing_parent(out)
    if not os.path.isdir(parent):
        raise UsageError(f"-o {shown(out)}: {shown(parent)} is not a directory")
    if not os.access(parent, os.W_OK):
        raise WriteError(f"-o {shown(out)}: {shown(parent)} is read-only; choose another output directory")
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


def _lock_out(model: HFModel, out_dir: str) -> tuple[int, bool]:
    """Create ``out_dir`` (when missing) and take an exclusive lock on it, refusing at once when
    another run holds it; then check again, under the lock, that it is new, empty or ours. Two
    runs onto one new directory: exactly one gets here, the other is refused."""
    created = False
    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        try:
            os.mkdir(out_dir)  # atomic: of two runs creating it, one does
            created = True
        except FileExistsError:
            pass
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise os_error(out_dir, exc, "create the -o directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not created:
            _refuse_unless_ours(model, out_dir)
    except BlockingIOError:
        os.close(fd)
        raise WriteError(f"-o {shown(out_dir)}: {_BUSY}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _open_stage(out_dir: str, names: list[str]) -> tuple[str, int]:
    """Clear what a killed run left in ``out_dir``, then create and lock a staging directory."""
    try:
        stale = _stale_stages(out_dir)
        for n in stale:  # an interrupted -o run into this directory (checked under the lock)
            shutil.rmtree(os.path.join(out_dir, n))
        if stale:
            _unlink_all(out_dir, names, FileNotFoundError)
        fileio.remove_stale_temps(out_dir)
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
        raise os_error(out_dir, e, "create the -o staging directory") from None
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
        raise os_error(out_dir, e, "move the written files into place") from None


def write_out(model: HFModel, st: ModelState, out_dir: str, new_headers: dict[str, bytes | None],
              new_cfg: bytes, copies: list[str]) -> None:
    """Write the patched copy into ``out_dir`` through a staging directory (module docstring);
    a failure removes what this run wrote there."""
    for s in model.shards:
        check_new_header(st.headers[s], new_headers[s])
    sizes = [8 + len(new_headers[s]) + st.headers[s].data_length for s in model.shards]
    sizes += [len(new_cfg)] + [os.path.getsize(os.path.join(model.root, n)) for n in copies]
    check_room(_existing_parent(out_dir), sizes, f"-o {shown(out_dir)}", Remedy.OUT)
    out_fd, created = _lock_out(model, out_dir)
    try:
        _write_locked(model, st, out_dir, new_headers, new_cfg, copies, created)
    finally:
        os.close(out_fd)


def _write_locked(model: HFModel, st: ModelState, out_dir: str, new_headers: dict[str, bytes | None],
                  new_cfg: bytes, copies: list[str], created: bool) -> None:
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
        raise type(e)(f"{e}; removed the partial output in {shown(out_dir)}") from None
    finally:
        os.close(stage_fd)
