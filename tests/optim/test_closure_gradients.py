"""step(closure) never drops a gradient: gradients that a backward pass left since the last
step (``loss.backward(); opt.step(closure)``, Lightning's accumulate_grad_batches) are
refused with the way out, and nothing moves; the closure's own passes, a zero_grad() in
between and all-zero gradients are not mistaken for them."""
import pytest
import torch

from sassha_fast import MSASSHA, SASSHA
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

ESTIMATORS = ["autograd", "finite_difference"]
OPTIMIZERS = [SASSHA, MSASSHA]


def setup(optimizer, estimator):
    model = make_model()
    opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=estimator,
                    **PAPER_SETTINGS[optimizer])
    x, y = whole_batch()
    return model, opt, x, y


def closure_for(model, x, y, estimator):
    """The closure each estimator takes in its usual form: the default one returns the
    loss, the finite-difference one also accepts the torch convention (backward inside)."""
    def closure():
        loss = LOSS(model(x), y)
        if estimator == "finite_difference":
            loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_gradient_left_before_step_closure_is_refused_and_kept(optimizer, estimator):
    model, opt, x, y = setup(optimizer, estimator)
    closure = closure_for(model, x, y, estimator)
    opt.step(closure)  # a step first: its own gradients are not "left before"
    LOSS(model(x[:8]), y[:8]).backward()  # a first micro-batch
    left = [p.grad.clone() for p in model.parameters()]
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"accumulated since the last step.*zero_grad\(\)"):
        opt.step(closure)
    assert_identical(snapshot(model, opt), before)
    for p, g in zip(model.parameters(), left):
        assert torch.equal(p.grad, g)  # not dropped: still there for the caller


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("clear", ["zero_grad", "zero_grad_keep_buffers", "nothing"])
def test_steps_after_a_step_or_a_zero_grad_are_not_refused(optimizer, estimator, clear):
    """The gradients a step leaves, and those a zero_grad() cleared, carry nothing; the
    trajectory equals the one without the extra backward."""
    runs = []
    for extra_backward in (False, True):
        model, opt, x, y = setup(optimizer, estimator)
        closure = closure_for(model, x, y, estimator)
        for _ in range(3):
            if extra_backward and clear != "nothing":
                LOSS(model(x), y).backward()
                opt.zero_grad(set_to_none=clear == "zero_grad")
            opt.step(closure)
        runs.append(snapshot(model, opt))
    assert_identical(runs[1], runs[0])


def test_the_method_level_loop_still_accumulates():
    """step() without a closure uses what is in .grad, micro-batches included."""
    model, opt, x, y = setup(MSASSHA, "autograd")
    for half in (slice(0, 8), slice(8, 16)):
        (LOSS(model(x[half]), y[half]) / 2).backward(create_graph=opt.hessian_due)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
