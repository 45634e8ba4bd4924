"""The GGUF kill harness's link checks: a symlinked (Hugging Face cache style) or hard-linked
model is never written through; kill -9 at every write step of a patch, re-patch or revert
through a link leaves the shared file untouched and the link path whole."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from crash_common import Check, run, sha256
from crash_scenarios import FIXTURES, fmt_file, gguf_args


def _leftovers(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".ropepatch-"))


def _link_state(path: str, link: str | None, results: dict[str, str]) -> str | None:
    """Which allowed state ``path`` is in: "link" (the symlink to ``link``) or a key of
    ``results`` (a regular file with that sha256); None for anything else."""
    if os.path.islink(path):
        return "link" if link is not None and os.readlink(path) == link else None
    s = sha256(path)
    return next((k for k, v in results.items() if v == s), None)


def _link_case(name: str, work: str, fixture: str, make, args: list[str], allowed: tuple[str, ...]) -> Check:
    """Kill ``args`` after each write step on a fresh ``make(d) -> (target, link, shared, done)``
    layout: ``shared`` (the blob or the other hard link) never changes, the target is in an
    ``allowed`` state, and re-running the command gives the uninterrupted result and leaves no
    ``.ropepatch-*`` entry."""
    d = tempfile.mkdtemp(prefix="link-", dir=work)
    target, link, shared, _ = make(d)
    rc, _, err = run(fmt_file(args, target, ""))
    if rc != 0:
        return Check(name, False, f"uninterrupted run failed: {err.strip()}")
    results = {"result": "" if os.path.islink(target) else sha256(target)}
    final_link = os.readlink(target) if os.path.islink(target) else None
    shutil.rmtree(d)
    kills, bad = 0, []
    for n in range(1, 64):
        d = tempfile.mkdtemp(prefix="link-", dir=work)
        target, link, shared, before = make(d)
        results["before"] = "" if os.path.islink(target) else sha256(target)
        rc, _, _ = run(fmt_file(args, target, ""), crash_after=n)
        if rc != -signal.SIGKILL:
            shutil.rmtree(d)
            break
        kills += 1
        state = _link_state(target, link if final_link is None else final_link,
                            {k: v for k, v in results.items() if v})
        if sha256(shared) != before or state is None or (state not in allowed and state != "link"):
            bad.append(f"step {n}: shared file changed or target in state {state}")
        if state != "before" and not (state == "link" and final_link is None):
            shutil.rmtree(d)  # the command had finished its write: nothing to run again
            continue
        rc, _, err = run(fmt_file(args, target, ""))
        again = _link_state(target, final_link, {"result": results["result"]} if results["result"] else {})
        left = _leftovers(os.path.dirname(target))
        if rc != 0 or again not in ("result", "link") or left or sha256(shared) != before:
            bad.append(f"step {n}: retry rc {rc}, state {again}, left {left}: {err.strip()}")
        shutil.rmtree(d)
    return Check(f"{name}: {kills} kills, shared file untouched, target whole", not bad and kills > 0,
                 "; ".join(bad[:3]))


def _patched_copy(src: str, d: str, link: bool = False) -> str:
    """``src`` patched (yarn, 1024) in ``d``; with ``link``, through a symlink snap/m.gguf ->
    ../blobs/X, so the record names the link."""
    os.makedirs(os.path.join(d, "blobs"))
    os.makedirs(os.path.join(d, "snap"))
    b = os.path.join(d, "blobs", "X")
    shutil.copyfile(src, b)
    t = b
    if link:
        t = os.path.join(d, "snap", "m.gguf")
        os.symlink("../blobs/X", t)
    rc, _, err = run(fmt_file(gguf_args(1024, "yarn"), t, ""))
    assert rc == 0, err
    return t


def link_checks(fixture: str, work: str, quick: bool = False) -> list[Check]:
    """kill -9 at every write step of the link cases: the first patch of a symlink into a
    shared blob (HF-cache style), an in-place re-patch through a symlink to a patched blob and
    through a hard link, and the revert that puts the symlink back."""
    src = str(FIXTURES / fixture)
    cache: dict[str, str] = {}

    def once(key: str, make_file) -> str:
        """A file made once (by a real ropepatch run) and copied into each case's directory."""
        if key not in cache:
            cache[key] = make_file(tempfile.mkdtemp(prefix="link-cache-", dir=work))
        return cache[key]

    def blob(d, patched):
        os.makedirs(os.path.join(d, "blobs"))
        os.makedirs(os.path.join(d, "snap"))
        b = os.path.join(d, "blobs", "X")
        shutil.copyfile(src, b)
        if patched:
            shutil.copyfile(once("patched", lambda c: _patched_copy(src, c)), b)
        return b

    def symlinked(patched):
        def make(d):
            b = blob(d, patched)
            t = os.path.join(d, "snap", "m.gguf")
            os.symlink("../blobs/X", t)
            return t, "../blobs/X", b, sha256(b)
        return make

    def hardlinked(d):
        b = blob(d, True)
        t = os.path.join(d, "snap", "m.gguf")
        os.link(b, t)
        return t, None, b, sha256(b)

    def patched_link(d):  # a symlink patched by ropepatch: a regular file whose record names the link
        t, link, b, h = symlinked(False)(d)
        os.unlink(t)
        shutil.copyfile(once("via-link", lambda c: _patched_copy(src, c, link=True)), t)
        return t, link, b, h

    return link_cases(fixture, work, symlinked, hardlinked, patched_link, quick)


def link_cases(fixture, work, symlinked, hardlinked, patched_link, quick) -> list[Check]:
    both = ("before", "result")
    if quick:  # the CI slice: a re-patch through a symlink to a patched blob, and the revert
        return [
            _link_case("symlink to a patched blob, re-patch", work, fixture, symlinked(True),
                       list(gguf_args(2048, "ntk")), both),
            _link_case("revert puts the symlink back", work, fixture, patched_link, ["revert", "{f}"], ("before",)),
        ]
    return [
        _link_case("symlink, first patch", work, fixture, symlinked(False), list(gguf_args(1024, "yarn")), both),
        _link_case("symlink to a patched blob, re-patch", work, fixture, symlinked(True),
                   list(gguf_args(2048, "ntk")), both),
        _link_case("hard link, re-patch", work, fixture, hardlinked, list(gguf_args(2048, "ntk")), both),
        _link_case("revert puts the symlink back", work, fixture, patched_link, ["revert", "{f}"], ("before",)),
    ]
