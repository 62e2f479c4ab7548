"""torch.compile'd models: ordinary steps train as the eager model does; the Hessian-vector
product, which needs a second backward through the compiled region, fails with an error
that says what to do, and the remedy it names works."""
import warnings

import pytest
import torch

from torch import nn

from sassha_fast import MSASSHA, SASSHA
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

GUIDANCE = r"hessian_due is True, run the forward pass .* through the uncompiled module"


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_a_hessian_step_through_a_compiled_model_explains_itself(optimizer):
    """aot_eager runs the same AOTAutograd as the default inductor backend, without its
    C++ compilation."""
    model = make_model()
    compiled = torch.compile(model, backend="aot_eager")
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=GUIDANCE):
        opt.step(lambda: LOSS(compiled(x), y))
    opt.zero_grad()
    after = snapshot(model, opt)
    assert_identical(after["optimizer"], before["optimizer"])  # no state was created
    for p, q in zip(after["params"], before["params"]):  # SASSHA left w + e
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_the_default_inductor_backend_fails_the_same_way():
    model = make_model()
    compiled = torch.compile(model)
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), rho=0.05)
    with pytest.raises(RuntimeError, match=GUIDANCE):
        opt.step(lambda: LOSS(compiled(x), y))


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_the_uncompiled_module_on_hessian_steps_trains_like_eager(optimizer):
    def train(use_compiled):
        model = make_model()
        compiled = torch.compile(model, backend="aot_eager")
        x, y = whole_batch()
        opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                runner = compiled if use_compiled and not opt.hessian_due else model
                opt.step(lambda: LOSS(runner(x), y))
        # The BatchNorm freeze's global hook must not warn on every compiled forward.
        assert not [w for w in caught if "global hooks" in str(w.message)]
        return list(model.parameters())

    for p, q in zip(train(True), train(False)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_stay_frozen_in_a_compiled_perturbed_pass():
    """Inside a compiled graph the freeze's momentum is not seen: the statistics are
    restored after the pass instead, so they match the eager run's."""
    def train(compile_):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        compiled = torch.compile(model, backend="aot_eager") if compile_ else model
        x, y = whole_batch()
        opt = SASSHA(model.parameters(), lazy_hessian=10, rho=0.05)
        for _ in range(3):
            runner = model if opt.hessian_due else compiled
            opt.step(lambda: LOSS(runner(x), y))
        return dict(model[1].named_buffers())

    compiled, eager = train(True), train(False)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6)


def test_backend_eager_runs_hessian_steps():
    def train(compile_):
        model = make_model()
        runner = torch.compile(model, backend="eager") if compile_ else model
        x, y = whole_batch()
        opt = SASSHA(model.parameters(), lazy_hessian=2, rho=0.05)
        for _ in range(3):
            opt.step(lambda: LOSS(runner(x), y))
        return list(model.parameters())

    for p, q in zip(train(True), train(False)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
