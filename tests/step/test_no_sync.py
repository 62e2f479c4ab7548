"""The device path (``capturable``; the default for CUDA parameters) never makes the host
wait for the device within ``perturb_weights()`` and ``step()``, the periodic skipped-step
check included: proven by a guard that makes every host read of a device tensor raise, on
every backend that runs here, for SASSHA and M-SASSHA, the closure and the method-level
loop, Hessian and non-Hessian steps, past the skip-check interval, with and without a
GradScaler; the numbers match the host path's.

What "device" means here. On a CPU-only machine the parameters' device is the host itself:
the CPU tests run the device path on CPU tensors (``capturable=True``) and count every CPU
tensor as a device tensor, so each host read (``SYNCING`` methods, ``HOST_READING``
functions) of any tensor raises. A transfer to the host (``.to("cpu")``, ``copy_`` into a
CPU tensor) cannot be told from a same-device operation there, since both ends are CPU
tensors: the guard catches it when the source is on another device, which a CPU-only run
observes only in the negative controls (a ``meta`` tensor standing in for the device's), and
the GPU variant (CUDA tensors, with CUDA's sync debug mode on top) observes in the
optimizer itself; there CPU tensors are host memory and reading them is no wait. The one
host-memory copy of device values that the optimizer makes on the CPU (the skip counts,
``skipped_steps.HostCopy``) goes into a ``bytearray`` read through a ``memoryview``, not a
tensor method; the negative control restoring the old synchronous read proves the guard
sees the counts' read.

The compiled step's proof (test_no_sync_compiled.py) runs the same loop through this guard."""
import contextlib
import copy
import inspect
import operator
import sys

import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA, available_backends
from sassha_fast.step import skips as skipped_steps
from sassha_fast.backends import op_table
from sassha_fast.step.skips import SkipCounter, SkippedStepWarning
from tiny import LOSS, PAPER_SETTINGS, whole_batch

# Every Tensor method that copies a value to the host (and so waits for a CUDA device).
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
           "nonzero", "equal")
# torch functions that read a value on the host.
HOST_READING = ("is_nonzero", "nonzero", "equal")
OPTIMIZERS = [SASSHA, MSASSHA]
CPU_BACKENDS = ["reference", "foreach", "cpu", "triton"]
CUDA_BACKENDS = ["reference", "foreach", "triton", "cuda"]
STEPS = 5  # lazy_hessian=2: Hessian steps 1, 3, 5; steps 2 and 4 without
CHECK_INTERVAL = 2  # the skip counts are copied to the host after steps 2 and 4

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA (the GPU variant of the guard)")


class HostSync(AssertionError):
    pass


def _from_triton() -> bool:
    """Triton's CPU interpreter stands in for a GPU here and reads its arguments on the host
    by design: its calls pass."""
    return sys._getframe(2).f_globals.get("__name__", "").startswith("triton")


def _while_compiling() -> bool:
    """torch.compile's own work while it compiles a frame (the text of its guards prints the
    tensors a dict is keyed by): once per compilation, not part of a step."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "torch._dynamo.convert_frame":
            return True
        frame = frame.f_back
    return False


def _to_host(source, destination_device) -> bool:
    return destination_device is not None and destination_device.type == "cpu" \
        and source.device.type != "cpu"


@contextlib.contextmanager
def guard(device_type: str = "cpu"):
    """Every host read of a tensor on ``device_type`` raises ``HostSync``, and so does
    every transfer of a non-CPU tensor to the host that waits (``.to("cpu")``, ``copy_``
    into a CPU tensor unless non-blocking into pinned memory)."""
    def on_device(value) -> bool:
        return isinstance(value, torch.Tensor) and value.device.type == device_type

    def reading(name, original):
        def method(*args, **kwargs):
            if not _from_triton() and any(on_device(a) for a in args) \
                    and not _while_compiling():
                raise HostSync(f"{name} read a {device_type} tensor on the host")
            return original(*args, **kwargs)
        return method

    def to(original):
        def method(self, *args, **kwargs):
            to_kwargs = {k: v for k, v in kwargs.items() if k != "copy"}  # not parsed there
            device, _, _, _ = torch._C._nn._parse_to(*args, **to_kwargs)
            if _to_host(self, device) and not _from_triton() and not _while_compiling():
                raise HostSync(f"Tensor.to copied a {self.device.type} tensor to the host")
            return original(self, *args, **kwargs)
        return method

    def copy_(original):
        def method(self, source, non_blocking=False):
            if isinstance(source, torch.Tensor) and _to_host(source, self.device) and not (
                    non_blocking and self.is_pinned()) and not _from_triton() \
                    and not _while_compiling():
                raise HostSync(f"copy_ from a {source.device.type} tensor into a CPU tensor "
                               "waits for it")
            return original(self, source, non_blocking)
        return method

    patches = [(torch.Tensor, name, reading(f"Tensor.{name}", getattr(torch.Tensor, name)))
               for name in SYNCING]
    patches += [(torch, name, reading(f"torch.{name}", getattr(torch, name)))
                for name in HOST_READING]
    patches += [(torch.Tensor, "to", to(torch.Tensor.to)),
                (torch.Tensor, "copy_", copy_(torch.Tensor.copy_))]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def make_model(device="cpu"):
    torch.manual_seed(0)
    # BatchNorm: the closure's perturbed pass freezes its statistics.
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(),
                         nn.Linear(8, 3)).to(device)


def takes_found_inf(backend: str) -> bool:
    return "found_inf" in inspect.signature(op_table()["perturb"][backend]).parameters


@contextlib.contextmanager
def no_host_wait(device_type: str, sync_debug: bool):
    """The guard; on CUDA, with ``sync_debug``, also CUDA's own sync debug mode, which sees
    every real wait (not on the first step, which creates the state and CUDA's lazy
    handles, as in tests/step/test_cuda_graphs.py)."""
    with guard(device_type):
        if device_type != "cuda" or not sync_debug:
            yield
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")


def iteration(optimizer, model, x, y, scaler, closure: bool, calls=None):
    """One iteration, the closure or the authors' method-level loop; on the device path with
    host reads forbidden inside the optimizer's calls. ``calls``: the optimizer's methods of
    the loop by name (compiled ones), else its own."""
    calls = calls or {name: getattr(optimizer, name)
                      for name in ("perturb_weights", "unperturb", "step")
                      if hasattr(optimizer, name)}

    def host_reads_raise():
        return no_host_wait(x.device.type, sync_debug=bool(optimizer.state)) \
            if optimizer.device_path else contextlib.nullcontext()

    if closure:
        with host_reads_raise():
            opt_loss = optimizer.step(lambda: LOSS(model(x), y), scaler=scaler)
        return opt_loss
    scale = (lambda loss: loss) if scaler is None else scaler.scale
    if isinstance(optimizer, SASSHA):
        scale(LOSS(model(x), y)).backward()
        with host_reads_raise():
            calls["perturb_weights"](zero_grad=True, scaler=scaler)
    scale(LOSS(model(x), y)).backward(create_graph=optimizer.hessian_due)
    if isinstance(optimizer, SASSHA):
        with host_reads_raise():
            calls["unperturb"]()
    with host_reads_raise():
        calls["step"](scaler=scaler)
    optimizer.zero_grad()
    return None


def run(optimizer_class, backend, capturable, closure, use_scaler, dtype=torch.float32,
        device="cpu", compile_with=None):
    model = make_model(device).to(dtype)
    x, y = (t.to(device) for t in whole_batch(dtype))
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend=backend,
                          capturable=capturable, skip_check_interval=CHECK_INTERVAL,
                          **PAPER_SETTINGS[optimizer_class])
    scaler = torch.amp.GradScaler(torch.device(device).type, init_scale=2.0 ** 12) \
        if use_scaler else None
    calls = None if compile_with is None else {
        name: torch.compile(getattr(opt, name), backend=compile_with)
        for name in ("perturb_weights", "unperturb", "step") if hasattr(opt, name)}
    for _ in range(STEPS):
        iteration(opt, model, x, y, scaler, closure, calls)
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


def check_against_the_host_path(optimizer, backend, closure, use_scaler, device="cpu"):
    model, opt = run(optimizer, backend, True, closure, use_scaler, device=device)
    host_model, host_opt = run(optimizer, backend, False, closure, use_scaler, device=device)
    step = opt.state[model[0].weight]["step"]
    assert isinstance(step, torch.Tensor) and step.device == model[0].weight.device
    assert int(step) == host_opt.state[host_model[0].weight]["step"] == STEPS
    assert opt.skipped_steps == host_opt.skipped_steps == 0
    assert_close_to_host_path(model, host_model)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "methods"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_host_read_in_the_device_path(optimizer, closure, backend):
    usable(backend)
    check_against_the_host_path(optimizer, backend, closure, use_scaler=False)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_float64_shows_it_is_rounding(optimizer):
    model, _ = run(optimizer, "reference", True, True, use_scaler=False, dtype=torch.float64)
    host_model, _ = run(optimizer, "reference", False, True, use_scaler=False,
                        dtype=torch.float64)
    assert_close_to_host_path(model, host_model, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "methods"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_host_read_with_a_grad_scaler(optimizer, closure, backend):
    usable(backend)
    check_against_the_host_path(optimizer, backend, closure, use_scaler=True)


@needs_cuda
@pytest.mark.parametrize("use_scaler", [False, True], ids=["fp32", "grad_scaler"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "methods"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_no_host_read_on_cuda(optimizer, closure, backend, use_scaler):
    """The GPU variant: CUDA tensors, the guard for CUDA tensors and CUDA's sync debug mode
    set to "error", past the skip-check interval (its copy into pinned memory included)."""
    usable(backend)
    assert run(optimizer, backend, None, closure, use_scaler, device="cuda")[1].device_path
    check_against_the_host_path(optimizer, backend, closure, use_scaler, device="cuda")


def poison(model):
    return model[0].bias.register_hook(lambda g: g.clone().fill_(float("nan")))


def start(optimizer_class, backend, steps):
    """A device-path optimizer after ``steps`` clean closure iterations."""
    model = make_model()
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend=backend, capturable=True,
                          skip_check_interval=CHECK_INTERVAL, **PAPER_SETTINGS[optimizer_class])
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
    # Step 4 copies the counts to the host (CHECK_INTERVAL): reported under the guard.
    with pytest.warns(SkippedStepWarning, match="^1 optimizer step"):
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
        # Step 2 copies the counts to the host (CHECK_INTERVAL): step 1's skip is reported.
        with pytest.warns(SkippedStepWarning) if i == 1 else contextlib.nullcontext():
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


META = "meta"  # stands in for a device tensor where only the CPU exists (see the docstring)
INJECTED_READS = {
    "Tensor.item": lambda t: t.item(),
    "Tensor.tolist": lambda t: t.tolist(),
    "Tensor.cpu": lambda t: t.cpu(),
    "Tensor.numpy": lambda t: t.numpy(),
    "bool": lambda t: bool(t),
    "float": lambda t: float(t),
    "int": lambda t: int(t),
    "operator.index": lambda t: operator.index(t.long()),
    "Tensor.nonzero": lambda t: t.nonzero(),
    "torch.nonzero": lambda t: torch.nonzero(t),
    "torch.is_nonzero": lambda t: torch.is_nonzero(t),
    "torch.equal": lambda t: torch.equal(t, t),
    "Tensor.equal": lambda t: t.equal(t),
    'Tensor.to("cpu")': lambda t: torch.zeros(1, device=META).to("cpu"),
    "copy_ into a CPU tensor": lambda t: torch.zeros(1).copy_(torch.zeros(1, device=META)),
}


@pytest.mark.parametrize("read", list(INJECTED_READS))
def test_an_injected_host_read_fails_the_guard(monkeypatch, read):
    """Negative control: one host read of the skip flag inside step() is caught."""
    record = SkipCounter.record

    def reading_record(self, skipped):
        INJECTED_READS[read](skipped)
        record(self, skipped)

    monkeypatch.setattr(SkipCounter, "record", reading_record)
    with pytest.raises(HostSync):
        run(SASSHA, "reference", True, True, use_scaler=False)


def test_the_old_synchronous_skip_check_fails_the_guard(monkeypatch):
    """Negative control: the periodic check as it was (``check()``, a ``tolist()`` of the
    device counts every ``skip_check_interval`` steps) is caught at the first interval."""
    def reading_tick(self, explain=None, locate=None):
        self._steps_since_check += 1
        if self._steps_since_check >= self.check_interval:
            self.check(explain, locate)

    monkeypatch.setattr(SkipCounter, "tick", reading_tick)
    with pytest.raises(HostSync, match="tolist"):
        run(MSASSHA, "reference", True, True, use_scaler=False)


def test_the_skip_counts_reach_the_host_without_a_read_of_the_device():
    """``HostCopy`` on the CPU: landed when ``start`` returns, the values exact, read
    under the guard."""
    host_copy = skipped_steps.HostCopy()
    with guard():
        host_copy.start(torch.tensor([3, 2 ** 40]))
        assert host_copy.landed()
        assert host_copy.values() == [3, 2 ** 40]
