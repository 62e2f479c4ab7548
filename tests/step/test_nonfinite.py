"""inf/NaN without a scaler: the iteration is skipped and counted (default), or raises
naming the parameter, or (``nonfinite="ignore"``) is not checked at all."""
import io

import pytest
import torch

import sassha_fast.hessian.estimators as estimators
from sassha_fast import MSASSHA, SASSHA
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

NAN = float("nan")


def setup(optimizer, **kwargs):
    model = make_model()
    x, y = whole_batch()
    return model, x, y, optimizer(model.parameters(), lazy_hessian=2, **kwargs,
                                  **PAPER_SETTINGS[optimizer])


def poison_gradient(model, value=NAN):
    """A hook that writes ``value`` into one entry of the first layer's bias gradient."""
    def hook(grad):
        grad = grad.clone()
        grad[1] = value
        return grad
    return model[0].bias.register_hook(hook)


def sassha_iteration(model, opt, x, y, poison_pass=None):
    """The authors' loop; ``poison_pass`` (1 or 2) puts a NaN into that pass's gradient."""
    for pass_ in (1, 2):
        handle = poison_gradient(model) if pass_ == poison_pass else None
        try:
            loss = LOSS(model(x), y)
            if pass_ == 1:
                loss.backward()
                opt.perturb_weights(zero_grad=True)
            else:
                loss.backward(create_graph=opt.hessian_due)
        finally:
            if handle is not None:
                handle.remove()
    opt.unperturb()
    opt.step()
    opt.zero_grad()


def test_a_nan_in_the_first_pass_skips_the_iteration_bit_identically():
    model, x, y, opt = setup(SASSHA)
    sassha_iteration(model, opt, x, y)
    before = snapshot(model, opt)
    sassha_iteration(model, opt, x, y, poison_pass=1)
    assert opt.skipped_steps == 1
    after = snapshot(model, opt)
    assert after["optimizer"]["sassha_fast"]["skipped_steps"] == 1
    after["optimizer"]["sassha_fast"]["skipped_steps"] = 0
    assert_identical(after, before)


def test_the_run_goes_on_as_if_the_skipped_iteration_never_happened():
    model, x, y, opt = setup(SASSHA)
    clean_model, _, _, clean_opt = setup(SASSHA)
    for i in range(4):
        sassha_iteration(model, opt, x, y, poison_pass=1 if i == 1 else None)
        if i != 1:
            sassha_iteration(clean_model, clean_opt, x, y)
    assert_identical(snapshot(model, opt)["params"], snapshot(clean_model, clean_opt)["params"])


@pytest.mark.parametrize("hessian_step", [True, False])
def test_a_nan_in_the_second_pass_skips_the_iteration(hessian_step):
    model, x, y, opt = setup(SASSHA)
    sassha_iteration(model, opt, x, y)
    if hessian_step:
        sassha_iteration(model, opt, x, y)
    assert opt.hessian_due == hessian_step
    before = snapshot(model, opt)
    sassha_iteration(model, opt, x, y, poison_pass=2)
    after = snapshot(model, opt)
    after["optimizer"]["sassha_fast"]["skipped_steps"] -= 1
    assert_identical(after["optimizer"], before["optimizer"])
    for a, b in zip(after["params"], before["params"]):  # w + e - e: rounding of e only
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert not opt._perturbation


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_an_inf_hessian_estimate_skips_the_iteration(optimizer, monkeypatch):
    model, x, y, opt = setup(optimizer)
    before = snapshot(model, opt)
    real = estimators.hutchinson
    monkeypatch.setattr(estimators, "hutchinson", lambda *args, **kwargs: [
        torch.full_like(h, float("inf")) for h in real(*args, **kwargs)])
    opt.step(lambda: LOSS(model(x), y))
    assert opt.skipped_steps == 1
    after = snapshot(model, opt)
    assert not opt.state  # no state was created by the skipped first step
    if optimizer is MSASSHA:  # SASSHA's parameters come back from w + e
        assert_identical(after["params"], before["params"])
    monkeypatch.undo()
    opt.step(lambda: LOSS(model(x), y))  # the next step estimates the Hessian again
    assert all(s["hessian_step"] == 1 and s["step"] == 1 for s in opt.state.values())


def test_msassha_skips_a_nan_gradient_bit_identically():
    model, x, y, opt = setup(MSASSHA)
    opt.step(lambda: LOSS(model(x), y))
    before = snapshot(model, opt)
    handle = poison_gradient(model, float("inf"))
    opt.step(lambda: LOSS(model(x), y))
    handle.remove()
    after = snapshot(model, opt)
    after["optimizer"]["sassha_fast"]["skipped_steps"] -= 1
    assert_identical(after, before)


def test_the_skip_counter_survives_a_checkpoint():
    model, x, y, opt = setup(MSASSHA)
    handle = poison_gradient(model)
    opt.step(lambda: LOSS(model(x), y))
    handle.remove()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = MSASSHA(model.parameters(), lazy_hessian=2)
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.skipped_steps == 1


@pytest.mark.parametrize("poison_pass,what", [(1, "first pass's gradient"),
                                              (2, "gradient")])
def test_raise_names_the_parameter_and_leaves_the_state(poison_pass, what):
    model, x, y, opt = setup(SASSHA, nonfinite="raise")
    sassha_iteration(model, opt, x, y)
    before = snapshot(model, opt)
    with pytest.raises(FloatingPointError,
                       match=f"the {what} of parameter 1 of group 0 \\(shape \\(8,\\)\\)"):
        sassha_iteration(model, opt, x, y, poison_pass=poison_pass)
    opt.unperturb()
    opt.zero_grad()
    assert_identical(snapshot(model, opt)["optimizer"], before["optimizer"])
    assert opt.skipped_steps == 0


def test_raise_names_a_nonfinite_hessian_estimate(monkeypatch):
    model, x, y, opt = setup(MSASSHA, nonfinite="raise")
    real = estimators.hutchinson
    monkeypatch.setattr(estimators, "hutchinson", lambda *args, **kwargs: [
        torch.full_like(h, NAN) for h in real(*args, **kwargs)])
    with pytest.raises(FloatingPointError, match="Hessian estimate of parameter 0 of group 0"):
        opt.step(lambda: LOSS(model(x), y))


def test_ignore_checks_nothing_and_lets_the_nan_in():
    """The authors' behaviour, without the check's norm and host synchronisation."""
    model, x, y, opt = setup(MSASSHA, nonfinite="ignore")
    handle = poison_gradient(model)
    opt.step(lambda: LOSS(model(x), y))
    handle.remove()
    assert opt.skipped_steps == 0
    assert torch.isnan(opt.state[model[0].bias]["exp_avg"]).any()


def test_an_invalid_policy_is_refused():
    with pytest.raises(ValueError, match="nonfinite"):
        SASSHA(make_model().parameters(), nonfinite="warn")


def test_a_skipped_step_does_not_step_the_hessian_power_scheduler():
    class Counting:
        calls = 0

        def step(self):
            self.calls += 1
            return 0.5

    scheduler = Counting()
    model, x, y, opt = setup(SASSHA, hessian_power_scheduler=scheduler)
    handle = poison_gradient(model)
    opt.step(lambda: LOSS(model(x), y))
    handle.remove()
    assert scheduler.calls == 0 and opt.skipped_steps == 1
    opt.step(lambda: LOSS(model(x), y))
    assert scheduler.calls == 1
