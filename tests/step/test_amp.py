"""Mixed precision: a GradScaler through both passes and the Hessian estimate, skipped
iterations that leave everything as it was and lower the scale, low-precision parameters
and autocast."""
import pytest
import torch

import sassha_fast.hessian.estimators as estimators
from sassha_fast import MSASSHA, SASSHA
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

OPTIMIZERS = [SASSHA, MSASSHA]


def scaler(init_scale=2.0 ** 12):
    return torch.amp.GradScaler("cpu", init_scale=init_scale)


def run(optimizer, steps, use_scaler, manual=False, **kwargs):
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, **kwargs, **PAPER_SETTINGS[optimizer])
    grad_scaler = scaler() if use_scaler else None
    for _ in range(steps):
        if manual:
            authors_loop_with_scaler(model, opt, x, y, grad_scaler)
        else:
            opt.step(lambda: LOSS(model(x), y), scaler=grad_scaler)
        if grad_scaler is not None:
            grad_scaler.update()
    return snapshot(model, opt)


def authors_loop_with_scaler(model, opt, x, y, grad_scaler):
    grad_scaler.scale(LOSS(model(x), y)).backward()
    opt.perturb_weights(zero_grad=True, scaler=grad_scaler)
    grad_scaler.scale(LOSS(model(x), y)).backward(create_graph=opt.hessian_due)
    opt.unperturb()
    opt.step(scaler=grad_scaler)
    opt.zero_grad()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_power_of_two_scale_changes_nothing(optimizer):
    """Scaling by 2^k is exact in fp32, so a run whose gradients and Hessian estimates are
    all unscaled matches the unscaled run bit for bit (a Hessian left scaled would not)."""
    assert_identical(run(optimizer, 4, use_scaler=True), run(optimizer, 4, use_scaler=False))


def test_the_authors_loop_with_a_scaler_matches_too():
    assert_identical(run(SASSHA, 4, use_scaler=True, manual=True),
                     run(SASSHA, 4, use_scaler=False))


class Poisoned:
    """A closure whose n-th call (0-based, counted over the whole run) returns inf * loss."""

    def __init__(self, model, x, y, poisoned_call):
        self.model, self.x, self.y = model, x, y
        self.calls, self.poisoned_call = 0, poisoned_call

    def __call__(self):
        loss = LOSS(self.model(self.x), self.y)
        self.calls += 1
        return loss * float("inf") if self.calls - 1 == self.poisoned_call else loss


def skipped_iteration(optimizer, poisoned_call=None, poison_hessian=False, monkeypatch=None):
    """Two good iterations, then one poisoned one; returns (before, after, scaler scales)."""
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])
    grad_scaler = scaler()
    calls_per_step = 2 if optimizer is SASSHA else 1
    closure = Poisoned(model, x, y, None)
    for _ in range(2):
        opt.step(closure, scaler=grad_scaler)
        grad_scaler.update()
    before = snapshot(model, opt)
    scale_before = grad_scaler.get_scale()
    if poison_hessian:
        real = estimators.hutchinson
        monkeypatch.setattr(estimators, "hutchinson", lambda *args, **kwargs: [
            h * float("inf") for h in real(*args, **kwargs)])
    else:
        closure.poisoned_call = 2 * calls_per_step + poisoned_call
    assert opt.hessian_due  # the third step is a Hessian step
    opt.step(closure, scaler=grad_scaler)
    grad_scaler.update()
    return before, snapshot(model, opt), opt, scale_before, grad_scaler.get_scale()


@pytest.mark.parametrize("optimizer,poisoned_call", [(SASSHA, 0), (MSASSHA, 0)])
def test_an_overflow_before_any_move_leaves_everything_bit_identical(optimizer, poisoned_call):
    before, after, opt, scale_before, scale_after = skipped_iteration(optimizer, poisoned_call)
    after["optimizer"]["sassha_fast"]["skipped_steps"] -= 1
    assert_identical(after, before)
    assert opt.skipped_steps == 1
    assert scale_after == scale_before * 0.5


@pytest.mark.parametrize("optimizer,poisoned_call,poison_hessian",
                         [(SASSHA, 1, False), (SASSHA, None, True), (MSASSHA, None, True)])
def test_an_overflow_after_the_perturbation_leaves_the_state_bit_identical(
        optimizer, poisoned_call, poison_hessian, monkeypatch):
    """The second pass or the Hessian estimate overflows. The state (moments, counters,
    generator) is bit-identical; SASSHA's parameters leave the perturbed point by
    subtracting e, so they come back up to that subtraction's rounding."""
    before, after, opt, scale_before, scale_after = skipped_iteration(
        optimizer, poisoned_call, poison_hessian, monkeypatch)
    after["optimizer"]["sassha_fast"]["skipped_steps"] -= 1
    assert_identical(after["optimizer"], before["optimizer"])
    for a, b in zip(after["params"], before["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    if optimizer is MSASSHA:  # M-SASSHA never moved
        assert_identical(after["params"], before["params"])
    assert opt.skipped_steps == 1
    assert scale_after == scale_before * 0.5


def test_a_good_iteration_counts_towards_growing_the_scale():
    model = make_model()
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), rho=0.05)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1)
    opt.step(lambda: LOSS(model(x), y), scaler=grad_scaler)
    grad_scaler.update()
    assert grad_scaler.get_scale() == 16.0


def test_scaler_step_is_refused_with_the_call_to_use():
    model = make_model()
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), rho=0.05)
    grad_scaler = scaler()
    grad_scaler.scale(LOSS(model(x), y)).backward()
    opt.perturb_weights(zero_grad=True, scaler=grad_scaler)
    grad_scaler.scale(LOSS(model(x), y)).backward(create_graph=True)
    opt.unperturb()
    with pytest.raises(RuntimeError, match=r"optimizer.step\(scaler=scaler\)"):
        grad_scaler.step(opt)
    assert not opt.state  # nothing was stepped


def relative_update_error(model, reference_params, dtype) -> float:
    """||update - fp32 update|| / ||fp32 update|| over all parameters."""
    initial = [p.float() for p in make_model(dtype).parameters()]
    start = [p.float() for p in make_model().parameters()]
    error = sum(((p.detach().float() - p0) - (want - q0)).square().sum()
                for p, p0, want, q0 in zip(model.parameters(), initial, reference_params, start))
    size = sum((want - q0).square().sum() for want, q0 in zip(reference_params, start))
    return (error / size).sqrt().item()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_with_a_scaler(optimizer, dtype):
    """bf16/fp16 parameters keep fp32 state and follow the fp32 run to their precision."""
    reference = run(optimizer, 3, use_scaler=False)
    model = make_model(dtype)
    x, y = whole_batch(dtype)
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])
    grad_scaler = scaler()
    for _ in range(3):
        opt.step(lambda: LOSS(model(x).float(), y), scaler=grad_scaler)
        grad_scaler.update()
    assert opt.skipped_steps == 0
    for p, want in zip(model.parameters(), reference["params"]):
        assert p.dtype == dtype
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert opt.state[p]["exp_hessian_diag"].dtype == torch.float32
    assert relative_update_error(model, reference["params"], dtype) < 0.1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_autocast_bf16_forward_with_fp32_parameters(optimizer):
    reference = run(optimizer, 3, use_scaler=False)
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return LOSS(model(x), y)

    for _ in range(3):
        opt.step(closure)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert relative_update_error(model, reference["params"], torch.float32) < 0.1


def test_a_scaler_that_scaled_nothing_is_reported():
    model = make_model()
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), rho=0.05)
    LOSS(model(x), y).backward()
    with pytest.raises(RuntimeError, match="has not scaled a loss yet"):
        opt.perturb_weights(scaler=scaler())


class _OpNames(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("use_scaler", [True, False], ids=["scaler", "no-scaler"])
def test_with_a_scaler_the_unscaling_pass_is_the_check(optimizer, use_scaler):
    """The update's inf/NaN check reads the gradients only in the pass that unscales them
    (GradScaler's kernel sets the flag): no norm of them. Without a scaler (the control)
    the check is their norm."""
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=5, backend="cpu",
                    **PAPER_SETTINGS[optimizer])
    grad_scaler = scaler() if use_scaler else None
    opt.step(lambda: LOSS(model(x), y), scaler=grad_scaler)  # the Hessian step
    if use_scaler:
        grad_scaler.update()
    opt.zero_grad()
    (grad_scaler.scale(LOSS(model(x), y)) if use_scaler else LOSS(model(x), y)).backward()
    if optimizer is SASSHA:
        opt.perturb_weights(zero_grad=True, scaler=grad_scaler)
        (grad_scaler.scale(LOSS(model(x), y)) if use_scaler else LOSS(model(x), y)).backward()
    with _OpNames() as seen:
        opt.step(scaler=grad_scaler)
    norms = seen.names.count("sassha_fast::global_norm")
    unscaling = seen.names.count("aten::_amp_foreach_non_finite_check_and_unscale_")
    assert (norms, unscaling) == ((0, 1) if use_scaler else (1, 0))
