"""opt.diagnostics(): computed from the state on demand, exact for the last step."""
import math
import pathlib
import sys

import pytest
import torch

import sassha_fast

from tiny import PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

# The dead-unit network of test_curvature_guard.py, in tests/hessian/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "hessian"))
from test_curvature_guard import LOSS, batches, dead_unit_model  # noqa: E402

OPTIMIZERS = [sassha_fast.SASSHA, sassha_fast.MSASSHA]


def test_before_any_step_only_the_settings_are_reported():
    model = make_model()
    report = sassha_fast.SASSHA(model.parameters(), rho=0.1).diagnostics()
    assert report["skipped_steps"] == 0 and report["hessian_due"]
    assert report["groups"] == [{"lr": 0.15, "rho": 0.1, "eps": 1e-4, "hessian_power": 0.5}]


@pytest.mark.parametrize("optimizer_class", OPTIMIZERS)
@pytest.mark.parametrize("steps", [1, 3])  # the last one a Hessian step, then not
def test_update_ratio_is_the_last_steps_update(optimizer_class, steps):
    model = make_model()
    x, y = whole_batch()
    # No perturbation and no decay: the change of the parameters is the update itself.
    opt = optimizer_class(model.parameters(), **dict(PAPER_SETTINGS[optimizer_class], rho=0.0),
                          weight_decay=0.0, lazy_hessian=2)
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(lambda: LOSS(model(x), y))
    ratios = [float((p.detach() - b).norm() / p.detach().norm())
              for p, b in zip(model.parameters(), before)]
    group = opt.diagnostics()["groups"][0]
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    assert group["max_update_ratio"] == pytest.approx(ratios[worst], rel=1e-4)
    assert group["max_update_ratio_param"] == {"index": worst,
                                               "shape": tuple(before[worst].shape)}
    assert group["step"] == steps
    assert group["bias_correction1"] == pytest.approx(1 - 0.9 ** steps)
    assert group["bias_correction2"] == pytest.approx((1 - 0.999 ** (1 if steps < 3 else 3))
                                                      ** 0.5)


def test_zero_and_below_eps_fractions_and_the_scheduler_power():
    class Power:
        def step(self):
            return 0.75

    model = dead_unit_model()
    opt = sassha_fast.SASSHA(model.parameters(), hessian_power_scheduler=Power(), rho=0.05)
    (x, y), _ = batches()
    opt.step(lambda: LOSS(model(x), y))
    group = opt.diagnostics()["groups"][0]
    # Unit 0 is dead on the batch: its 2 weights, its bias, its 2 outgoing weights.
    assert group["hessian_zero_fraction"] == pytest.approx(5 / 17)
    preconditioner = [opt.state[p]["exp_hessian_diag"] ** 0.75 / opt.state[p]["bias_correction2"]
                      for p in model.parameters()]
    below = sum(int((d < 1e-4).sum()) for d in preconditioner)
    assert group["hessian_below_eps_fraction"] == pytest.approx(below / 17)
    assert group["hessian_below_eps_fraction"] >= 5 / 17
    assert group["hessian_power"] == 0.75
    assert group["bias_correction2"] == pytest.approx((1 - 0.999) ** 0.75)


def test_skipped_steps_and_a_nan_ratio_are_reported():
    model = make_model()
    x, y = whole_batch()
    opt = sassha_fast.SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: LOSS(model(x), y))
    opt.step(lambda: LOSS(model(x), y) * float("nan"))
    assert opt.diagnostics()["skipped_steps"] == 1
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    assert math.isnan(opt.diagnostics()["groups"][0]["max_update_ratio"])


@pytest.mark.parametrize("optimizer_class", OPTIMIZERS)
def test_diagnostics_change_nothing(optimizer_class):
    model = make_model()
    x, y = whole_batch()
    opt = optimizer_class(model.parameters(), curvature_floor=0.01,
                          **PAPER_SETTINGS[optimizer_class])
    for _ in range(2):
        opt.step(lambda: LOSS(model(x), y))
    before = snapshot(model, opt)
    report = opt.diagnostics()
    assert report["curvature_floor"] == 0.01 and not report["hessian_due"]
    assert_identical(snapshot(model, opt), before)
