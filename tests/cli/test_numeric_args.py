"""Numbers as hostile input (issue 12): a non-finite or overflowing number on the command line
(``plan --base 1e308``, ``--alpha 1e300``, ``--ctx`` beyond 32 bits, ``--threads 10**20``,
``--buckets inf``) is one line and exit 2 -- never ``inf`` or ``nan`` printed as a result,
never a traceback or a native crash. Type errors stay argparse's (usage, then one error line)."""

from __future__ import annotations

import shutil

import pytest
from conftest import FIXTURES

BARE = ["plan", "--rope-dim", "64", "--orig-ctx", "4096", "--ctx", "8192"]


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.gguf"
    shutil.copyfile(FIXTURES / "tiny-llama-f32.gguf", p)
    return str(p)


def one_line(r, pattern: str):
    import re

    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropepatch: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize("args,pattern", [
    (["--base", "1e308"], r"--base must be a finite number > 1 and at most 3\.403e\+38 .*found 1e\+308"),
    (["--base", "inf"], r"--base must be a finite number > 1 .*found inf"),
    (["--base", "nan"], r"--base must be a finite number > 1 .*found nan"),
    (["--base", "1"], r"--base must be a finite number > 1"),
    (["--base", "3e38", "--method", "ntk"],
     r"ntk: the planned rotary base 6\.136e\+38 is beyond the largest GGUF float32"),
    (["--base", "3e38", "--method", "all"], r"beyond the largest GGUF float32"),
    (["--base", "10000", "--alpha", "1e308", "--method", "ntk"], r"--alpha 1e\+308 is too large for ntk"),
    (["--base", "1e38", "--alpha", "1e300", "--method", "dynamic"], r"--alpha 1e\+300 is too large for dynamic"),
    (["--base", "10000", "--alpha", "inf"], r"--alpha must be a finite number >= 1, found inf"),
    (["--base", "10000", "--alpha=-nan"], r"--alpha must be a finite number >= 1, found nan"),
])
def test_plan_bare_numbers(cli, args, pattern):
    one_line(cli(*BARE, *args), pattern)


def test_plan_never_prints_inf_or_nan(cli):
    """What plan does print, for the largest inputs it accepts, is finite."""
    r = cli("plan", "--base", "3.4e38", "--rope-dim", "64", "--orig-ctx", "1", "--ctx", "4294967295",
            "--method", "linear")
    assert r.returncode == 0, r.stderr
    r2 = cli("plan", "--base", "3.4e38", "--rope-dim", "64", "--orig-ctx", "1", "--ctx", "4294967295",
             "--method", "yarn", "--json")
    assert r2.returncode == 0, r2.stderr
    for out in (r.stdout, r2.stdout):
        words = out.replace(",", " ").replace("=", " ").replace(":", " ").split()
        assert not [w for w in words if w.lower().strip("'\"()") in ("inf", "-inf", "nan", "infinity")], out


@pytest.mark.parametrize("args,pattern", [
    (["--ctx", "99999999999999999999"], r"--ctx must fit in 32 bits"),
    (["--ctx", "4096", "--alpha", "1e300", "--method", "ntk"], r"--alpha 1e\+300 is too large for ntk"),
    (["--ctx", "4096", "--alpha", "1e39", "--method", "yarn"], r"."),  # refused or finite: never inf
])
def test_plan_and_gguf_on_a_model(cli, model, args, pattern):
    for cmd in (["plan", model], ["gguf", model, "--dry-run"]):
        r = cli(*cmd, *args)
        if r.returncode == 0:
            assert "inf" not in r.stdout.lower().split() and "nan" not in r.stdout.lower().split()
            continue
        one_line(r, pattern)


@pytest.mark.parametrize("args,message", [
    (["eval", "M", "--ctx", "256", "--text", "M", "--threads", "513"], "expected at most 512 threads"),
    (["eval", "M", "--ctx", "256", "--text", "M", "--threads", "99999999999999999999"], "expected at most 512"),
    (["validate", "M", "--threads", "100000"], "expected at most 512 threads"),
    (["passkey", "M", "--ctx", "512", "--trials", "99999999999999999999"], "expected at most 100000 trials"),
    (["passkey", "M", "--ctx", "512", "--seed", "-1"], "expected a number >= 0"),
    (["plan", "M", "--ctx", "1e5"], "expected a whole number of tokens"),
    (["plan", "M", "--ctx", "9" * 5000], "expected a whole number of tokens"),
    (["gguf", "M", "--ctx", "4096", "--alpha", "1e400x"], "expected a number"),
])
def test_argument_type_errors_stay_argparse(cli, model, args, message):
    """Refused while the arguments are parsed (argparse's error path: exit 2, the message on
    the last stderr line), before any file is opened or a worker started."""
    r = cli(*[model if a == "M" else a for a in args])
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert message in r.stderr.splitlines()[-1], r.stderr


@pytest.mark.parametrize("spec,pattern", [
    ("inf", r"expected a count or comma-separated positions, found 'inf'"),
    ("0,1e400", r"expected a count or comma-separated positions"),
    ("1e308", r"expected a count from 1 to the context 256"),
    ("99999999999999999999", r"expected a count from 1 to the context 256"),
    ("0", r"expected a count from 1"),
])
def test_bucket_counts(spec, pattern):
    """``eval --buckets`` (parsed in the worker; here directly): ``inf`` was an OverflowError,
    a count of 1e308 a loop that never ends."""
    from ropepatch.errors import UsageError
    from ropepatch.quality.buckets import parse_buckets

    with pytest.raises(UsageError, match=pattern):
        parse_buckets(spec, 256, 128)
