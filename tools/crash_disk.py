"""The GGUF kill harness's fixed checks of a full disk (a tmpfs) and of a read-only file,
directory or mount (chattr +i, a read-only bind mount); each is skipped, with the reason, where
the machine does not allow it (they need root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile

from crash_common import Check, cli, one_line_error, run, sha256, temps, wait_stopped
from crash_scenarios import FIXTURES, fmt_file, gguf_args
from crash_validate import validate


@contextlib.contextmanager
def tmpfs(size_bytes: int, work: str):
    d = tempfile.mkdtemp(prefix="tmpfs-", dir=work)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", d], capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        yield None, r.stderr.strip() or "mount failed"
        return
    try:
        yield d, ""
    finally:
        subprocess.run(["umount", d], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _fill(d: str) -> str:
    """Fill the filesystem of ``d`` to the last byte; return the filler's path."""
    p = os.path.join(d, "filler")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            buf = b"\0" * size
            while True:
                try:
                    if os.write(fd, buf) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return p


def _chattr(flag: str, path: str) -> bool:
    return subprocess.run(["chattr", flag, path], capture_output=True).returncode == 0


def count_steps(args: list[str], pre: str, work: str) -> int:
    """How many crash-hook steps a command takes (runs it with N = 1, 2, ... until it completes)."""
    n = 1
    while True:
        d = tempfile.mkdtemp(prefix="count-", dir=work)
        f, o = os.path.join(d, "model.gguf"), os.path.join(d, "out.gguf")
        shutil.copyfile(pre, f)
        rc, _, _ = run(fmt_file(args, f, o), crash_after=n)
        shutil.rmtree(d)
        if rc != -signal.SIGKILL:
            return n - 1
        n += 1


# ---- disk full ----------------------------------------------------------------------------


def disk_full_checks(fixture: str, work: str, quick: bool = False) -> list[Check]:
    pristine = str(FIXTURES / fixture)
    size = os.path.getsize(pristine)
    first = list(gguf_args(1024, "yarn"))
    # 1. not enough room for the rewrite: refused before writing
    with tmpfs(size + size // 2 + 65536, work) as (d, why):
        if d is None:
            return [Check("disk full: tmpfs", None, f"skipped: cannot mount tmpfs ({why})")]
        f = os.path.join(d, "model.gguf")
        shutil.copyfile(pristine, f)
        before = sha256(f)
        rc, _, err = run(fmt_file(first, f, ""))
        ok = one_line_error(rc, err, "needs") and sha256(f) == before and not temps(d)
        out = [Check("disk full: too little room for a rewrite -> refused up front, original intact", ok, err.strip())]
    out.append(_disk_fills_during_rewrite(pristine, size, first, work, quick))
    out += _full_disk_in_place_and_revert(pristine, size, first, work)
    return out


def _disk_fills_during_rewrite(pristine: str, size: int, first: list[str], work: str, quick: bool) -> Check:
    """2. the disk fills up DURING the rewrite, after each step that precedes the rename."""
    ref_dir = tempfile.mkdtemp(prefix="ref-", dir=work)
    ref = os.path.join(ref_dir, "model.gguf")
    shutil.copyfile(pristine, ref)
    n_steps = count_steps(first, ref, work)
    rc, _, _ = run(fmt_file(first, ref, ""))
    post_sha = sha256(ref)
    steps = [1, 2] if quick else list(range(1, n_steps + 1))
    results = []
    for k in steps:
        with tmpfs(4 * size + (1 << 20), work) as (d, why):
            f = os.path.join(d, "model.gguf")
            shutil.copyfile(pristine, f)
            before = sha256(f)
            p = cli(fmt_file(first, f, ""), crash_after=k, sig="STOP")
            if not wait_stopped(p):
                p.communicate()
                continue
            filler = _fill(d)
            p.send_signal(signal.SIGCONT)
            _, err = p.communicate(timeout=60)
            s = sha256(f)
            if p.returncode == 2 and "disk full" in err and s == before and not temps(d):
                results.append((k, "refused: disk full, original intact"))
            elif p.returncode == 0 and s == post_sha:
                results.append((k, "completed (nothing left to allocate)"))
            else:
                results.append((k, f"BAD rc={p.returncode} err={err.strip()[:150]} intact={s == before} "
                                   f"temps={temps(d)}"))
            os.unlink(filler)
    shutil.rmtree(ref_dir)
    bad = [r for r in results if r[1].startswith("BAD")]
    summary = "; ".join(f"step {k}: {r}" for k, r in results)
    return Check(f"disk full: disk filled after each of steps {steps[0]}..{steps[-1]} of a rewrite",
                 not bad and bool(results), summary)


def _full_disk_in_place_and_revert(pristine: str, size: int, first: list[str], work: str) -> list[Check]:
    """3. an in-place re-patch needs no free space at all; 4. a revert (a rewrite) does."""
    out: list[Check] = []
    with tmpfs(2 * size + (1 << 20), work) as (d, why):
        f = os.path.join(d, "model.gguf")
        shutil.copyfile(pristine, f)
        rc1, _, e1 = run(fmt_file(first, f, ""))
        filler = _fill(d)
        rc, o, err = run(fmt_file(gguf_args(4096, "ntk"), f, ""))
        problem = validate(f, ("patch", 4096, "ntk", True), pristine, use_llama=False)
        out.append(Check("disk full: in-place re-patch on a 100% full disk succeeds",
                         rc1 == 0 and rc == 0 and problem is None and "in place" in o,
                         (err or o).strip().splitlines()[-1]))
        # 4. revert (a rewrite) on the full disk: refused, file intact
        before = sha256(f)
        rc, _, err = run(["revert", f])
        out.append(Check("disk full: revert on a full disk -> refused, file intact",
                         one_line_error(rc, err, "needs") and sha256(f) == before and not temps(d), err.strip()))
        os.unlink(filler)
    return out


# ---- read-only ----------------------------------------------------------------------------


def readonly_checks(fixture: str, work: str) -> list[Check]:
    pristine = str(FIXTURES / fixture)
    d = tempfile.mkdtemp(prefix="ro-", dir=work)
    f = os.path.join(d, "model.gguf")
    patched = os.path.join(d, "patched.gguf")
    shutil.copyfile(pristine, f)
    shutil.copyfile(pristine, patched)
    assert run(fmt_file(gguf_args(1024, "yarn"), patched, ""))[0] == 0
    if not _chattr("+i", f):
        shutil.rmtree(d)
        return [Check("read-only: chattr +i", None, "skipped: chattr +i not permitted here")]
    out = _immutable_file(d, f, patched)
    out += _immutable_directory(d, f, patched, pristine)
    out += _immutable_before_rename(d, f, pristine, work)
    shutil.rmtree(d)
    out += _readonly_mount(pristine, work)
    return out


def _immutable_file(d: str, f: str, patched: str) -> list[Check]:
    """``f`` (pristine) and ``patched`` made immutable: every write is refused. ``f`` is +i already."""
    out: list[Check] = []
    _chattr("+i", patched)
    try:
        for what, args, path in (
            ("first patch of an immutable file", gguf_args(1024, "yarn"), f),
            ("in-place re-patch of an immutable file", gguf_args(4096, "ntk"), patched),
            ("revert of an immutable file", ("revert", "{f}"), patched),
        ):
            before = sha256(path)
            rc, _, err = run(fmt_file(args, path, ""))
            out.append(Check(f"read-only: {what} -> refused",
                             one_line_error(rc, err, "read-only") and sha256(path) == before and not temps(d),
                             err.strip()))
    finally:
        _chattr("-i", f)
        _chattr("-i", patched)
    return out


def _immutable_directory(d: str, f: str, patched: str, pristine: str) -> list[Check]:
    """Immutable directory: a rewrite cannot create its temp file / rename; in place needs no dir write."""
    out: list[Check] = []
    _chattr("+i", d)
    try:
        before = sha256(f)
        rc, _, err = run(fmt_file(gguf_args(1024, "yarn"), f, ""))
        out.append(Check("read-only: first patch in an immutable directory -> refused",
                         one_line_error(rc, err, "read-only") and sha256(f) == before, err.strip()))
        rc, o, err = run(fmt_file(gguf_args(4096, "ntk"), patched, ""))
        problem = validate(patched, ("patch", 4096, "ntk", True), pristine, use_llama=False) if rc == 0 else err
        out.append(Check("read-only: in-place re-patch in an immutable directory -> allowed "
                         "(no directory write needed)",
                         rc == 0 and problem is None, (o or err).strip().splitlines()[-1]))
        before = sha256(patched)
        rc, _, err = run(["revert", patched])
        out.append(Check("read-only: revert in an immutable directory -> refused",
                         one_line_error(rc, err, "read-only") and sha256(patched) == before, err.strip()))
    finally:
        _chattr("-i", d)
    return out


def _immutable_before_rename(d: str, f: str, pristine: str, work: str) -> list[Check]:
    """The target becomes immutable, or its directory does, in the middle of a rewrite."""
    out: list[Check] = []
    n_steps = count_steps(list(gguf_args(1024, "yarn")), pristine, work)
    for what, victim in (("file", "f"), ("directory", "d")):
        shutil.copyfile(pristine, f)
        before = sha256(f)
        p = cli(fmt_file(gguf_args(1024, "yarn"), f, ""), crash_after=n_steps - 3, sig="STOP")  # after the temp's fsync
        wait_stopped(p)
        _chattr("+i", f if victim == "f" else d)
        p.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=60)
        left = temps(d)
        _chattr("-i", f if victim == "f" else d)
        ok = one_line_error(p.returncode, err, "original left intact") and sha256(f) == before
        detail = err.strip() + (f"; temp left: {left}" if left else "")
        if left:  # the directory was immutable, so the temp could not be removed; the next rewrite does it
            rc, _, e2 = run(fmt_file(gguf_args(1024, "yarn"), f, ""))
            ok = ok and rc == 0 and not temps(d)
            detail += f"; next rewrite rc={rc}, temps after: {temps(d)}"
        out.append(Check(f"read-only: {what} made immutable just before the rename -> refused, original intact",
                         ok, detail))
    return out


def _readonly_mount(pristine: str, work: str) -> list[Check]:
    """A read-only mount (bind mount remounted ro)."""
    out: list[Check] = []
    src = tempfile.mkdtemp(prefix="rosrc-", dir=work)
    mnt = tempfile.mkdtemp(prefix="romnt-", dir=work)
    shutil.copyfile(pristine, os.path.join(src, "model.gguf"))
    shutil.copyfile(pristine, os.path.join(src, "patched.gguf"))
    assert run(fmt_file(gguf_args(1024, "yarn"), os.path.join(src, "patched.gguf"), ""))[0] == 0
    r = subprocess.run(["mount", "--bind", src, mnt], capture_output=True, text=True)
    if r.returncode != 0:
        out.append(Check("read-only mount", None, f"skipped: bind mount not permitted ({r.stderr.strip()})"))
    else:
        try:
            r = subprocess.run(["mount", "-o", "remount,bind,ro", mnt], capture_output=True, text=True)
            if r.returncode != 0:
                out.append(Check("read-only mount", None, f"skipped: remount ro not permitted ({r.stderr.strip()})"))
            else:
                for what, args, name in (
                    ("first patch", gguf_args(1024, "yarn"), "model.gguf"),
                    ("in-place re-patch", gguf_args(4096, "ntk"), "patched.gguf"),
                    ("revert", ("revert", "{f}"), "patched.gguf"),
                ):
                    path = os.path.join(mnt, name)
                    before = sha256(path)
                    rc, _, err = run(fmt_file(args, path, ""))
                    out.append(Check(f"read-only mount: {what} -> refused",
                                     one_line_error(rc, err, "read-only") and sha256(path) == before, err.strip()))
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
    shutil.rmtree(src)
    os.rmdir(mnt)
    return out
