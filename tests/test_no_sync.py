"""The device path (``capturable``; the default for CUDA parameters) never synchronises the
host within ``perturb_weights()`` and ``step()``: proven on CPU tensors with
``capturable=True`` by making every tensor-to-host read raise, on every backend that runs
here, for SASSHA and M-SASSHA, the closure and the method-level loop, Hessian and
non-Hessian steps, with and without a GradScaler; the numbers match the host path's."""
import contextlib
import copy
import inspect
import sys

import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA, available_backends
from sassha_fast.backends import op_table
from tiny import LOSS, PAPER_SETTINGS, whole_batch

# Every Tensor method that copies a value to the host (and so waits for a CUDA device).
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
OPTIMIZERS = [SASSHA, MSASSHA]
STEPS = 5  # lazy_hessian=2: Hessian steps 1, 3, 5; steps 2 and 4 without


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def guard():
    """Every ``SYNCING`` method raises, except when Triton's CPU interpreter (which stands in
    for a GPU here and reads its arguments on the host by design) calls it."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in SYNCING}

    def raising(name, original):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("triton"):
                return original(self, *args, **kwargs)
            raise HostSync(f"Tensor.{name} read a tensor on the host")
        return method

    for name in SYNCING:
        setattr(torch.Tensor, name, raising(name, getattr(torch.Tensor, name)))
    try:
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def make_model():
    torch.manual_seed(0)
    # BatchNorm: the closure's perturbed pass freezes its statistics.
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def takes_found_inf(backend: str) -> bool:
    return "found_inf" in inspect.signature(op_table()["perturb"][backend]).parameters


def iteration(optimizer, model, x, y, scaler, closure: bool):
    """One iteration, the closure or the authors' method-level loop; on the device path with
    host reads forbidden inside the optimizer's calls."""
    def host_reads_raise():
        return guard() if optimizer.device_path else contextlib.nullcontext()

    if closure:
        with host_reads_raise():
            opt_loss = optimizer.step(lambda: LOSS(model(x), y), scaler=scaler)
        return opt_loss
    scale = (lambda loss: loss) if scaler is None else scaler.scale
    if isinstance(optimizer, SASSHA):
        scale(LOSS(model(x), y)).backward()
        with host_reads_raise():
            optimizer.perturb_weights(zero_grad=True, scaler=scaler)
    scale(LOSS(model(x), y)).backward(create_graph=optimizer.hessian_due)
    if isinstance(optimizer, SASSHA):
        optimizer.unperturb()
    with host_reads_raise():
        optimizer.step(scaler=scaler)
    optimizer.zero_grad()
    return None


def run(optimizer_class, backend, capturable, closure, use_scaler, dtype=torch.float32):
    model = make_model().to(dtype)
    x, y = whole_batch(dtype)
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend=backend,
                          capturable=capturable, skip_check_interval=1000,
                          **PAPER_SETTINGS[optimizer_class])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) if use_scaler else None
    for _ in range(STEPS):
        iteration(opt, model, x, y, scaler, closure)
        if scaler is not None:
            scaler.update()
    return model, opt


def usable(backend: str) -> None:
    """Skip, saying why, unless ``backend`` runs here and takes the found-inf flag."""
    availability = available_backends()[backend]
    if not availability.available:
        pytest.skip(f"backend {backend!r} unavailable here: {availability.reason}")
    if not takes_found_inf(backend):
        pytest.skip(f"backend {backend!r} does not take found_inf yet (op contract item 2)")


def assert_close_to_host_path(model, host_model, rtol=1e-4, atol=1e-5):
    """Rounding only: the device path divides by float32 tensors (lr / bias_correction1 in
    float32), the host path by Python floats (in float64); near-zero Hessian entries amplify
    that last bit about a thousandfold over 5 steps (test_float64_shows_it_is_rounding)."""
    for p, q in zip(model.parameters(), host_model.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "methods"])
@pytest.mark.parametrize("backend", ["reference", "foreach", "cpu", "triton"])
def test_no_host_read_in_the_device_path(optimizer, closure, backend):
    usable(backend)
    model, opt = run(optimizer, backend, True, closure, use_scaler=False)
    host_model, host_opt = run(optimizer, backend, False, closure, use_scaler=False)
    step = opt.state[model[0].weight]["step"]
    assert isinstance(step, torch.Tensor) and step.device == model[0].weight.device
    assert int(step) == host_opt.state[host_model[0].weight]["step"] == STEPS
    assert opt.skipped_steps == 0
    assert_close_to_host_path(model, host_model)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_float64_shows_it_is_rounding(optimizer):
    model, _ = run(optimizer, "reference", True, True, use_scaler=False, dtype=torch.float64)
    host_model, _ = run(optimizer, "reference", False, True, use_scaler=False,
                        dtype=torch.float64)
    assert_close_to_host_path(model, host_model, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "methods"])
def test_no_host_read_with_a_grad_scaler(optimizer, closure):
    model, opt = run(optimizer, "reference", True, closure, use_scaler=True)
    host_model, _ = run(optimizer, "reference", False, closure, use_scaler=True)
    assert_close_to_host_path(model, host_model)


def poison(model):
    return model[0].bias.register_hook(lambda g: g.clone().fill_(float("nan")))


def start(optimizer_class, backend, steps):
    """A device-path optimizer after ``steps`` clean closure iterations."""
    model = make_model()
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend=backend, capturable=True,
                          skip_check_interval=1000, **PAPER_SETTINGS[optimizer_class])
    x, y = whole_batch()
    for _ in range(steps):
        iteration(opt, model, x, y, None, closure=True)
    return model, opt


def tensors(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            [{k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
             for p in model.parameters()])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", ["reference", "foreach", "cpu", "triton"])
def test_a_step_skipped_on_the_device_moves_nothing(optimizer, backend):
    """Step 4 (no Hessian) holds a NaN: decided on the device, without a host read, it leaves
    the moments, counters and (to the rounding of w + e - e for SASSHA) the weights."""
    usable(backend)
    model, opt = start(optimizer, backend, 3)
    params, states = tensors(model, opt)
    x, y = whole_batch()
    handle = poison(model)
    iteration(opt, model, x, y, None, closure=True)
    handle.remove()
    assert opt.skipped_steps == 1
    params_after, states_after = tensors(model, opt)
    for before, after in zip(states, states_after):
        for key in before:
            assert torch.equal(after[key], before[key]), key
    for after, before in zip(params_after, params):
        torch.testing.assert_close(after, before, rtol=0,
                                   atol=1e-7 if optimizer is SASSHA else 0)
    assert opt.state[model[0].weight]["hessian_step"] == 4  # the schedule counts attempts


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_skipped_first_hessian_step_holds_the_update_until_the_next(optimizer):
    """Step 1 (the first Hessian estimate) is skipped on the device; step 2 has no curvature
    estimate to divide by, so it leaves the parameters too (no blow-up from D = 0); step 3
    estimates the Hessian again and is the state's first step."""
    model, opt = start(optimizer, "reference", 0)
    x, y = whole_batch()
    params, _ = tensors(model, opt)
    for i in range(2):
        handle = poison(model) if i == 0 else None
        iteration(opt, model, x, y, None, closure=True)
        if handle is not None:
            handle.remove()
        for p, q in zip(model.parameters(), params):  # SASSHA: w + e - e, rounded
            torch.testing.assert_close(p.detach(), q, rtol=0,
                                       atol=1e-7 if optimizer is SASSHA else 0)
    assert opt.skipped_steps == 1
    assert all(int(opt.state[p]["step"]) == 0 for p in model.parameters())
    iteration(opt, model, x, y, None, closure=True)
    assert all(int(opt.state[p]["step"]) == 1 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), params))


def test_a_grad_scaler_overflow_on_the_device_lowers_the_scale():
    model = make_model()
    opt = SASSHA(model.parameters(), lazy_hessian=2, backend="reference", capturable=True, rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    x, y = whole_batch()
    handle = poison(model)
    iteration(opt, model, x, y, scaler, closure=True)
    handle.remove()
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 11 and opt.skipped_steps == 1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("saved_on_device", [True, False], ids=["device-to-host", "host-to-device"])
def test_a_checkpoint_loads_into_the_other_path(optimizer, saved_on_device):
    """Counters (and M-SASSHA's norm factor) come back in the loading optimizer's form, the
    device path's shared again; the run goes on as the saving path's would (training-mode
    BatchNorm: its running statistics do not enter the loss)."""
    x, y = whole_batch()
    model = make_model()
    opt = optimizer(model.parameters(), lazy_hessian=2, backend="reference",
                    capturable=saved_on_device, **PAPER_SETTINGS[optimizer])
    for _ in range(3):
        opt.step(lambda: LOSS(model(x), y))
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # the saving optimizer goes on
        opt.step(lambda: LOSS(model(x), y))

    other_model = make_model()
    with torch.no_grad():
        for p, q in zip(other_model.parameters(), saved_params):
            p.copy_(q)
    other = optimizer(other_model.parameters(), lazy_hessian=2, backend="reference",
                      capturable=not saved_on_device, **PAPER_SETTINGS[optimizer])
    other.load_state_dict(saved)
    steps = [other.state[p]["step"] for p in other_model.parameters()]
    if saved_on_device:
        assert all(type(s) is int and s == 3 for s in steps)
    else:
        assert all(s is steps[0] for s in steps) and int(steps[0]) == 3  # shared again
    if optimizer is MSASSHA:
        assert isinstance(other.param_groups[0]["norm_factor"], torch.Tensor) != saved_on_device
    for _ in range(2):
        other.step(lambda: LOSS(other_model(x), y))
    for p, q in zip(other_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_raise_reads_the_flag_on_the_device_path_too(optimizer):
    """nonfinite="raise" must read the flag to raise: the one policy that synchronises."""
    model = make_model()
    opt = optimizer(model.parameters(), lazy_hessian=2, backend="reference", capturable=True,
                    nonfinite="raise", **PAPER_SETTINGS[optimizer])
    x, y = whole_batch()
    opt.step(lambda: LOSS(model(x), y))
    handle = poison(model)
    with pytest.raises(FloatingPointError, match="parameter 1 of group 0"):
        opt.step(lambda: LOSS(model(x), y))
    handle.remove()
    assert opt.skipped_steps == 0 and int(opt.state[model[0].weight]["step"]) == 1
