"""Gradient accumulation in both passes equals one big batch; clipping goes on the second
pass's gradient, between unperturb() and step()."""
import pytest
import torch

from sassha_fast import MSASSHA, SASSHA
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch

STEPS = 4  # lazy_hessian=2: Hessian and non-Hessian steps
MICRO = 4


def accumulate(model, micro_batches, create_graph=False):
    """Each micro-batch's mean loss / n, backward into the same .grad. With create_graph
    the gradient carries the sum of the micro-batches' graphs, and the Hessian-vector
    product goes through all of them."""
    for x, y in micro_batches:
        (LOSS(model(x), y) / len(micro_batches)).backward(create_graph=create_graph)


def sassha_iteration(model, opt, micro_batches, max_norm=None):
    accumulate(model, micro_batches)
    opt.perturb_weights(zero_grad=True)  # once, from the accumulated gradient
    accumulate(model, micro_batches, create_graph=opt.hessian_due)
    opt.unperturb()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad()


def msassha_iteration(model, opt, micro_batches, max_norm=None):
    accumulate(model, micro_batches, create_graph=opt.hessian_due)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad()


ITERATIONS = {SASSHA: sassha_iteration, MSASSHA: msassha_iteration}


def train(optimizer, micro, max_norm=None, steps=STEPS):
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer])
    micro_batches = list(zip(x.chunk(micro), y.chunk(micro)))
    for _ in range(steps):
        ITERATIONS[optimizer](model, opt, micro_batches, max_norm)
    return model, opt


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_accumulated_micro_batches_equal_one_big_batch(optimizer):
    model, opt = train(optimizer, MICRO)
    big_model, big_opt = train(optimizer, 1)
    for p, q in zip(model.parameters(), big_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_hessian_diag"):
            torch.testing.assert_close(opt.state[p][key], big_opt.state[q][key],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_clipping_the_gradient_before_step_works_on_hessian_steps(optimizer):
    """clip_grad_norm_ scales the (graph-carrying) gradient in place: the momentum takes
    the clipped gradient, the Hessian estimate the unclipped graph's."""
    max_norm = 1e-3
    model, opt = train(optimizer, MICRO, max_norm=max_norm)
    unclipped_model, unclipped_opt = train(optimizer, MICRO)
    momentum = torch.cat([opt.state[p]["exp_avg"].flatten() for p in model.parameters()])
    beta1 = opt.param_groups[0]["betas"][0]
    # Every clipped gradient has norm max_norm, so ||m|| <= max_norm (m averages them).
    assert momentum.norm() <= max_norm * (1 - beta1 ** STEPS) * (1 + 1e-5)
    unclipped = torch.cat([unclipped_opt.state[p]["exp_avg"].flatten()
                           for p in unclipped_model.parameters()])
    assert unclipped.norm() > 10 * momentum.norm()


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_clipping_leaves_the_hessian_estimate_alone(optimizer):
    model, opt = train(optimizer, MICRO, max_norm=1e-3, steps=1)
    unclipped_model, unclipped_opt = train(optimizer, MICRO, steps=1)
    for p, q in zip(model.parameters(), unclipped_model.parameters()):
        torch.testing.assert_close(opt.state[p]["exp_hessian_diag"],
                                   unclipped_opt.state[q]["exp_hessian_diag"])


def test_with_a_grad_scaler_clip_to_max_norm_times_the_scale():
    """Before step(scaler=...) the gradients are still scaled: clipping them to
    max_norm * scale clips the unscaled ones to max_norm."""
    max_norm = 1e-3
    clipped_model, clipped_opt = train(SASSHA, 1, max_norm=max_norm, steps=2)
    model = make_model()
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), lazy_hessian=2, rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(2):
        scaler.scale(LOSS(model(x), y)).backward()
        opt.perturb_weights(zero_grad=True, scaler=scaler)
        scaler.scale(LOSS(model(x), y)).backward(create_graph=opt.hessian_due)
        opt.unperturb()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm * scaler.get_scale())
        opt.step(scaler=scaler)
        scaler.update()
        opt.zero_grad()
    for p, q in zip(model.parameters(), clipped_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
