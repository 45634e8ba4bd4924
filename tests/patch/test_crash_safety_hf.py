"""Crash safety of Hugging Face writes: the CI slice of tools/crash_harness_hf.py (kill -9 at
every write step of ``ropepatch hf`` / ``revert``, every file checked, re-run and revert checked)
and regression tests for what the harness found. The long run and its numbers:
docs/reliability.md."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys

import pytest
from conftest import ROOT, run_cli, sha256

sys.path.insert(0, str(ROOT / "tools"))
import crash_harness_hf as hh  # noqa: E402

from ropepatch.errors import UsageError  # noqa: E402
from ropepatch.formats.safetensors import read_header  # noqa: E402
from ropepatch.patch.hf import RP_PREVIOUS_CONFIG_SHA256, inspect_hf, patch_hf, revert_hf  # noqa: E402

SHARD = "model.safetensors"


@pytest.mark.parametrize("scenario", hh.QUICK_SCENARIOS, ids=lambda sc: sc.name.split(" (")[0])
def test_kill_at_every_write_step(tmp_path, scenario):
    """SIGKILL right after each file-changing step: every file is its old bytes or the
    uninterrupted result (a re-patch's shards may also carry the transient previous-config
    entry), re-running the command gives the uninterrupted result with no temp file left, and
    revert then gives the pristine bytes."""
    c, rows = hh.kill_matrix(hh.MODELS[:1], [scenario], str(tmp_path), jobs=2, log=None)
    assert c.problems == []
    assert c.corrupt == 0
    assert c.kills == rows[0]["steps"] >= 9  # the test can fail: kills were really tried
    assert c.kills == c.original + c.patched + c.mixed
    assert c.recovered == c.kills
    assert c.patched == 2  # killed after the last rename and after the last fsync
    assert c.mixed > 0  # a kill between two files' writes
    assert c.revert_ok == c.revert_tried
    if scenario.args[0] == "hf" and not scenario.setup:  # first patch: shards first, config.json last
        assert c.mixed_kinds == {"config.json old, shards new": c.mixed}
    elif scenario.args[0] == "hf":  # re-patch: shards with the previous config's sha256 first
        assert set(c.mixed_kinds) == {"config.json old, shards new+prev", "config.json new, shards new+prev"}
    else:  # revert: config.json first, then the shards
        assert c.mixed_kinds == {"config.json new, shards old": c.mixed}


def test_kill_while_revert_puts_the_cache_symlinks_back(tmp_path):
    """An HF cache snapshot (config.json and the shard are symlinks into blobs/): patch replaced
    the links with regular files; a kill at each step of the revert that puts them back leaves
    each name the patched file or the link, the shared blobs unchanged, and the re-run restores
    every link (issue 12)."""
    revert = next(sc for sc in hh.SCENARIOS if sc.name == "revert")
    c, rows = hh.kill_matrix(["tiny-llama-hf-cache"], [revert], str(tmp_path), jobs=2, log=None)
    assert c.problems == [] and c.corrupt == 0
    assert c.kills == rows[0]["steps"] >= 4 and c.recovered == c.kills
    assert c.mixed_kinds == {"config.json new, shards old": c.mixed} and c.mixed > 0


def _model(tmp_path, name="m"):
    d = tmp_path / name
    shutil.copytree(hh.FIXTURE, d)
    return d


def _cli_killed(args, n):
    rc, _, err = hh.run(args, crash_after=n)
    assert rc == -9, err
    return rc


def test_repatch_killed_between_shards_and_config_is_recoverable(tmp_path):
    """Regression: a re-patch writes the shards before config.json. A kill in between left shards
    naming only the new config.json next to the old one, and both the re-run and revert refused
    it as a hand edit ('changed since ropepatch patched it'). The shards now also name the
    config.json being replaced until config.json is written."""
    ref, d = _model(tmp_path, "ref"), _model(tmp_path)
    for m in (ref, d):
        patch_hf(str(m), 1024, "yarn")
    old_cfg = (d / "config.json").read_bytes()
    patch_hf(str(ref), 2048, "ntk")
    _cli_killed(["hf", str(d), "--ctx", "2048", "--method", "ntk"], 2)  # shard pwrite + fsync done
    assert (d / "config.json").read_bytes() == old_cfg
    meta = dict(read_header(str(d / SHARD)).metadata)
    assert meta["ropepatch.method"] == "ntk"
    assert meta[RP_PREVIOUS_CONFIG_SHA256] == sha256(d / "config.json")
    assert inspect_hf(str(d)).messages == ()  # not reported as a hand edit
    other = tmp_path / "other"
    shutil.copytree(d, other)
    # the re-run gives the uninterrupted result, without the transient entry
    r = run_cli("hf", str(d), "--ctx", "2048", "--method", "ntk")
    assert r.returncode == 0, r.stderr
    for f in ("config.json", SHARD):
        assert sha256(d / f) == sha256(ref / f)
    assert RP_PREVIOUS_CONFIG_SHA256 not in read_header(str(d / SHARD)).metadata
    # or revert straight away: the pristine bytes
    revert_hf(str(other))
    for f in ("config.json", SHARD):
        assert sha256(other / f) == sha256(hh.FIXTURE / f)


def test_repatch_still_refuses_a_hand_edited_config(tmp_path):
    """The previous-config entry only names a config.json ropepatch wrote."""
    d = _model(tmp_path)
    patch_hf(str(d), 1024, "yarn")
    cfg = json.loads((d / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    with pytest.raises(UsageError, match="changed since ropepatch patched it"):
        patch_hf(str(d), 2048, "ntk")


def _prepare_out(tmp_path):
    sc = next(s for s in hh.SCENARIOS if s.output)
    pristine = hh.make_models(str(tmp_path))[hh.MODELS[0]]
    return hh.prepare(sc, hh.MODELS[0], pristine, str(tmp_path))


@pytest.mark.parametrize("where", ["staging", "commit"])
def test_out_dir_killed_midway_then_rerun_completes(tmp_path, where):
    """Regression: ``hf -o OUT`` wrote straight into OUT, so a kill left a shard and a temp
    file there and the re-run refused ('directory is not empty'). The files are now staged in a
    locked directory inside OUT and renamed in at the end (config.json last); the re-run clears
    what a killed run left."""
    prep = _prepare_out(tmp_path)
    n = 3 if where == "staging" else 17  # 17: stage, shard (8 steps), config.json (7), shard renamed in
    base, d, o = hh.fresh_copy(prep, str(tmp_path), "k-")
    _cli_killed(hh.fmt_dir(prep.scenario.args, d, o), n)
    names = sorted(os.listdir(o))
    assert any(x.startswith(".ropepatch-") for x in names)
    if where == "commit":
        assert SHARD in names and "config.json" not in names
    else:
        assert [x for x in names if not x.startswith(".ropepatch-")] == []
    state, why, _ = hh.classify(prep, d, o)
    assert why is None and state == ("original" if where == "staging" else "mixed")
    assert hh.recover(prep, state, d, o, base) is None  # re-run: complete copy, no temp; revert: pristine


def test_out_dir_with_other_files_is_still_refused(tmp_path):
    """A leftover staging directory makes OUT reusable only when everything else in it is a file
    this command writes."""
    d = _model(tmp_path)
    out = tmp_path / "out"
    (out / ".ropepatch-dead0000.tmp").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="directory is not empty"):
        patch_hf(str(d), 1024, "yarn", out=str(out))
    # a staging directory whose run is alive (locked) is not cleared either
    (out / "notes.txt").unlink()
    live = out / ".ropepatch-live0000.tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(UsageError, match="directory is not empty"):
            patch_hf(str(d), 1024, "yarn", out=str(out))
    finally:
        os.close(fd)
    patch_hf(str(d), 1024, "yarn", out=str(out))  # both stale now: cleared
    assert sorted(os.listdir(out)) == ["config.json", SHARD]
