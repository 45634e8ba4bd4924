"""The GGUF kill harness's concurrency checks: a second ropepatch run while the first is frozen
inside its write (holding the lock), and a stress test of several runs started together."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile

from crash_common import Check, cli, one_line_error, run, sha256, temps, wait_stopped
from crash_scenarios import FIXTURES, fmt_file, gguf_args
from crash_validate import validate

LOCK_MSG = "another ropepatch process is writing this file"
CHANGED_MSG = "the file changed while ropepatch was preparing the patch"


def concurrency_checks(fixture: str, work: str, stress: int = 0, seed: int = 0) -> list[Check]:
    pristine = str(FIXTURES / fixture)
    d = tempfile.mkdtemp(prefix="conc-", dir=work)
    f = os.path.join(d, "model.gguf")
    out = _while_frozen(pristine, d, f)
    if stress:
        out.append(_stress(pristine, d, f, stress, seed))
    shutil.rmtree(d)
    return out


def _while_frozen(pristine: str, d: str, f: str) -> list[Check]:
    """A second patch or revert while the first run is frozen inside its write."""
    out: list[Check] = []
    cases = (
        ("rewrite (first patch)", (), gguf_args(1024, "yarn"), ("patch", 1024, "yarn", True)),
        ("in-place re-patch", (gguf_args(1024, "yarn"),), gguf_args(2048, "ntk"), ("patch", 2048, "ntk", True)),
        ("revert", (gguf_args(1024, "yarn"),), ("revert", "{f}"), ("pristine",)),
    )
    for what, setup, args, expect in cases:
        for second in (gguf_args(4096, "linear"), ("revert", "{f}")):
            shutil.copyfile(pristine, f)
            for cmd in setup:
                run(fmt_file(cmd, f, ""))
            before = sha256(f)
            a = cli(fmt_file(args, f, ""), crash_after=1, sig="STOP")  # frozen inside its write, holding the lock
            if not wait_stopped(a):
                a.communicate()
                out.append(Check(f"concurrent: {what}", False, "first process did not stop"))
                continue
            rc, _, err = run(fmt_file(second, f, ""))
            # refused: the lock, or (revert of a file not patched yet) nothing to revert
            refused = one_line_error(rc, err, LOCK_MSG) or one_line_error(rc, err, "no ropepatch provenance")
            # while the first is frozen mid-write, readers see a complete file: the old one (a
            # rewrite has not renamed yet) or the new one (an in-place pwrite is all-or-nothing)
            seen = sha256(f)
            whole_while = seen == before or validate(f, expect, pristine, use_llama=False) is None
            ri, _, _ = run(["inspect", f])
            a.send_signal(signal.SIGCONT)
            _, aerr = a.communicate(timeout=60)
            problem = validate(f, expect, pristine, use_llama=False) if a.returncode == 0 else aerr
            ok = refused and whole_while and ri == 0 and a.returncode == 0 and problem is None and not temps(d)
            name = (f"concurrent: '{' '.join(second[:1] + second[2:])}' while another ropepatch is in its {what} "
                    "-> refused; first completes")
            out.append(Check(name, ok, err.strip() if ok
                             else f"second rc={rc} {err.strip()[:200]}; first rc={a.returncode} {problem}"))
    return out


def _stress(pristine: str, d: str, f: str, stress: int, seed: int) -> Check:
    """Several processes started together on one file; every one either succeeds or refuses
    with a clear line, and the file ends as the complete result of one of them."""
    rng = random.Random(seed)
    cmds = [(gguf_args(1024, "yarn"), ("patch", 1024, "yarn", True)),
            (gguf_args(2048, "ntk"), ("patch", 2048, "ntk", True)),
            (gguf_args(4096, "linear"), ("patch", 4096, "linear", True)), (("revert", "{f}"), ("pristine",))]
    bad, n_ok, n_refused = [], 0, 0
    for i in range(stress):
        shutil.copyfile(pristine, f)
        if rng.random() < 0.5:
            run(fmt_file(gguf_args(1024, "yarn"), f, ""))
        chosen = rng.sample(cmds, 3)
        procs = [cli(fmt_file(c, f, "")) for c, _ in chosen]
        res = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
        for (_, e_, rc), (c, _) in zip(res, chosen):
            if rc == 0:
                n_ok += 1
            elif rc == 2 and (LOCK_MSG in e_ or CHANGED_MSG in e_ or "no ropepatch provenance" in e_
                              or "already patched" in e_):
                n_refused += 1
            else:
                bad.append(f"run {i}: {' '.join(c)} rc={rc} {e_.strip()[:150]}")
        # the end state: the pristine file or a valid result of one of the commands
        if sha256(f) != sha256(pristine) and all(validate(f, exp, pristine, use_llama=False) for _, exp in chosen):
            bad.append(f"run {i}: final file is no command's complete result")
        if temps(d):
            bad.append(f"run {i}: temp files left {temps(d)}")
    return Check(f"concurrent stress: {stress} rounds of 3 processes at once", not bad,
                 f"{n_ok} succeeded, {n_refused} refused cleanly" + ("; " + "; ".join(bad[:5]) if bad else ""))
