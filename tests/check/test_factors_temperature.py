"""`factors --attn-factor M`: the attention temperature a per-pair factor file carries as
``{arch}.rope.scaling.attn_factor``, against the real runtime (llama-cpp-python), no mocks.

* The decisive test: on tiny-llama-f32 at 2x its training length, a `factors` file whose every
  pair is the ntk-parts ramp and whose attn_factor is 1 + 0.1 ln s gives the same per-token NLL
  as the UNPATCHED file run with llama.cpp's own YaRN context settings (float32 tolerance).
  Without the temperature it does not (the control).
* validate: checks a-c pass on a `factors --attn-factor 1.07` file; b fails when the key is
  changed behind ropepatch's back.
* The key is written, recorded and reverted: revert gives the original sha256, re-patching
  with M = 1 (or another method) removes it, and other methods' headers are unchanged.
"""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest
from conftest import require

require("llama_cpp")

from ropepatch.check.validate import FAILED, PASSED, format_report, validate  # noqa: E402
from ropepatch.errors import UsageError  # noqa: E402
from ropepatch.formats.gguf.header import read_header  # noqa: E402
from ropepatch.patch.gguf import inspect_gguf, patch_gguf, revert_gguf  # noqa: E402
from ropepatch.quality.scoring import runtime_settings_for, score_full_logits  # noqa: E402
from ropepatch.rope import factors as ff  # noqa: E402
from ropepatch.rope.methods import make_plan  # noqa: E402

NAME = "tiny-llama-f32.gguf"
KEY = "llama.rope.scaling.attn_factor"


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def poke_f32(path: str, key: str, value: float) -> None:
    """Overwrite a FLOAT32 metadata value in place, behind ropepatch's back."""
    h = read_header(path)
    kv = h.entry(key)
    off = h.raw.find(kv.raw)
    assert off > 0 and h.raw.count(kv.raw) == 1
    with open(path, "r+b") as f:
        f.seek(off + len(kv.raw) - 4)
        f.write(struct.pack("<f", value))
    assert read_header(path).get(key) == pytest.approx(value)


def yarn_as_factors(copy_fixture, dest: str, temperature: bool) -> tuple[str, float, object]:
    path = copy_fixture(NAME, dest)
    orig = inspect_gguf(path).original
    ctx = 2 * orig.n_ctx_train
    s = ctx / orig.n_ctx_train
    ramp = ff.ntk_parts_factors(orig.rope_dim, orig.freq_base, orig.n_ctx_train, s)
    opts = {"points": ramp, "attn_factor": ff.yarn_attn_factor(s) if temperature else 1.0}
    patch_gguf(path, ctx, "factors", options=opts)
    assert inspect_gguf(path).current.freq_factors == ramp
    return path, s, orig


def nll_pair(copy_fixture, temperature: bool) -> tuple[np.ndarray, np.ndarray]:
    path, s, orig = yarn_as_factors(copy_fixture, f"t{temperature}.gguf", temperature)
    ctx = 2 * orig.n_ctx_train
    rng = np.random.default_rng(14)
    seq = rng.integers(1, 200, size=ctx).tolist()
    yarn_settings, _ = runtime_settings_for(orig, ctx, "yarn", s)
    yarn = score_full_logits(copy_fixture(NAME, "plain.gguf"), seq, {**yarn_settings, "n_ctx": ctx}, n_threads=1)
    fac = score_full_logits(path, seq, {"n_ctx": ctx}, n_threads=1)
    return yarn[1:], fac[1:]


def test_factors_with_ntk_parts_ramp_and_yarn_temperature_is_yarn(copy_fixture):
    yarn, fac = nll_pair(copy_fixture, temperature=True)
    d = np.abs(yarn - fac)
    diff = float(d.max())
    print(f"max |NLL(yarn runtime) - NLL(factors + attn_factor)| = {diff:.3g}, median {np.median(d):.3g}, "
          f"over {len(yarn)} tokens of mean NLL {yarn.mean():.3g}")
    # float32 rounding (theta / f32 divisor vs ggml's interp/extrap mix) amplified by the tiny random model:
    # measured max 2.1e-4, median 3e-6 (mean NLL 12.6); the yarn-patched file itself gives exactly 0
    assert diff < 1e-3 and np.median(d) < 1e-5, diff
    # control: the same frequencies without the temperature are far off (measured max 2.08)
    yarn0, fac0 = nll_pair(copy_fixture, temperature=False)
    assert float(np.max(np.abs(yarn0 - fac0))) > 1000 * diff


def test_validate_passes_and_a_tampered_key_fails_b(copy_fixture):
    path = copy_fixture(NAME, "t107.gguf")
    patch_gguf(path, 1024, "factors", options={"attn_factor": 1.07})
    assert read_header(path).get(KEY) == pytest.approx(1.07)
    r = validate(path, reference_forward=False)
    st = {c.id: c.status for c in r.checks}
    assert st["a"] == st["b"] == st["c"] == PASSED, format_report(r)
    poke_f32(path, KEY, 1.2)
    r = validate(path, reference_forward=False)
    assert r.check("a").status == r.check("b").status == FAILED, format_report(r)
    assert KEY in r.check("a").reason
    assert "attn_factor: runtime 1.20000005, plan 1.07000005" in r.check("b").reason


def test_key_is_recorded_and_reverted(copy_fixture):
    path = copy_fixture(NAME, "rev.gguf")
    before = sha(path)
    patch_gguf(path, 1024, "factors", options={"attn_factor": 1.2})
    assert read_header(path).get(KEY) == pytest.approx(1.2)
    patch_gguf(path, 1024, "factors")  # back to M = 1: the key goes
    assert read_header(path).get(KEY) is None and inspect_gguf(path).current.attn_factor == 1.0
    patch_gguf(path, 2048, "factors", options={"attn_factor": 0.9})
    patch_gguf(path, 1024, "ntk")
    assert read_header(path).get(KEY) is None
    revert_gguf(path)
    assert sha(path) == before
    # a first patch with another method records no attn key; a later --attn-factor adds it, revert restores
    patch_gguf(path, 1024, "ntk")
    patch_gguf(path, 1024, "factors", options={"attn_factor": 1.3})
    assert inspect_gguf(path).current.attn_factor == pytest.approx(1.3)
    revert_gguf(path)
    assert sha(path) == before


@pytest.mark.parametrize("bad", [0.4, 2.5, math.inf, math.nan])
def test_attn_factor_out_of_range_is_refused(bad):
    orig = inspect_gguf(str(__import__("conftest").FIXTURES / NAME)).original
    with pytest.raises(UsageError, match="--attn-factor: expected a finite number between 0.5 and 2"):
        make_plan(orig, 1024, "factors", options={"attn_factor": bad})


def test_plan_target_multiplies_the_original_attn_factor():
    orig = inspect_gguf(str(__import__("conftest").FIXTURES / NAME)).original.with_(attn_factor=1.5)
    plan = make_plan(orig, 1024, "factors", options={"attn_factor": 1.2})
    assert plan.target.attn_factor == pytest.approx(1.8) and plan.option("attn_factor") == 1.2


def test_measuring_reuses_the_file_only_when_its_attn_factor_is_the_plans(copy_fixture, tmp_path, monkeypatch):
    """quality.factor_model: a file carrying the plan's factors but another attn_factor is scored on
    a patched copy (its own key would otherwise apply); with the same attn_factor, the file itself."""
    import tempfile

    from ropepatch.quality.factor_model import scoring_model
    from ropepatch.runtime.session import Model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = copy_fixture(NAME, "carry.gguf")
    orig = inspect_gguf(path).original
    pts = (1.0, 2.0)
    patch_gguf(path, 1024, "factors", options={"points": pts, "attn_factor": 1.2})
    with Model(path, n_threads=1) as m:
        with scoring_model(m, orig, 1024, "factors", options={"points": pts, "attn_factor": 1.2}) as used:
            assert used is m
        with scoring_model(m, orig, 1024, "factors", options={"points": pts}) as used:
            assert used is not m and inspect_gguf(used.path).current.attn_factor == 1.0
