"""The GGUF targets of tools/fuzz_headers.py: ``parse_header`` on the bytes, then, on a file,
``read_header``, ``inspect_gguf``, ``patch_gguf(dry_run=True)``, ``revert_gguf(dry_run=True)``,
``make_plan`` for every method and one command line; when a dry run accepts an input, the patch is
really written to a copy, re-patched in place with another method and reverted (the revert must
give the input's exact bytes). And the command-line numbers target: ``ropepatch gguf --dry-run`` /
``ropepatch plan`` with hostile --ctx, --alpha, --base, --rope-dim values.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

from fuzz_common import MiB, Stats, alloc_budget, cli, fresh_case, guarded
from fuzz_gguf_mutate import hostile_options

from ropepatch.errors import RopepatchError
from ropepatch.formats.gguf.header import parse_header, read_header
from ropepatch.patch import gguf as gp
from ropepatch.rope.methods import METHODS, make_plan

# ---- GGUF -------------------------------------------------------------------------------


def _listing(d: str) -> list:
    return sorted((n, os.stat(os.path.join(d, n)).st_size) for n in os.listdir(d))


def check_gguf(stats: Stats, rng: random.Random, data: bytes, work: str, save=None, timeout=5.0,
               deep: bool = True) -> None:
    stats.cases += 1
    budget = alloc_budget(data)
    guarded(stats, "parse_header", lambda: parse_header(data, "fuzz.gguf", len(data)),
            data, budget, timeout, save, ".gguf")
    d, path = fresh_case(work, "case", "model.gguf", data)
    before = _listing(d)

    def wrote() -> bool:
        return _listing(d) != before or Path(path).read_bytes() != data

    guarded(stats, "read_header", lambda: read_header(path), data, budget, timeout, save, ".gguf")
    info = guarded(stats, "inspect_gguf", lambda: gp.inspect_gguf(path), data, budget, timeout, save, ".gguf")
    if info is not None:
        for m in METHODS:
            ctx = rng.choice([info.original.n_ctx_train * 2, info.original.n_ctx_train + 1, 1 << 20, 0xFFFFFFFF])
            guarded(stats, "make_plan", lambda ctx=ctx, m=m: make_plan(info.original, ctx, m),
                    data, budget, timeout, save, ".gguf")
    method = rng.choice(list(METHODS))
    ctx = rng.choice([256, 512, 1024, 4096, 1 << 20, 0xFFFFFFFF, 1 << 33, 129, 1])
    alpha = rng.choice([None, None, None, 1.0, 2.5, 1e30, float("inf")])
    rs = rng.random() < 0.3
    opts = hostile_options(rng, method)
    res = guarded(stats, "patch_gguf(dry_run)",
                  lambda: gp.patch_gguf(path, ctx, method, alpha, dry_run=True, replace_scaling=rs, options=opts),
                  data, budget, timeout, save, ".gguf")
    guarded(stats, "revert_gguf(dry_run)", lambda: gp.revert_gguf(path, dry_run=True),
            data, budget, timeout, save, ".gguf")
    flags = ["--factors", "1,2,4"] if method == "factors" and rng.random() < 0.5 else []
    argv = rng.choice([["inspect", path], ["gguf", path, "--ctx", str(ctx), "--method", method, "--dry-run", *flags],
                       ["plan", path, "--ctx", str(ctx)], ["revert", path, "--dry-run"]])
    guarded(stats, "cli " + argv[0], cli(argv + (["--json"] if rng.random() < 0.4 else [])),
            data, budget, timeout, save, ".gguf")
    if wrote():
        stats.finding("wrote", "dry-run entry points", "the input file or its directory changed", data, save, ".gguf")
        return
    if res is not None and deep:
        _deep(stats, rng, data, path, d, ctx, method, alpha, rs, save, timeout, opts)


def _deep(stats, rng, data, path, d, ctx, method, alpha, rs, save, timeout, opts=None) -> None:
    """The dry run accepted the input: write the patch for real (to a copy), re-patch it in
    place, revert it: every step must work and the revert must give the input's bytes."""
    out = os.path.join(d, "out.gguf")
    back = os.path.join(d, "back.gguf")
    orig = os.path.join(d, "orig.gguf")
    budget = alloc_budget(data) + 2 * len(data)

    def run():
        # what a revert must give: the input itself, or, when the input was patched already,
        # what reverting the input gives (None: the input's own record cannot be reverted)
        if gp.inspect_gguf(path).provenance is None:
            expect = data
        else:
            try:
                gp.revert_gguf(path, out=orig)
                expect = Path(orig).read_bytes()
            except RopepatchError:
                expect = None
        r = gp.patch_gguf(path, ctx, method, alpha, out=out, replace_scaling=rs, options=opts)
        read_header(out)
        gp.inspect_gguf(out)
        prov = gp.inspect_gguf(out).provenance
        if prov is not None:  # a second, in-place patch with another method, then revert
            m2 = rng.choice(list(METHODS))
            with contextlib.suppress(RopepatchError):
                gp.patch_gguf(out, max(ctx, 2) * 2 if ctx < 0x7FFFFFFF else ctx, m2, replace_scaling=rs)
            gp.revert_gguf(out, out=back)
            if expect is not None and Path(back).read_bytes() != expect:
                raise AssertionError("revert of the written patch does not give the original bytes")
        return r

    try:
        guarded(stats, "patch+repatch+revert", run, data, budget, timeout, save, ".gguf")
    finally:
        if Path(path).read_bytes() != data:
            stats.finding("wrote", "patch -o", "patch to a copy changed the input", data, save, ".gguf")


# ---- command-line numbers -----------------------------------------------------------------

HOSTILE_NUMBERS = ["0", "-1", "1", "1.0", "nan", "inf", "-inf", "1e39", "1e31", "1e300", "1e-300", "4294967295",
                   "4294967296", "99999999999999999999999", "0x10", "1_000", " 5", "", "2.5", "1e308", "-0"]


def check_cli_numbers(stats: Stats, rng: random.Random, seed_path: str, timeout=5.0, save=None) -> None:
    stats.cases += 1
    if rng.random() < 0.5:
        argv = ["gguf", seed_path, "--dry-run", "--ctx", rng.choice(HOSTILE_NUMBERS + ["1024", "512"]),
                "--method", rng.choice(list(METHODS))]
    else:
        argv = ["plan", "--base", rng.choice(HOSTILE_NUMBERS + ["10000"]),
                "--rope-dim", rng.choice(HOSTILE_NUMBERS + ["64"]),
                "--orig-ctx", rng.choice(HOSTILE_NUMBERS + ["4096"]), "--ctx", rng.choice(HOSTILE_NUMBERS + ["16384"])]
    if rng.random() < 0.7:
        argv += ["--alpha", rng.choice(HOSTILE_NUMBERS)]
    if rng.random() < 0.3:
        argv += ["--json"]
    data = " ".join(argv).encode()
    guarded(stats, "cli " + argv[0], cli(argv), data, 8 * MiB, timeout, save, ".argv")
