"""Hugging Face models as hostile input (#12), one section per class:

1. undo records are input: every field checked, lengths bounded by the shard before anything is
   allocated, the header and config.json to restore rebuilt and verified (sha256, parsed back by
   ropepatch's own reader) before anything is written; a shard re-saved by another tool is refused;
2. special files and bounded reads: FIFOs, devices and directories refused before any open that
   could block, JSON capped in size and decoded by the one hostile-input decoder;
3. all or nothing on disk: the space for the whole run is checked up front (old copies stay
   allocated until the end), and every error names only remedies the command has;
4. races and leftovers: two ``hf -o`` onto one new directory, stale temps of a killed run;
5. every OS error is one line, names escaped.

Real files and real processes (the CLI in process, or a subprocess where a real process is the
point: a FIFO that could hang, two runs at once); tmpfs mounts where a tight or read-only disk is
the point (root only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, require, sha256
from safetensors.numpy import load_file, save_file

from ropepatch.errors import FormatError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.safetensors import read_header
from ropepatch.patch.hf import inspect_hf, patch_hf, revert_hf

SHARD = "model.safetensors"


def model(tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURES / "hf" / "tiny-llama", d)
    return d


def patched(tmp_path: Path, name: str = "m") -> Path:
    d = model(tmp_path, name)
    patch_hf(str(d), 4096, "yarn")
    return d


def snapshot(d: Path) -> dict:
    """Every entry's kind, bytes and link target (to prove nothing was written)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_symlink():
            out[p.name] = ("link", os.readlink(p))
        elif p.is_file():
            out[p.name] = ("file", sha256(p))
        else:
            out[p.name] = ("other", p.stat().st_mode)
    return out


def record_of(d: Path, shard: str = SHARD) -> dict:
    return json.loads(read_header(str(d / shard)).metadata[hk.RP_ORIGINAL])


def set_record(d: Path, text: str, shard: str = SHARD) -> None:
    """Put ``text`` as the shard's undo record, the way another tool would (safetensors)."""
    p = str(d / shard)
    meta = dict(read_header(p).metadata)
    meta[hk.RP_ORIGINAL] = text
    save_file(load_file(p), p, metadata=meta)


def set_field(d: Path, key: str, value) -> None:
    rec = record_of(d)
    rec[key] = value
    set_record(d, json.dumps(rec))


def one_line_error(r, *parts: str, absent: tuple[str, ...] = ()) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("ropepatch: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for p in parts:
        assert p in r.stderr, r.stderr
    for p in absent:
        assert p not in r.stderr, r.stderr
    return r.stderr


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when a call blocks, e.g. on a FIFO."""
    def _alarm(*_):
        raise TimeoutError("blocked: a special file was opened")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---- 1. undo records are input ----------------------------------------------------------------


@pytest.mark.parametrize("key, value, found", [
    ("header_length", 2**62, "an integer from 2 to 100000000, found 4611686018427387904"),
    ("header_length", 2**70, "an integer from 2 to 100000000, found 1180591620717411303424"),
    ("header_length", 300_000_000, "found 300000000"),
    ("header_length", 3e8, "found 300000000.0"),
    ("header_length", True, "found true"),
    ("metadata", "x", "holds malformed original metadata"),
    ("metadata", "[1,2]", "holds malformed original metadata"),
    ("metadata", '{"a":1}', "holds malformed original metadata"),
    ("metadata", '{"format":"pt"},"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}', "malformed original metadata"),
    ("metadata", "[" * 100_000 + "]" * 100_000, "malformed original metadata"),
    ("link", 5, "field 'link': expected a symlink target"),
    ("link", "a\0b", "field 'link': expected a symlink target"),
    ("config_link", [1], "field 'config_link': expected a symlink target"),
    ("config", 5, "field 'config': expected a string, found 5"),
    ("pad", "x" * 8, "field 'pad'"),
    ("header_sha256", "abc", "field 'header_sha256': expected 64 lowercase hex digits"),
])
def test_bad_record_field_is_one_line_and_nothing_is_written(tmp_path, cli, key, value, found):
    d = patched(tmp_path)
    set_field(d, key, value)
    before = snapshot(d)
    for args in (["revert", str(d)], ["hf", str(d), "--ctx", "2048"], ["inspect", str(d)]):
        err = one_line_error(cli(*args), found)
        assert "run the same command again" not in err
    assert snapshot(d) == before  # config.json included


@pytest.mark.parametrize("text, found", [
    ("[" * 100_000 + "]" * 100_000, "nesting"),
    ('{"v":' + "1" * 5000 + "}", "too many digits"),
    ('{"v":1,"config":"\\ud800"}', "unpaired surrogate"),
    ('{"v":1,"v":1}', "duplicate key"),
    ("", "Expecting value"),
])
def test_hostile_record_json_is_one_line(tmp_path, cli, text, found):
    d = patched(tmp_path)
    set_record(d, text)
    before = snapshot(d)
    one_line_error(cli("revert", str(d)), f"{hk.RP_ORIGINAL} is not valid JSON", found)
    assert snapshot(d) == before


def test_lengths_are_bounded_by_the_shard_before_any_allocation(tmp_path):
    """A header_length the format allows (99 MB) but the shard cannot have held: refused before
    the 99 MB header is built (ropepatch only ever grows a header)."""
    d = patched(tmp_path)
    set_field(d, "header_length", 99_000_000)
    before = snapshot(d)
    tracemalloc.start()
    with pytest.raises(FormatError, match=r"records an original header of 99000000 bytes, more than the shard's \d+"):
        revert_hf(str(d))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20 and snapshot(d) == before


def test_records_carry_hashes_and_old_records_still_revert(tmp_path):
    d = model(tmp_path)
    pristine = snapshot(d)
    raw, cfg = (d / SHARD).read_bytes(), (d / "config.json").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    patch_hf(str(d), 4096, "yarn")
    rec = record_of(d)
    assert rec["header_sha256"] == hashlib.sha256(raw[: 8 + n]).hexdigest()
    assert rec["config_sha256"] == hashlib.sha256(cfg).hexdigest()
    revert_hf(str(d))
    assert snapshot(d) == pristine
    # a record written before the hashes existed: what it holds is still checked, and it reverts
    patch_hf(str(d), 4096, "yarn")
    rec = record_of(d)
    del rec["header_sha256"], rec["config_sha256"]
    set_record(d, json.dumps(rec, separators=(",", ":")))
    revert_hf(str(d))
    assert snapshot(d) == pristine


@pytest.mark.parametrize("key", ["header_sha256", "config_sha256"])
def test_hash_mismatch_is_refused(tmp_path, cli, key):
    d = patched(tmp_path)
    set_field(d, key, "0" * 64)
    before = snapshot(d)
    one_line_error(cli("revert", str(d)), "does not match its recorded sha256 000000000000")
    one_line_error(cli("hf", str(d), "--ctx", "2048"), "does not match its recorded sha256")
    assert snapshot(d) == before


def _resave_numpy(p: str, drop: bool) -> None:
    meta = dict(read_header(p).metadata)
    t = load_file(p)
    if drop:
        t.pop(sorted(t)[0])
    save_file(t, p, metadata=meta)


def _resave_torch(p: str, drop: bool) -> None:
    require("torch")
    from safetensors.torch import load_file as tload
    from safetensors.torch import save_file as tsave

    meta = dict(read_header(p).metadata)
    t = tload(p)
    if drop:
        t.pop(sorted(t)[-1])
    tsave(t, p, metadata=meta)


@pytest.mark.parametrize("resave", [pytest.param(_resave_numpy, id="numpy"),
                                    pytest.param(_resave_torch, id="torch", marks=pytest.mark.transformers)])
def test_shard_resaved_by_another_tool_is_refused_not_restored(tmp_path, cli, resave):
    """The metadata (with ropepatch's record) survives a re-save that drops a tensor: revert must
    see that the shard is no longer the one it patched, and neither claim a restore nor write."""
    d = patched(tmp_path)
    resave(str(d / SHARD), True)
    before = snapshot(d)
    err = one_line_error(cli("revert", str(d)), "changed by another tool after ropepatch patched it",
                         "nothing written", absent=("--force", " -o "))
    assert "restored" not in err
    one_line_error(cli("hf", str(d), "--ctx", "2048"), "changed by another tool")
    assert snapshot(d) == before


def test_resave_that_keeps_the_header_still_reverts(tmp_path):
    """A round trip through the safetensors library that writes the same header bytes back is not
    a change: revert restores the original exactly."""
    d = model(tmp_path)
    pristine = snapshot(d)
    patch_hf(str(d), 4096, "yarn")
    _resave_numpy(str(d / SHARD), False)
    revert_hf(str(d))
    assert snapshot(d) == pristine


# ---- 2. special files, bounded reads, hostile JSON ----------------------------------------------


def _swap_for_fifo(p: Path) -> None:
    if p.exists():
        p.unlink()
    os.mkfifo(p)


@pytest.mark.parametrize("name, kind", [
    ("config.json", "FIFO"), ("model.safetensors", "FIFO"), ("model.safetensors.index.json", "FIFO"),
    ("config.json", "directory"), ("model.safetensors", "character device"), ("extra.safetensors", "FIFO"),
])
def test_special_files_are_refused_before_any_open(tmp_path, cli, no_hang, name, kind):
    d = model(tmp_path)
    p = d / name
    if kind == "FIFO":
        _swap_for_fifo(p)
    elif kind == "directory":
        p.unlink()
        p.mkdir()
    else:
        p.unlink()
        p.symlink_to("/dev/zero")
    before = snapshot(d)
    for args in (["inspect", str(d)], ["hf", str(d), "--ctx", "4096"], ["revert", str(d)]):
        one_line_error(cli(*args), f"{name}: expected a regular", kind)
    assert snapshot(d) == before


@pytest.mark.parametrize("source", ["fifo", "/dev/zero", "/dev/null", "dir"])
def test_from_hf_special_file_is_refused_at_once(tmp_path, cli, no_hang, copy_fixture, source):
    g = copy_fixture("tiny-llama-f32.gguf")
    src = {"fifo": str(tmp_path / "cfg"), "dir": str(tmp_path)}.get(source, source)
    if source == "fifo":
        os.mkfifo(src)
    one_line_error(cli("gguf", g, "--from-hf", src), "expected a regular config.json")


def test_config_size_is_capped(tmp_path, cli):
    d = model(tmp_path)
    with open(d / "config.json", "a") as f:
        f.write(" " * (hk.CONFIG_MAX_BYTES + 1))
    one_line_error(cli("hf", str(d), "--ctx", "4096"), f"at most {hk.CONFIG_MAX_BYTES} bytes are read")


def _config_text(d: Path) -> str:
    return (d / "config.json").read_text()


@pytest.mark.parametrize("mutate, found", [
    (lambda t: '{"a":' + "[" * 100_000 + "]" * 100_000 + "}", "nesting"),
    (lambda t: t.rstrip()[:-1] + ', "x": ' + "7" * 5000 + "}", "too many digits"),
    (lambda t: t.replace('"model_type": "llama"', '"model_type": "llama\\ud800"'), "unpaired surrogate"),
    (lambda t: t.replace('"head_dim": 16', '"head_dim": ' + "1" + "0" * 400), "head_dim must be at most"),
    (lambda t: t.replace('"max_position_embeddings": 128', '"max_position_embeddings": ' + "9" * 40),
     "max_position_embeddings must be at most"),
    (lambda t: t.replace('"rope_scaling": null', '"rope_scaling": {"rope_type": "linear", "factor": 1e308}'),
     "factor must be at most"),
])
def test_hostile_config_json_is_one_line(tmp_path, cli, mutate, found):
    d = model(tmp_path)
    text = mutate(_config_text(d))
    assert text != _config_text(d)
    (d / "config.json").write_text(text)
    before = snapshot(d)
    for args in (["inspect", str(d)], ["hf", str(d), "--ctx", "4096"], ["plan", str(d), "--ctx", "4096"]):
        one_line_error(cli(*args), found)
    assert snapshot(d) == before


@pytest.mark.parametrize("text, found", [
    ("[" * 100_000 + "]" * 100_000, "nesting"),
    ('{"weight_map": {"a": ' + "1" * 5000 + "}}", "too many digits"),
    ('{"weight_map": {"a": "m\\ud800.safetensors"}}', "unpaired surrogate"),
    ('{"weight_map": {"a": "a\\u0000b"}}', "is not a plain file name"),
])
def test_hostile_index_json_is_one_line(tmp_path, cli, text, found):
    d = model(tmp_path)
    (d / hk.INDEX_NAME).write_text(text)
    one_line_error(cli("hf", str(d), "--ctx", "4096"), found)


@pytest.mark.parametrize("value", ["²", "١٢", "9" * 5000, "12\n"])
def test_hostile_ctx_in_shard_metadata(tmp_path, cli, value):
    """``int("²")`` raises and ``int("١٢")`` is 12: inspect shows any non-ASCII-decimal value as
    the string it is, and patch / revert are unaffected."""
    d = patched(tmp_path)
    p = str(d / SHARD)
    meta = dict(read_header(p).metadata)
    meta[hk.RP_CTX] = value
    save_file(load_file(p), p, metadata=meta)
    r = cli("inspect", str(d), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["record"]["ctx"] == value
    assert cli("inspect", str(d)).returncode == 0
    assert cli("revert", str(d)).returncode == 0


def test_shard_header_with_unpaired_surrogate_metadata(tmp_path, cli):
    d = model(tmp_path)
    h = b'{"__metadata__":{"format":"pt","x":"\\ud800"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (d / SHARD).write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 4)
    one_line_error(cli("hf", str(d), "--ctx", "4096"), "unpaired surrogate")


# ---- 3. all or nothing on disk --------------------------------------------------------------------


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


# ---- 4. races and leftovers -------------------------------------------------------------------------


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


# ---- 5. every OS error is one line --------------------------------------------------------------------


def test_os_errors_are_one_line_with_escaped_names(tmp_path, cli):
    d = model(tmp_path)
    (tmp_path / "afile").write_text("x")
    os.symlink("loop", tmp_path / "loop")
    odd = tmp_path / "a\nb"
    shutil.copytree(d, odd)
    (odd / "config.json").unlink()
    cases = [
        (["hf", str(tmp_path / "nope"), "--ctx", "4096"], "nope: no such file or directory"),
        (["hf", str(tmp_path / "nope"), "--ctx", "4096", "-o", str(tmp_path)], "no such file or directory"),
        (["hf", str(tmp_path / "afile" / "m"), "--ctx", "4096"], "a component of the path is not a directory"),
        (["revert", str(tmp_path / "afile" / "config.json")], "a component of the path is not a directory"),
        (["hf", str(tmp_path / "loop"), "--ctx", "4096"], "too many levels of symbolic links"),
        (["inspect", str(tmp_path / "loop" / "config.json")], "too many levels of symbolic links"),
        (["hf", str(tmp_path / ("x" * 300)), "--ctx", "4096"], "file name too long"),
        (["hf", str(d), "--ctx", "4096", "-o", str(tmp_path / ("y" * 300))], "file name too long"),
        (["hf", str(odd), "--ctx", "4096"], "a\\nb: no config.json"),
        (["hf", str(tmp_path / "x\ny"), "--ctx", "4096"], "x\\ny: no such file or directory"),
    ]
    before = snapshot(d)
    for args, part in cases:
        one_line_error(cli(*args), part)
    assert snapshot(d) == before


def test_config_symlink_loop_and_dangling_shard(tmp_path, cli):
    d = model(tmp_path)
    (d / "config.json").unlink()
    os.symlink("config.json", d / "config.json")
    one_line_error(cli("hf", str(d), "--ctx", "4096"), "config.json: cannot read the config.json: too many levels")
    d = model(tmp_path, "m2")
    os.symlink("nowhere", d / "b.safetensors")
    one_line_error(cli("inspect", str(d)), "b.safetensors: cannot read the safetensors file: no such file")
    assert inspect_hf  # the library entry point the CLI calls
