"""``tune --method factors``: the search logic on a synthetic objective (no llama.cpp), then the
real thing on the tiny llama fixture (training ctx 128) with a tiny budget: monotone profiles,
feasibility, the best trial wins, ``--apply`` writes it (provenance records the points) and
validate / revert work on the result; the qwen2 fixture is refused in one line."""

from __future__ import annotations

import itertools
import math

import pytest

from ropepatch.quality import tune_factors as TF
from ropepatch.rope.params import RopeParams

OPT = (1.0, 1.0, 1.3, 1.8, 2.6, 3.5, 4.2, 4.2)  # a monotone optimum
LIMIT = 1.2


def synthetic(calls: list, attn_opt: float = 1.0):
    """ppl_ext: a bowl around (OPT, attn_opt) in log space; ppl_in grows with the high-frequency
    divisors (the first half of the points) and is over LIMIT once their log-sum passes 0.6."""

    def measure(points, stop_in, attn=1.0):
        calls.append((points, attn))
        assert all(b >= a >= 1.0 for a, b in zip(points, points[1:]))  # monotone, >= 1
        assert 0.5 <= attn <= 2.0
        pin = 1.0 + 0.3 * sum(math.log(p) for p in points[:4])
        if stop_in(pin):
            return pin, None
        ext = 5.0 * math.exp(sum((math.log(p) - math.log(o)) ** 2 for p, o in zip(points, OPT))
                             + 4 * math.log(attn / attn_opt) ** 2)
        return pin, ext

    return measure


def test_round_points_and_move_keep_profiles_monotone():
    assert TF.round_points([0.5, 2.0, 1.5, 3.123456]) == (1.0, 2.0, 2.0, 3.123)
    p = (1.0, 1.5, 2.0, 4.0)
    assert TF.move(p, 1, 2.0) == (1.0, 3.0, 3.0, 4.0)  # raising pulls the later points up
    assert TF.move(p, 2, 1 / 4) == (1.0, 1.0, 1.0, 4.0)  # lowering pulls the earlier ones down
    assert TF.move(p, 0, 1 / 2) == p  # never below 1


def test_start_profiles_are_monotone_and_start_at_ntk_parts():
    orig = RopeParams(arch="llama", n_ctx_train=8192, rope_dim=64, head_dim=64, freq_base=100000.0)
    starts = TF.start_profiles(orig, 4 * 8192)
    assert [n for n, _, _ in starts] == ["yarn as factors", "ntk-parts ramp", "ntk as factors", "linear"]
    for _, pts, _ in starts:
        assert len(pts) == 8 and pts[0] >= 1.0 and pts[-1] == pytest.approx(4.0, rel=1e-3)
        assert all(b >= a for a, b in zip(pts, pts[1:]))
    assert starts[0][1][0] == 1.0  # the ramp keeps the highest frequencies
    # yarn as factors: the ramp with YaRN's temperature 1 + 0.1 ln s (s = 4); the others have none
    assert starts[0][1] == starts[1][1] and starts[0][2] == round(1 + 0.1 * math.log(4), 3) == 1.139
    assert [a for _, _, a in starts[1:]] == [1.0, 1.0, 1.0]
    assert set(starts[3][1]) == {4.0}


def test_search_finds_the_attn_factor_optimum_and_records_it():
    calls: list = []
    s = TF.FactorSearch(synthetic(calls, attn_opt=1.1), 128, 1e9)
    s.run([("flat", [2.0] * 8, 1.0)])
    b = s.best()
    assert abs(math.log(TF.attn_of(b) / 1.1)) < 0.02, TF.attn_of(b)
    assert dict(b.options)["attn_factor"] == TF.attn_of(b) and "@" in b.label
    assert any(t.note.startswith("attn_factor x") for t in s.tried.values())
    assert len(calls) == len(set(calls)) == len(s.tried)
    assert TF.round_attn(3.0) == 2.0 and TF.round_attn(0.1) == 0.5


def test_search_finds_the_known_optimum_within_the_constraint():
    calls: list = []
    s = TF.FactorSearch(synthetic(calls), 128, LIMIT)
    s.run([("flat", [2.0] * 8), ("ramp", [1, 1, 1, 2, 2, 4, 4, 4])])
    b = s.best()
    assert b is not None and b.feasible and not s.out_of_budget
    assert all(t.ppl_ext is None for t in s.tried.values() if not t.feasible)  # stopped at L
    pts = TF.points_of(b)
    # the bowl's optimum is infeasible (ppl_in 1 + 0.3 ln(1 * 1 * 1.3 * 1.8) = 1.255 > 1.2): the
    # constraint binds on the first half; the free second half must still be found
    assert b.ppl_in <= LIMIT
    assert all(abs(math.log(p / o)) < 0.08 for p, o in zip(pts[4:], OPT[4:]))  # unconstrained part found
    assert b.ppl_ext == min(t.ppl_ext for t in s.tried.values() if t.feasible)
    assert len(calls) == len(set(calls)) == len(s.tried)  # no profile scored twice
    assert {t.stage for t in s.tried.values()} >= {"start", "coord"}


def test_search_without_constraint_reaches_the_optimum():
    s = TF.FactorSearch(synthetic([]), 128, 1e9)
    s.run([("flat", [2.0] * 8)])
    pts = TF.points_of(s.best())
    assert all(abs(math.log(p / o)) < 0.05 for p, o in zip(pts, OPT)), pts
    assert s.best().ppl_ext < 5.0 * 1.01


def test_search_walks_toward_feasibility_when_the_start_is_infeasible():
    s = TF.FactorSearch(synthetic([]), 128, LIMIT)
    s.run([("too high", [3.0] * 8)])
    assert s.best() is not None and s.best().ppl_in <= LIMIT


def test_shrink_profiles_are_yarn_at_smaller_scales_largest_first():
    orig = RopeParams(arch="llama", n_ctx_train=8192, rope_dim=64, head_dim=64, freq_base=100000.0)
    shrink = TF.shrink_profiles(orig, 4 * 8192)
    scales = [4 ** (k / 8) for k in range(7, 0, -1)]
    assert [n for n, _, _ in shrink] == [f"yarn as factors at s = {x:.3g}" for x in scales]
    for (_, pts, attn), x in zip(shrink, scales):
        assert (pts, attn) == TF.yarn_profile(orig, x)
        assert pts[0] == 1.0 and pts[-1] == pytest.approx(x, rel=1e-3) and attn == round(1 + 0.1 * math.log(x), 3)
        assert all(b >= a for a, b in zip(pts, pts[1:]))
    assert (TF.start_profiles(orig, 4 * 8192)[0][1:]) == TF.yarn_profile(orig, 4.0)
    assert TF.shrink_profiles(orig, 8192) == []  # s = 1: nothing smaller to try


def test_shrink_runs_only_while_nothing_is_feasible_and_stops_at_the_first_feasible():
    # synthetic: ppl_in = 1 + 0.3 * 4 ln x for a flat profile x: 3.0 and 1.4 are over LIMIT, 1.1 is not
    shrink = [(f"flat {x}", [x] * 8) for x in (3.0, 1.4, 1.1, 1.05)]
    s = TF.FactorSearch(synthetic([]), 128, LIMIT)
    s.run([("too high", [3.5] * 8)], shrink=shrink)
    stages = [(t.stage, t.note) for t in s.tried.values()]
    assert stages[:4] == [("start", "too high"), ("shrink", "flat 3.0"), ("shrink", "flat 1.4"), ("shrink", "flat 1.1")]
    assert [st for st, _ in stages[4:]] and all(st != "shrink" for st, _ in stages[4:])  # the search went on
    assert s.best() is not None and s.best().ppl_in <= LIMIT
    note = TF.tuning_note(s, [("too high", [3.5] * 8)], None)
    assert note.startswith("no starting profile (alpha = ctx/L) kept ppl_in within the tolerance; the search "
                           "went on from the largest yarn that did, flat 1.1; best profile "), note
    s2 = TF.FactorSearch(synthetic([]), 128, LIMIT, max_trials=3)
    s2.run([("feasible", [1.05] * 8)], shrink=shrink)
    assert all(t.stage != "shrink" for t in s2.tried.values())


def test_budget_stops_the_search_and_keeps_the_best_so_far():
    clock = itertools.count()  # one "second" per reading
    s = TF.FactorSearch(synthetic([]), 128, LIMIT, budget_s=5, clock=lambda: next(clock))
    s.run(TF.start_profiles(RopeParams(arch="llama", n_ctx_train=128, rope_dim=16, head_dim=16, freq_base=1e4), 512))
    assert s.out_of_budget and 1 <= len(s.tried) <= 6
    assert "budget" in TF.budget_note(s, 0.1)
    s2 = TF.FactorSearch(synthetic([]), 128, LIMIT, max_trials=3)
    s2.run([("flat", [2.0] * 8)])
    assert s2.out_of_budget and len(s2.tried) == 3


def test_first_start_always_runs_even_with_no_budget():
    s = TF.FactorSearch(synthetic([]), 128, LIMIT, budget_s=0.0)
    s.run([("flat", [1.0] * 8), ("ramp", [1, 2, 3, 4, 4, 4, 4, 4])])
    assert len(s.tried) == 1 and s.out_of_budget


# ---- the real search: tiny llama fixture, llama.cpp --------------------------------------------

CTX = 512


@pytest.fixture(scope="module")
def text() -> str:
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return f.read()[:4000]


def test_tune_factors_tiny_budget_then_apply_validate_revert(copy_fixture, private_tmp, text):
    from conftest import require, sha256

    require("llama_cpp")
    from ropepatch.check.validate import validate
    from ropepatch.patch.gguf import inspect_gguf, revert_gguf
    from ropepatch.quality.tune import format_tune, tune
    from ropepatch.rope.factors import profile_factors

    path = copy_fixture("tiny-llama-f32.gguf")
    sha0 = sha256(path)
    logs: list[str] = []
    r = tune(path, CTX, text, method="factors", tolerance=0.5, budget=0.02, apply=True, force=True,
             n_threads=2, n_batch=128, log=logs.append)
    assert r.method == "factors" and r.tried and "budget" in r.tuning
    for t in r.tried:
        pts = TF.points_of(t)
        assert len(pts) == 8 and pts[0] >= 1.0 and all(b >= a for a, b in zip(pts, pts[1:]))
        assert t.feasible == (t.ppl_in <= r.limit)
        assert (t.ppl_ext is None) == (not t.feasible)  # infeasible: stopped at L
    feasible = [t for t in r.tried if t.feasible]
    assert r.winner is not None and r.winner.ppl_ext == min(t.ppl_ext for t in feasible)
    assert r.tried[0].stage == "start" and "yarn as factors" in r.tried[0].note
    assert TF.attn_of(r.tried[0]) == TF.round_attn(1 + 0.1 * math.log(CTX / 128))
    assert "attn_factor 1.139" in r.tried[0].note
    assert any(line.startswith("start: factors[") for line in logs)  # progress per candidate
    win = TF.points_of(r.winner)
    assert ",".join(f"{p:g}" for p in win) in format_tune(r)
    d = r.to_json()
    assert d["winner"]["options"]["points"] == list(win) and d["applied"]["method"] == "factors"
    # --apply wrote the winner: the provenance records its points, the tensor holds its profile
    info = inspect_gguf(path)
    assert info.provenance.method == "factors"
    assert tuple(info.provenance.options["points"]) == win  # the winner's points, in the provenance
    assert tuple(info.current.freq_factors) == profile_factors(8, win)
    assert info.provenance.options["attn_factor"] == TF.attn_of(r.winner) == d["winner"]["options"]["attn_factor"]
    assert info.current.attn_factor == pytest.approx(TF.attn_of(r.winner))
    rep = validate(path, n_threads=2)
    assert rep.passed, rep
    revert_gguf(path)
    assert sha256(path) == sha0
    assert [n for n in private_tmp.iterdir()] == []  # no temporary copy left


def test_cli_tune_factors_json_and_qwen2_refusal(tmp_path, private_tmp, text):
    import json

    from conftest import FIXTURES, require, run_cli

    require("llama_cpp")
    tf = tmp_path / "t.txt"
    tf.write_text(text)
    p = run_cli("tune", str(FIXTURES / "tiny-llama-f32.gguf"), "--ctx", str(CTX), "--text", str(tf),
                "--method", "factors", "--budget", "0.01", "--tolerance", "0.5", "--threads", "2", "-q", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["method"] == "factors" and d["winner"]["options"]["points"] and d["window"]["label"] == "window"
    q = run_cli("tune", str(FIXTURES / "tiny-qwen2-f32.gguf"), "--ctx", str(CTX), "--text", str(tf),
                "--method", "factors", "--threads", "2", "-q")
    assert q.returncode == 2 and len(q.stderr.strip().splitlines()) == 1
    assert "tiny-qwen2-f32.gguf" in q.stderr and "qwen2" in q.stderr
    assert [n for n in private_tmp.iterdir()] == []


def test_tune_ntk_parts_searches_alpha_on_one_copy_repatched_in_place(private_tmp, text, monkeypatch):
    from conftest import FIXTURES, require, sha256

    require("llama_cpp")
    from ropepatch.quality import factor_model as FM
    from ropepatch.quality.tune import tune

    model = str(FIXTURES / "tiny-llama-f32.gguf")
    sha0 = sha256(model)
    calls, real = [], FM.patch_gguf

    def spy(path, ctx, method, alpha=None, **kw):
        r = real(path, ctx, method, alpha, **kw)
        calls.append((path, kw.get("out"), r.mode))
        return r

    monkeypatch.setattr(FM, "patch_gguf", spy)
    r = tune(model, CTX, text, method="ntk-parts", tolerance=0.5, grid=[4.0, 8.0], refine=0, n_threads=2,
             n_batch=128)
    assert r.method == "ntk-parts" and len(r.tried) >= 2 and r.winner is not None
    assert calls[0][0] == model and calls[0][2] == "rewrite"  # the copy, written once
    assert all(p == calls[0][1] and out is None and mode == "in-place" for p, out, mode in calls[1:])
    assert len(calls) == len(r.tried)
    assert sha256(model) == sha0 and list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("method", ["ntk-parts", "factors"])
def test_tune_refuses_a_factor_method_on_qwen2_before_scoring(method, text):
    from conftest import FIXTURES, require

    require("llama_cpp")
    from ropepatch.errors import UnsupportedModelError
    from ropepatch.quality.tune import tune

    seen: list = []
    with pytest.raises(UnsupportedModelError) as ei:
        tune(str(FIXTURES / "tiny-qwen2-f32.gguf"), CTX, text, method=method, n_threads=2, progress=seen.append)
    msg = str(ei.value)
    assert "\n" not in msg and "tiny-qwen2-f32.gguf" in msg and method in msg and "qwen2" in msg
    assert seen == []  # refused before the window (or anything) was scored
