"""PyTorch's optimizer contract (the checks of torch's test_optim.py and peers'), and the
authors' calls that sassha_fast accepts."""
import copy
import io

import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.lm import SASSHA as LMSASSHA

from tiny import PAPER_SETTINGS


def model_and_data(seed=0):
    torch.manual_seed(seed)
    return (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
            torch.randn(8, 4), torch.randn(8, 3))


def iterate(kind, model, opt, x, y, iter_num):
    loss = lambda: (model(x) - y).pow(2).mean()  # noqa: E731
    if kind == "lm":
        loss().backward(create_graph=True)
        opt.set_hessian()
        opt.perturb_weights()
        loss().backward(create_graph=True)
        opt.set_hessian()
        opt.unperturb()
        opt.step(iter_num)
        opt.zero_grad()
    else:
        opt.step(loss)


def make(kind, model):
    if kind == "sassha":
        return SASSHA(model.parameters(), lr=0.05, rho=0.05, lazy_hessian=2, seed=3)
    if kind == "msassha":
        return MSASSHA(model.parameters(), lr=0.05, lazy_hessian=2, seed=3)
    opt = LMSASSHA(model.parameters(), lr=0.05, lazy_hessian=2, seed=3)
    opt.rho_scheduler = ConstantRho()
    return opt


class ConstantRho:
    def step(self) -> float:
        return 0.05


@pytest.mark.parametrize("kind", ["sassha", "msassha", "lm"])
@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copies_of_the_optimizer_step_and_continue_identically(kind, how):
    model, x, y = model_and_data()
    opt = make(kind, model)
    for i in range(3):  # stop inside a lazy-Hessian interval
        iterate(kind, model, opt, x, y, i)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        buffer = io.BytesIO()
        torch.save((model, opt), buffer)
        buffer.seek(0)
        model2, opt2 = torch.load(buffer, weights_only=False)
    assert opt2.lazy_hessian == 2 and opt2.seed == 3 and opt2.backend == opt.backend
    for i in range(3, 6):
        iterate(kind, model, opt, x, y, i)
        iterate(kind, model2, opt2, x, y, i)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_a_load_state_dict_pre_hook_that_returns_a_new_dict_is_what_is_loaded():
    model, x, y = model_and_data()
    opt = SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: (model(x) - y).pow(2).mean())
    saved = opt.state_dict()
    posted = []

    def doubled(optimizer, state_dict):
        new = copy.deepcopy(state_dict)
        for state in new["state"].values():
            state["exp_avg"] = state["exp_avg"] * 2
            state["exp_hessian_diag"] = state["exp_hessian_diag"] * 3
        return new

    fresh = SASSHA(model.parameters(), rho=0.05)
    fresh.register_load_state_dict_pre_hook(doubled)
    fresh.register_load_state_dict_post_hook(
        lambda o: posted.append(o.state[model[0].weight]["exp_avg"].clone()))
    fresh.load_state_dict(saved)
    w = model[0].weight
    torch.testing.assert_close(fresh.state[w]["exp_avg"], opt.state[w]["exp_avg"] * 2)
    torch.testing.assert_close(fresh.state[w]["exp_hessian_diag"],
                               opt.state[w]["exp_hessian_diag"] * 3)
    assert len(posted) == 1 and torch.equal(posted[0], fresh.state[w]["exp_avg"])


@pytest.mark.parametrize("backend", ["reference", "foreach", "cpu"])
@pytest.mark.parametrize("cls", [SASSHA, MSASSHA])
def test_a_tensor_learning_rate_gives_the_float_trajectory(cls, backend):
    runs = []
    for lr in (0.01, torch.tensor(0.01)):
        model, x, y = model_and_data()
        opt = cls(model.parameters(), lr=lr, lazy_hessian=2, backend=backend, **PAPER_SETTINGS[cls])
        for _ in range(3):
            opt.step(lambda: (model(x) - y).pow(2).mean())
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [SASSHA, MSASSHA, LMSASSHA])
@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1), "Invalid learning rate: -1"),
    (dict(lr=torch.tensor(-0.5)), "Invalid learning rate: -0.5"),
    (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
])
def test_validation_comes_before_the_parameters_are_read(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(None, **kwargs)


def test_unknown_keywords_are_ignored_with_a_warning_and_grad_reduce_is_checked():
    with pytest.warns(UserWarning, match="SASSHA ignores the unknown keyword arguments clip"):
        opt = SASSHA(nn.Linear(2, 2).parameters(), clip=1.0)
    assert opt.grad_reduce == "mean"
    with pytest.raises(ValueError, match='"grad_reduce" should be one of'):
        SASSHA(nn.Linear(2, 2).parameters(), grad_reduce="avg")
    with pytest.raises(TypeError):
        MSASSHA(nn.Linear(2, 2).parameters(), clip=1.0)  # theirs takes no **kwargs either


def test_step_refuses_an_iteration_number_before_touching_the_gradients():
    model, x, y = model_and_data()
    opt = SASSHA(model.parameters(), rho=0.05)
    (model(x) - y).pow(2).mean().backward()
    with pytest.raises(TypeError, match="sassha_fast.lm.SASSHA"):
        opt.step(3)
    assert all(p.grad is not None for p in model.parameters())


def test_the_authors_hessian_step_reset_on_resume_is_honoured():
    model, x, y = model_and_data()
    opt = SASSHA(model.parameters(), lazy_hessian=3, rho=0.05)
    opt.step(lambda: (model(x) - y).pow(2).mean())
    assert not opt.hessian_due
    for p in opt.get_params():  # their image-classification script, after loading
        opt.state[p]["hessian step"] = 0
    assert opt.hessian_due
    assert all("hessian step" not in opt.state[p] and opt.state[p]["hessian_step"] == 0
               for p in opt.get_params())


def test_an_authors_checkpoint_leaves_no_dead_e_w_state():
    model, x, y = model_and_data()
    opt = SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: (model(x) - y).pow(2).mean())
    theirs = opt.state_dict()
    del theirs["sassha_fast"]
    for state in theirs["state"].values():
        state["hessian step"] = state.pop("hessian_step")
        state["e_w"] = torch.ones_like(state["exp_avg"])
    fresh = SASSHA(model.parameters(), rho=0.05)
    fresh.load_state_dict(theirs)
    assert all("e_w" not in s and "hessian step" not in s for s in fresh.state.values())


@pytest.mark.parametrize("cls", [SASSHA, MSASSHA])
def test_set_hessian_per_micro_batch_sums_the_estimates_at_the_perturbed_point(cls):
    """Two micro-batches, set_hessian() after each create_graph backward: D is fed the
    sum of z_i * H_i z_i (fresh z per call), and the perturbation is held throughout."""
    model, x, y = model_and_data()
    kwargs = dict(lazy_hessian=1, seed=5, betas=(0.9, 0.5))
    opt = cls(model.parameters(), **kwargs) if cls is MSASSHA else \
        cls(model.parameters(), rho=0.1, **kwargs)
    halves = list(zip(x.chunk(2), y.chunk(2)))
    loss = lambda xb, yb: (model(xb) - yb).pow(2).mean() / 2  # noqa: E731
    params = list(model.parameters())
    if cls is SASSHA:
        for xb, yb in halves:
            loss(xb, yb).backward()
        opt.perturb_weights()
    perturbed = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(5)
    expected = [torch.zeros_like(p) for p in params]
    for xb, yb in halves:
        grads = torch.autograd.grad(loss(xb, yb), params, create_graph=True)
        zs = [torch.randint(0, 2, p.shape, generator=generator) * 2.0 - 1.0 for p in params]
        hzs = torch.autograd.grad(grads, params, grad_outputs=zs)
        for e, z, hz in zip(expected, zs, hzs):
            e += z * hz
    for xb, yb in halves:
        loss(xb, yb).backward(create_graph=True)
        opt.set_hessian()
        assert all(torch.equal(p, q) for p, q in zip(params, perturbed))
    if cls is SASSHA:
        opt.unperturb()
    opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(opt.state[p]["exp_hessian_diag"], 0.5 * e.abs(),
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [SASSHA, MSASSHA])
def test_zero_curvature_gives_a_zero_hessian_and_a_missing_graph_still_raises(cls):
    lin = nn.Linear(3, 2, bias=False)
    x = torch.randn(4, 3)
    opt = cls(lin.parameters(), lazy_hessian=1, **PAPER_SETTINGS[cls])
    lin(x).sum().backward(create_graph=True)  # the gradient does not depend on the weight
    opt.step()
    assert opt.state[lin.weight]["step"] == 1
    assert torch.count_nonzero(opt.state[lin.weight]["exp_hessian_diag"]) == 0
    opt.zero_grad()
    lin(x).pow(2).sum().backward()  # curvature, but no create_graph: the error it is for
    with pytest.raises(RuntimeError, match="no gradient carries a graph"):
        opt.step()
    assert opt.state[lin.weight]["step"] == 1
    # the closure form knows it asked for the graph
    closure_opt = cls(lin.parameters(), lazy_hessian=1, **PAPER_SETTINGS[cls])
    assert closure_opt.step(lambda: lin(x).sum()) is not None


def test_the_backward_hooks_go_with_the_optimizer():
    lin = nn.Linear(3, 2)
    opt = SASSHA(lin.parameters(), rho=0.05)
    assert len(lin.weight._post_accumulate_grad_hooks) == 1
    del opt
    import gc
    gc.collect()
    assert not lin.weight._post_accumulate_grad_hooks


@pytest.mark.parametrize("grad_reduce, factor", [("sum", 2.0), ("mean", 1.0)])
def test_grad_reduce_sums_or_averages_across_ranks(monkeypatch, grad_reduce, factor):
    """Two identical ranks, simulated: the all-reduce adds a rank's tensor to itself."""
    import torch.distributed as dist

    class Done:
        def wait(self):
            pass

    def all_reduce(tensor, group=None, async_op=False, op=None):
        tensor.mul_(2)
        return Done()

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    model, x, y = model_and_data()
    opt = LMSASSHA(model.parameters(), grad_reduce=grad_reduce)
    monkeypatch.setattr(opt._averager, "world_size", lambda: 2)
    (model(x) - y).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt._sync_gradient()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g * factor)
