"""The suites' tuning beyond the learning rate (issue 30): grids of learning rate x knob (rho
for SAM and the SASSHAs, gamma for Sophia-H), chosen on validation, every grid point's score
recorded; and the language-model suite's budget rule, the full profile training the points
that the quick profile's grid chose."""
import math

import pytest
import torch

from bench.harness import protocol
from bench.harness.config import QualityProfile, lm_profile
from bench.harness.protocol import Point
from bench.lm_suite import parse_knobs
from bench.methods import (LM_METHODS, PAPER_SASSHA_LRS, QUALITY_METHODS, RHOS,
                           SOPHIA_GAMMAS, SOPHIA_LRS)
from bench.output import lm_report
from bench.suites import language_model, quality
from bench.workloads.corpus import load
from test_bench_lm import _fake_run, _fake_stdlib

CPU = torch.device("cpu")


def _by_name(methods, *names):
    return [m for m in methods if m.name in names]


def test_grid_points_cross_every_learning_rate_with_every_knob_value():
    (sam,) = _by_name(LM_METHODS, "sam-adamw")
    points = protocol.points(sam, full=True)
    assert len(points) == len(sam.lrs) * len(RHOS) == 16
    assert {p.lr for p in points} == set(sam.lrs)
    assert {p.settings()["rho"] for p in points} == set(RHOS)
    # smoke: the middle of each grid only
    assert protocol.points(sam, full=False) == [Point(1e-2, (("rho", 2.5e-2),))]
    (adamw,) = _by_name(LM_METHODS, "adamw")
    assert protocol.points(adamw, full=False) == [Point(1e-2)]
    assert Point(0.015, (("rho", 0.025),)).label() == "0.015 rho 0.025"
    assert Point(0.001).label() == "0.001"   # the key a learning-rate grid always had


def test_ties_go_to_the_smaller_learning_rate_then_the_milder_knob():
    def run(val, finite=True):
        return _fake_run(val, val, finite=finite)
    results = {Point(0.1, (("rho", 0.25),)): run(1.0), Point(0.1, (("rho", 0.025),)): run(1.0),
               Point(0.3, (("rho", 0.0025),)): run(1.0),
               Point(0.03, (("rho", 0.25),)): run(0.1, finite=False)}
    assert protocol.choose(results, lambda r: -r.val_loss) == Point(0.1, (("rho", 0.025),))


def test_the_catalog_holds_the_papers_language_model_grids():
    lm = {m.name: m for m in LM_METHODS}
    for name in ("sassha", "sassha-fd", "msassha", "msassha-fd"):
        assert lm[name].lrs == PAPER_SASSHA_LRS and lm[name].knobs == (("rho", RHOS),)
    assert lm["sam-adamw"].knobs == (("rho", RHOS),)
    assert lm["sophia-h"].lrs == SOPHIA_LRS and lm["sophia-h"].knobs == (("gamma",
                                                                            SOPHIA_GAMMAS),)
    # the double backward needs the GPT with attention written out by hand
    assert lm["sophia-h"].attention == lm["adahessian"].attention == "manual"
    assert {"sophia-h", "adahessian"} <= {m.name for m in QUALITY_METHODS}


def test_each_method_builds_with_its_knob_and_without_it():
    x = torch.nn.Parameter(torch.ones(3))
    for method in LM_METHODS + QUALITY_METHODS:
        for point in protocol.points(method, full=False):
            opt = method.build([x], point.lr, **point.settings())
            for name, value in point.knobs:
                assert opt.param_groups[0][name] == value
        method.build([x], method.lrs[0])   # the catalog's defaults


def test_quality_tunes_rho_per_noise_level_and_records_every_point(monkeypatch):
    # rho 0.025 with lr 0.1 is best on the held-out slice; lr 1 with rho 0.25 best on test
    def fake_train(method, point, split, epochs, seed, width=16):
        rho = point.settings()["rho"]
        val = 0.9 if (point.lr, rho) == (0.1, 0.025) else 0.5
        test = 0.99 if (point.lr, rho) == (1.0, 0.25) else 0.6
        return quality.RunResult(val, test + seed / 100, [test] * epochs, [0.5] * epochs,
                                 True)
    monkeypatch.setattr(quality, "train", fake_train)
    profile = QualityProfile("t", (0.0, 0.4), epochs=2, seeds=2, grid=True, limit=300)
    rows, _ = quality.run(profile, _by_name(QUALITY_METHODS, "sassha"))
    assert quality.plan_size(profile, _by_name(QUALITY_METHODS, "sassha")) == 2 * (16 + 1)
    for row in rows:
        assert row["lr"] == 0.1 and row["knobs"] == {"rho": 0.025}
        assert row["chosen"] == "0.1 rho 0.025" and len(row["grid_val_acc"]) == 16
        assert row["grid_val_acc"]["0.1 rho 0.025"] == 0.9
        assert row["test_accs"] == pytest.approx([0.6, 0.61])


def _tuning_profile(monkeypatch):
    """The smoke sizes under another name, with the whole grid, as the profile that tunes."""
    tuning = lm_profile("smoke", CPU)._replace(name="tuning", grid=True, iterations=7)
    monkeypatch.setattr(language_model, "lm_profile",
                        lambda name, device: tuning if name == "tuning" else None)
    return tuning


def test_full_profile_trains_the_points_the_tuning_profiles_grid_chose(monkeypatch, tmp_path):
    tuning = _tuning_profile(monkeypatch)
    calls = []
    speed = {"sam-adamw": 1.0, "sassha": 2.0}

    def fake_train(method, point, data, profile, seed, device, iterations=None):
        calls.append((profile.name, method.name, point, seed, iterations))
        rho = point.settings()["rho"]
        # validation prefers rho 0.0025 at each method's second learning rate; test
        # prefers rho 0.25
        good = point.lr == method.lrs[1] and rho == 2.5e-3
        val = 1.0 if good else 2.0
        test = 1.5 if rho == 0.25 else 3.0
        diverged = rho == 0.25 and point.lr == method.lrs[-1]
        return _fake_run(val + seed, test + seed, speed[method.name], finite=not diverged,
                         iterations=iterations or profile.iterations,
                         skipped=7 if diverged else 0)
    monkeypatch.setattr(language_model, "train", fake_train)
    methods = _by_name(LM_METHODS, "sam-adamw", "sassha")
    profile = lm_profile("smoke", CPU)._replace(name="big", seeds=3, tune_on="tuning")
    rows, _, _ = language_model.run(profile, CPU, methods,
                                    corpus=load(_fake_stdlib(tmp_path)))
    grid_calls = [c for c in calls if c[0] == "tuning"]
    assert len(grid_calls) == 16 + 20 and {c[3] for c in grid_calls} == {0}
    assert len(calls) == language_model.plan_size(profile, methods) == 36 + 2 * 3 + 1
    for row, method in zip(rows, methods):
        chosen = Point(method.lrs[1], (("rho", 2.5e-3),))
        assert row["lr"] == method.lrs[1] and row["knobs"] == {"rho": 2.5e-3}
        assert row["tuned_on"] == "tuning" and row["profile"] == "big"
        # every seed trained at the chosen point at the big profile's size, none more
        big = [c for c in calls if c[0] == "big" and c[1] == method.name and c[4] is None]
        assert [(c[2], c[3]) for c in big] == [(chosen, 0), (chosen, 1), (chosen, 2)]
        assert row["test_bpbs"] == pytest.approx([(3.0 + s) / math.log(2) for s in range(3)])
        grid = row["grid_val_bpb"]
        assert len(grid) == len(protocol.points(method, True))
        assert grid[chosen.label()] == pytest.approx(1.0 / math.log(2))
        assert grid[f"{method.lrs[-1]:g} rho 0.25"] is None   # diverged in the grid
    # the table says which grid point diverged, and on which profile
    runs_column = lm_report.table_markdown(rows).splitlines()[2].split(" | ")[-1]
    assert runs_column == "tuning grid lr 0.03 rho 0.25 diverged, 7 skipped steps |"
    assert lm_report.table_markdown(rows).splitlines()[2].split(" | ")[4] == "0.003 rho 0.0025"


def test_lm_suite_knobs_are_name_value_pairs():
    assert parse_knobs("rho=0.025,gamma=1e-2") == (("gamma", 0.01), ("rho", 0.025))
    assert parse_knobs("") == ()
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        parse_knobs("rho")


def test_a_two_stage_run_trains_for_real_at_smoke_size(tmp_path):
    # the smoke profile's grid (its middle point) tunes; the chosen point trains with more
    # iterations, on the corpus reloaded under the tuning profile's cap
    profile = lm_profile("smoke", CPU)._replace(name="longer", iterations=16, tune_on="smoke")
    methods = _by_name(LM_METHODS, "sam-adamw", "sophia-h")
    rows, curves, _ = language_model.run(profile, CPU, methods,
                                         corpus=load(_fake_stdlib(tmp_path)))
    for row, method in zip(rows, methods):
        (point,) = protocol.points(method, full=False)
        assert row["tuned_on"] == "smoke" and row["chosen"] == point.label()
        assert list(row["grid_val_bpb"]) == [point.label()]
        assert row["iterations"] == 16 and row["diverged"] == 0
        assert all(0 < b < 9 for b in row["test_bpbs"])
    assert [c["iterations"][-1] for c in curves] == [16, 16]
