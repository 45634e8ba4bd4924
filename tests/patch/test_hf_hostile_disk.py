"""Hugging Face models as hostile input (#12): all or nothing on disk, races and leftovers.

1. the space for the whole run is checked up front (old copies stay allocated until the end),
   and every error names only remedies the command has;
2. two ``hf -o`` onto one new directory, stale temps of a killed run.

Real files and real processes (the CLI in process, or a subprocess where a real process is the
point: two runs at once); tmpfs mounts where a tight or read-only disk is the point (root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers_hf_hostile import SHARD, model, one_line_error, patched, snapshot
from conftest import FIXTURES, ROOT
from safetensors.numpy import save_file

from ropepatch.formats.hf import keys as hk

# ---- 1. all or nothing on disk --------------------------------------------------------------------


@contextlib.contextmanager
def mounted(tmp_path: Path, *opts: str):
    """A filesystem mounted for the test (tmpfs of a size, or a read-only bind); skipped only
    when this machine does not allow mounting (not root, or no mount permission)."""
    m = tmp_path / f"mnt{len(list(tmp_path.iterdir()))}"
    m.mkdir()
    r = subprocess.run(["mount", *opts, str(m)], capture_output=True, text=True)
    if r.returncode != 0:
        m.rmdir()
        pytest.skip(f"cannot mount here ({r.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield m
    finally:
        subprocess.run(["umount", str(m)], capture_output=True)


def two_shard_model(d: Path, mib: int = 1) -> None:
    """config.json + 2 shards of ``mib`` MiB each and an index."""
    d.mkdir()
    shutil.copy(FIXTURES / "hf" / "tiny-llama" / "config.json", d)
    wm = {}
    for i in range(2):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        t = {f"w{i}": np.full(mib * 2**18, i, np.float32)}
        save_file(t, str(d / name), metadata={"format": "pt"})
        wm[f"w{i}"] = name
    (d / hk.INDEX_NAME).write_text(json.dumps({"weight_map": wm}))


def _fill_to(m: Path, free: int) -> None:
    st = os.statvfs(m)
    have = st.f_bavail * st.f_frsize
    if have > free:
        (m / "filler").write_bytes(b"\0" * (have - free))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_tight_disk_patch_checks_the_whole_run_up_front(tmp_path, cli):
    """Two 1 MiB shards, room for about 1.5: refused before shard 1 is written (the old copies
    stay allocated until the run ends); the only remedies named are ones hf has. With room for
    both, the same patch succeeds."""
    with mounted(tmp_path, "-t", "tmpfs", "-o", "size=16m", "tmpfs") as m:
        d = m / "m"
        two_shard_model(d)
        _fill_to(m, 1_600_000)
        before = snapshot(d)
        one_line_error(cli("hf", str(d), "--ctx", "4096"), "needs 2.0 MiB", "-o OUTDIR", "nothing written",
                       absent=("--no-record",))
        assert snapshot(d) == before
        one_line_error(cli("hf", str(d), "--ctx", "4096", "-o", str(m / "out")), "choose an -o directory",
                       absent=("--no-record",))
        assert not (m / "out").exists()
        (m / "filler").unlink()
        _fill_to(m, 2_300_000)
        assert cli("hf", str(d), "--ctx", "4096").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_tight_disk_revert_writes_nothing_not_even_config(tmp_path, cli):
    with mounted(tmp_path, "-t", "tmpfs", "-o", "size=16m", "tmpfs") as m:
        d = m / "m"
        two_shard_model(d)
        pristine = snapshot(d)
        assert cli("hf", str(d), "--ctx", "4096").returncode == 0
        _fill_to(m, 1_600_000)
        before = snapshot(d)
        one_line_error(cli("revert", str(d)), "free some space and run revert again", "nothing written",
                       absent=(" -o ", "--no-record"))
        assert snapshot(d) == before  # config.json too
        (m / "filler").unlink()
        assert cli("revert", str(d)).returncode == 0
        assert snapshot(d) == pristine


@pytest.mark.skipif(os.geteuid() != 0, reason="bind-mounts read-only (root only)")
def test_read_only_file_system_names_the_commands_remedy(tmp_path, cli):
    d = patched(tmp_path)
    with mounted(tmp_path, "--bind", str(d)) as m:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(m)], check=True)
        one_line_error(cli("hf", str(m), "--ctx", "2048"), "read-only file system", "-o OUTDIR",
                       absent=("--no-record",))
        one_line_error(cli("revert", str(m)), "read-only file system", "run revert again",
                       absent=(" -o ", "--no-record"))


# ---- 2. races and leftovers -------------------------------------------------------------------------


def _py(*args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ropepatch", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _wait_stopped(p: subprocess.Popen) -> None:
    for _ in range(400):
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.025)
    raise AssertionError("the first run never stopped")


def test_two_out_runs_onto_one_new_directory(tmp_path):
    """The first run, frozen while it writes into OUT (holding OUT's lock), makes a second run
    onto the same OUT refuse with one line; resumed, the first completes. Then two runs started
    together: exactly one succeeds, and OUT holds its complete copy."""
    d = model(tmp_path)
    out = tmp_path / "out"
    first = _py("hf", str(d), "--ctx", "4096", "-o", str(out),
                env={"ROPEPATCH_CRASH_AFTER": "1", "ROPEPATCH_CRASH_SIGNAL": "STOP"})
    try:
        _wait_stopped(first)
        second = _py("hf", str(d), "--ctx", "8192", "-o", str(out))
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2 and err.count("\n") == 1
        assert "another ropepatch process is writing into this directory" in err
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=60) == 0
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 4096
    for i in range(3):
        o = tmp_path / f"o{i}"
        runs = [_py("hf", str(d), "--ctx", str(4096 * (k + 1)), "-o", str(o)) for k in range(2)]
        res = [(p.wait(timeout=60), p.stderr.read()) for p in runs]
        assert sorted(rc for rc, _ in res) == [0, 2], res
        winner = [k for k, (rc, _) in enumerate(res) if rc == 0][0]
        loser_err = res[1 - winner][1]
        assert loser_err.count("\n") == 1 and "Traceback" not in loser_err
        assert json.loads((o / "config.json").read_text())["max_position_embeddings"] == 4096 * (winner + 1)
        assert sorted(os.listdir(o)) == ["config.json", SHARD]


@pytest.mark.parametrize("args", [["hf", "--ctx", "8192"], ["revert"], ["hf", "--ctx", "4096", "--method", "yarn"]],
                         ids=["in-place", "revert", "no-op"])
def test_every_run_removes_what_a_killed_run_left(tmp_path, cli, args):
    """A temp file and a temp symlink of a killed run are gone after any run in that directory,
    also an in-place re-patch that rewrites nothing and a run that changes nothing."""
    d = patched(tmp_path)
    (d / ".ropepatch-deadbeef.tmp").write_bytes(b"x" * 1000)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.symlink(SHARD, d / f".ropepatch-{dead.pid}-0badf00d.link")
    assert cli(args[0], str(d), *args[1:]).returncode == 0
    assert [n for n in os.listdir(d) if n.startswith(".ropepatch-")] == []
